"""What the four entry points share: error reporting and the run dir.

A `ModelSphereError` (bad input, bad config) is printed as one line and the
process exits with status 2; no traceback. In a multirun sweep a failed job logs
its error and output dir and the sweep goes on with the next job. A training run
stopped by SIGINT/SIGTERM exits with 128 + the signal number after saving a
resumable checkpoint, and stops a sweep as well.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Callable

from omegaconf import DictConfig

from . import config  # noqa: F401  (registers the config schemas with Hydra)
from .errors import ModelSphereError
from .interrupts import TrainingInterrupted
from .runs import hydra_output_dir

log = logging.getLogger("modelsphere")

USAGE_ERROR_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as shells report it


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def entry_point(task: Callable) -> Callable:
    """Wrap `task(cfg, output_dir)` for `@hydra.main`."""

    @functools.wraps(task)
    def main(cfg: DictConfig):
        output_dir = hydra_output_dir()
        try:
            return task(cfg, output_dir)
        except TrainingInterrupted as exc:
            log.error("%s", exc)  # stops a sweep too: the user asked to stop
            sys.exit(exc.exit_code)
        except ModelSphereError as exc:
            log.error("error: %s", exc)
            if _is_multirun():
                log.error("this sweep job failed; its output dir is %s", output_dir)
                return float("nan")
            sys.exit(USAGE_ERROR_EXIT_CODE)
        except KeyboardInterrupt:
            log.error("interrupted (Ctrl-C)")
            sys.exit(INTERRUPTED_EXIT_CODE)

    return main
