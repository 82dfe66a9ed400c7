"""Stopping a training run cleanly on SIGINT, SIGTERM or SLURM's warning.

While training, the first signal sets a flag: the loop stops after the current
batch, saves a checkpoint holding the epoch in progress, marks the run interrupted
and exits with 128 + the signal number and a message saying how to resume. A
second Ctrl-C stops at once (KeyboardInterrupt). SIGKILL cannot be caught: the
last epoch's checkpoint, written atomically, is what a resume starts from.
SIGUSR1/SIGUSR2 (SLURM's warning before pre-emption) do the same and then
requeue the job (training/preemption.py).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any, Dict, Iterator, Optional

from modelsphere.core.errors import ModelSphereError
from modelsphere.training.preemption import PREEMPTION_SIGNALS

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, *PREEMPTION_SIGNALS)


class TrainingInterrupted(ModelSphereError):
    """Training stopped on a signal after saving a resumable checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequest:
    def __init__(self):
        self.signum: Optional[int] = None
        # the handlers installed before training, by signal (submitit's, say)
        self.previous: Dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def previous_handler(self) -> Any:
        return self.previous.get(self.signum) if self.signum else None


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Catch the stop signals into a flag while the block runs (main thread only)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        if request.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request.signum = signum
        log.warning(
            "received %s: saving a checkpoint after the current batch "
            "(Ctrl-C again to stop at once)",
            signal.Signals(signum).name,
        )

    request.previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield request
    finally:
        for sig, old in request.previous.items():
            signal.signal(sig, old)
