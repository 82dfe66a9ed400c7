"""What the four entry points share: error reporting and the run dir.

A `ModelSphereError` (bad input, bad config) is printed as one line and the
process exits with status 2; no traceback. In a multirun sweep a failed job logs
its error and output dir and the sweep goes on with the next job.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Callable

from omegaconf import DictConfig

from . import config  # noqa: F401  (registers the config schemas with Hydra)
from .errors import ModelSphereError
from .runs import hydra_output_dir

log = logging.getLogger("modelsphere")

USAGE_ERROR_EXIT_CODE = 2


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
        except ModelSphereError as exc:
            log.error("error: %s", exc)
            if _is_multirun():
                log.error("this sweep job failed; its output dir is %s", output_dir)
                return float("nan")
            sys.exit(USAGE_ERROR_EXIT_CODE)

    return main
