"""A training run stopped at a chosen point, as a signal would stop it."""

from __future__ import annotations

import contextlib
import signal

from modelsphere.training import run as training
from modelsphere.training.interrupts import StopRequest


class StopAfter(StopRequest):
    """A stop request that fires after `calls` checks (the loop checks once
    per batch and once at each epoch's end)."""

    def __init__(self, calls: int, signum: int = signal.SIGTERM):
        super().__init__()
        self.calls = calls
        self.stop_with = signum

    def __call__(self) -> bool:
        self.calls -= 1
        if self.calls < 0:
            self.signum = self.stop_with
        return self.signum is not None


def interrupted_after(monkeypatch, calls: int, signum: int = signal.SIGTERM) -> None:
    """The next training runs stop after `calls` checks."""

    @contextlib.contextmanager
    def stop_requests():
        yield StopAfter(calls, signum)

    monkeypatch.setattr(training, "stop_requests", stop_requests)
