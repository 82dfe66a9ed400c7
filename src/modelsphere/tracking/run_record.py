"""What a tracker records of a training run besides its metrics: the composed
config as flat params, the sweep a job belongs to, and the run dir's files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping

from modelsphere.core.runs import CHECKPOINT_FILE, TRACKING_FILE

# Resume state (large, rewritten every epoch) and the trackers' own record stay
# in the run dir only.
NOT_LOGGED = (CHECKPOINT_FILE, TRACKING_FILE)


def flat_params(config: Any, prefix: str = "") -> Dict[str, str]:
    """{'model.hidden_sizes': '[256, 256]', 'train.lr': '0.001', ...}: the saved
    (environment-redacted) config, one param per leaf setting; a list is one
    value."""
    if not isinstance(config, dict):
        return {prefix: str(config)}
    flat: Dict[str, str] = {}
    for key, value in config.items():
        flat.update(flat_params(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def sweep_tags() -> Dict[str, str]:
    """Under a Hydra multirun: the sweep dir, the job's number and its
    overrides, so the jobs of one sweep are found (and told apart) together."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    hydra = HydraConfig.get()
    return {
        "sweep_dir": str(Path(hydra.sweep.dir).resolve()),
        "sweep_job": str(hydra.job.num),
        "overrides": " ".join(hydra.overrides.task),
    }


def logged_files(run_dir: Path) -> List[Path]:
    """The run dir's files a tracker keeps: config, metrics, model, plots."""
    return sorted(
        path
        for path in run_dir.iterdir()
        if path.is_file() and path.name not in NOT_LOGGED
    )


def epoch_scalars(row: Mapping[str, Any]) -> Dict[str, float]:
    """An epoch's history row as named numbers (the list of rows per process and
    the epoch number itself left out)."""
    return {
        key: float(value)
        for key, value in row.items()
        if key != "epoch" and isinstance(value, (int, float))
    }


def final_scalars(final: Mapping[str, Mapping[str, float]]) -> Dict[str, float]:
    """The final metrics as `best_val_<metric>` (the restored best weights) and
    `test_<metric>`."""
    prefix = {"val": "best_val_", "test": "test_"}
    return {
        f"{prefix[split]}{name}": float(value)
        for split, metrics in final.items()
        for name, value in metrics.items()
        if name != "rows"
    }
