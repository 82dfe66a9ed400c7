"""What the four entry points share: error reporting and the run dir.

A `ModelSphereError` (bad input, bad config) is printed as one line and the
process exits with status 2; no traceback. In a multirun sweep every failure of a
job (a `ModelSphereError`, or any other exception, logged with its traceback) is
logged with the job's output dir and recorded in its `job_status.json`; the job
returns None and the sweep goes on (Optuna records a failed trial: it refuses a
job that raises, and the Optuna sweeper crashes on a NaN value). A training run
stopped by SIGINT/SIGTERM exits with 128 + the signal number after saving a
resumable checkpoint, and stops a sweep as well. Any other entry point stopped by
SIGTERM unwinds as on Ctrl-C (a file being written is removed, never left half
written) and exits with 143.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from contextlib import ExitStack, contextmanager
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from modelsphere.core.errors import (
    USAGE_ERROR_EXIT_CODE,
    ModelSphereError,
    PeersLost,
)
from modelsphere.core.extras import missing_extra_error, owner_of_module
from modelsphere.core.runs import hydra_output_dir
from modelsphere.environment_guard import environment_values_guarded
from modelsphere.sweeps import write_job_status
from modelsphere.training.interrupts import TrainingInterrupted

log = logging.getLogger("modelsphere")

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as shells report it
TERMINATED_EXIT_CODE = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM, raised where the main thread is, so every `finally` runs (a
    BaseException, like KeyboardInterrupt: no `except Exception` swallows it)."""


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While the block runs, SIGTERM raises Terminated instead of killing the
    process on the spot (training installs its own handler inside: it checkpoints)."""

    def handler(signum, frame):
        raise Terminated()

    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def entry_point(task: Callable) -> Callable:
    """Wrap `task(cfg, output_dir)` for `@hydra.main`."""

    @functools.wraps(task)
    def main(cfg: DictConfig):
        output_dir = hydra_output_dir()
        if _is_multirun():
            return _sweep_job(task, cfg, output_dir)
        with ExitStack() as guards:  # still installed while an error is logged
            return _run(task, cfg, output_dir, guards)

    return main


def _run(task: Callable, cfg: DictConfig, output_dir: Path, guards: ExitStack) -> Any:
    """The task of one (non-sweep) run, its errors reported as one line."""
    try:
        guards.enter_context(sigterm_unwinds())
        guards.enter_context(environment_values_guarded(cfg, output_dir))
        return task(cfg, output_dir)
    except TrainingInterrupted as exc:
        log.error("%s", exc)
        sys.exit(exc.exit_code)
    except PeersLost as exc:
        log.error("error: %s", exc)
        guards.close()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(USAGE_ERROR_EXIT_CODE)  # see PeersLost
    except ModelSphereError as exc:
        log.error("error: %s", exc)
        sys.exit(USAGE_ERROR_EXIT_CODE)
    except OmegaConfBaseException as exc:
        # e.g. ${oc.env:NAME} for a variable that is not set
        log.error("error: config: %s", str(exc).splitlines()[0])
        sys.exit(USAGE_ERROR_EXIT_CODE)
    except ModuleNotFoundError as exc:  # a package of an extra not installed
        owner = owner_of_module(exc.name)
        if owner is None:
            raise
        extra, package = owner
        feature = Path(sys.argv[0]).name or "this command"
        log.error("error: %s", missing_extra_error(feature, extra, (package,)))
        sys.exit(USAGE_ERROR_EXIT_CODE)
    except KeyboardInterrupt:
        log.error("interrupted (Ctrl-C)")
        sys.exit(INTERRUPTED_EXIT_CODE)
    except Terminated:
        log.error("terminated (SIGTERM)")
        sys.exit(TERMINATED_EXIT_CODE)


def _job_overrides() -> list:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


def _sweep_job(task: Callable, cfg: DictConfig, output_dir: Path) -> Any:
    """One job of a sweep: its outcome goes to `job_status.json` in its dir; a
    failure does not stop the sweep, a signal (the user asked to stop) does."""
    started = time.perf_counter()
    overrides = _job_overrides()

    def record(status: str, **fields: Any) -> None:
        seconds = time.perf_counter() - started
        write_job_status(output_dir, status, seconds, overrides=overrides, **fields)

    try:
        with environment_values_guarded(cfg, output_dir):
            value = task(cfg, output_dir)
    except TrainingInterrupted as exc:
        log.error("%s", exc)
        record("interrupted", error=str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        log.error("interrupted (Ctrl-C)")
        record("interrupted", error="interrupted (Ctrl-C)")
        sys.exit(INTERRUPTED_EXIT_CODE)
    except ModelSphereError as exc:
        log.error("error: %s", exc)
        failure = exc
    except Exception as exc:  # a bug or an environment problem: keep the traceback
        log.exception("unexpected error: %s: %s", type(exc).__name__, exc)
        failure = exc
    else:
        record("completed", value=value)
        return value
    log.error("this sweep job failed; its output dir is %s", output_dir)
    record("failed", error=str(failure), error_type=type(failure).__name__)
    return None
