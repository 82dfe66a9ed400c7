"""What `train.resume=<run dir>` may do, decided before anything is written.

A resumed run keeps its own saved config: only the device, how this machine
holds the data (`train.loading`, `train.memory_budget_mib`), the run trackers
(`logger`, when given; else the run's own), where outputs go and a new
`train.max_epochs` come from the command line. Any other override that
differs from the run's own setting would be silently dropped, so it is refused
by name (one that repeats the run's setting, as a re-issued command does, is
not). An interrupted run (or one killed outright) continues in its own dir. A
finished run is never rewritten: training it further needs an explicit, larger
`train.max_epochs`, and the continued run is written to the new run dir,
starting from the finished run's checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from modelsphere.core.errors import ModelSphereError
from modelsphere.core.fileio import read_json
from modelsphere.core.runs import CONFIG_FILE, METRICS_FILE

log = logging.getLogger(__name__)

FINISHED_STATUS = "completed"
MAX_EPOCHS_KEY = "train.max_epochs"
# How this machine holds the data: a resumed run takes them from the command line
# (a checkpoint taken mid-epoch still resumes only as it was taken; the stream
# cache changes where streamed tensors are read from, never what they hold).
MACHINE_KEYS = ("train.loading", "train.memory_budget_mib", "train.stream_cache")
# Overrides a resumed run takes from the command line (a key, or a key's group).
RESUME_KEYS = (
    "train.resume",
    MAX_EPOCHS_KEY,
    "device",
    "logger",
    "paths.outputs_dir",
    *MACHINE_KEYS,
)


@dataclass
class ResumePlan:
    cfg: DictConfig  # the resumed run's own config, with the allowed changes
    run_dir: Path  # where this run writes: the resumed dir, or a new one
    continues_finished: bool


def command_line_overrides() -> Optional[List[str]]:
    """The overrides this process was started with, if it runs under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _allowed(key: str) -> bool:
    return any(key == name or key.startswith(f"{name}.") for name in RESUME_KEYS)


def _changes(cfg: DictConfig, saved: DictConfig, key: str) -> bool:
    """Whether the override of `key` gives another value than the saved run's (an
    override that repeats the run's own setting drops nothing)."""

    def plain(node: DictConfig) -> Any:
        value = OmegaConf.select(node, key, default=None)
        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
        return value

    try:
        return plain(cfg) != plain(saved)
    except OmegaConfBaseException:
        return True  # cannot be compared: treated as a change


def _given(group: str, overrides: Optional[Sequence[str]]) -> bool:
    """Whether the command line sets `group` (always, for a config composed in
    code: it says every setting)."""
    if overrides is None:
        return True
    keys = [_override_key(item) for item in overrides]
    return any(key == group or key.startswith(f"{group}.") for key in keys)


def _status(resumed: Path) -> Optional[str]:
    path = resumed / METRICS_FILE
    if not path.is_file():
        return None  # killed before its first summary: not finished
    summary: Dict[str, Any] = read_json(path, "run metrics")
    return summary.get("status") if isinstance(summary, dict) else None


def plan_resume(
    cfg: DictConfig,
    resumed: Path,
    new_run_dir: Path,
    epochs_done: int,
    overrides: Optional[Sequence[str]],
) -> ResumePlan:
    """The config and run dir of `train.resume=<resumed>`, or a clear refusal.

    `overrides`: the command line's overrides (None when unknown, as for a config
    composed in code: then a `train.max_epochs` that differs from the saved one
    counts as given)."""
    where = f"train.resume={resumed}"
    saved_path = resumed / CONFIG_FILE
    if not saved_path.is_file():
        raise ModelSphereError(f"{where}: {CONFIG_FILE} is missing there")
    saved = OmegaConf.load(saved_path)
    if overrides is not None:
        dropped = [
            item
            for item in overrides
            if not _allowed(_override_key(item))
            and _changes(cfg, saved, _override_key(item))
        ]
        if dropped:
            raise ModelSphereError(
                f"{where}: a resumed run keeps its own config, so {dropped} would be "
                f"ignored; drop them, or start a new run (only {list(RESUME_KEYS)} "
                "apply to a resumed run)"
            )
        epochs_given = any(_override_key(item) == MAX_EPOCHS_KEY for item in overrides)
    else:
        epochs_given = cfg.train.max_epochs != saved.train.max_epochs
    max_epochs = cfg.train.max_epochs if epochs_given else saved.train.max_epochs
    finished = _status(resumed) == FINISHED_STATUS
    if finished and (not epochs_given or max_epochs <= epochs_done):
        raise ModelSphereError(
            f"{where}: the run has finished ({epochs_done} epoch(s)) and is kept as it "
            f"is; to train it further give {MAX_EPOCHS_KEY} above {epochs_done} (the "
            "continued run is written to a new run dir)"
        )
    if max_epochs < epochs_done:
        raise ModelSphereError(
            f"{where}: {MAX_EPOCHS_KEY}={max_epochs} is fewer than the {epochs_done} "
            "epoch(s) the run has done"
        )
    run_dir = new_run_dir if finished else resumed
    if finished and run_dir.resolve() == resumed.resolve():
        raise ModelSphereError(f"{where}: a finished run cannot be its own new run dir")
    if max_epochs != saved.train.max_epochs:
        log.info("resume: max_epochs %d -> %d", saved.train.max_epochs, max_epochs)
    saved.device = cfg.device
    if _given("logger", overrides) or "logger" not in saved:
        saved.logger = cfg.logger  # where the run reports, not how it trains
    for key in MACHINE_KEYS:
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key), merge=False)
    saved.train.max_epochs = max_epochs
    saved.train.resume = str(resumed)
    if finished:
        log.info("continuing the finished run %s in %s", resumed, run_dir)
    else:
        log.info("resuming %s from its last checkpoint", resumed)
    return ResumePlan(saved, run_dir, finished)
