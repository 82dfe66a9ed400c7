"""Trained runs that many tests share, trained once per test session.

A recipe names one tiny training run (task, epochs, seed...). The first test that
asks for a recipe trains it under a lock in a folder every pytest-xdist worker of
the session sees; later requests, in any worker, get a private copy of it laid out
as `<dest>/outputs/train/<recipe>`, so a test may write into its copy (ONNX cache,
evaluation files) without touching what the others read.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Dict, Tuple

from filelock import FileLock

DONE_MARKER = ".trained"

# recipe -> (task, overrides) for `train_tiny`: mlp_small on make_table(task).
TINY_RECIPES: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "binary": ("binary", ()),
    "multiclass": ("multiclass", ()),
    # log1p forced (the table's target is not skewed enough for auto): every
    # test of a regression run then covers the target transform's inverse and
    # its smearing factor (features/target.py)
    "regression": ("regression", ("model.features.target_transform=log1p",)),
    "binary_one_epoch": ("binary", ("train.max_epochs=1", "train.plot=false")),
    "binary_seed_1": ("binary", ("seed=1",)),
    "binary_seed_2": ("binary", ("seed=2",)),
    # discrete numeric columns also embedded per value (age: 62 values)
    "binary_levels": (
        "binary",
        (
            "train.max_epochs=1",
            "train.plot=false",
            "model.features.numeric_level_max=100",
        ),
    ),
    "binary_standard": (
        "binary",
        (
            "train.max_epochs=1",
            "train.plot=false",
            "model.features.numeric_scaling=standard",
            "model.numeric_embedding=none",
        ),
    ),
}


def train_telco_one_epoch(base: Path, run_name: str) -> Path:
    """The bundled Telco churn data, 1 epoch on the CPU, everything under `base`."""
    from helpers import compose_config
    from modelsphere.training.run import run_training

    cfg = compose_config(
        [
            "train.max_epochs=1",
            f"paths.data_dir={base / 'data'}",
            f"paths.outputs_dir={base / 'outputs'}",
            "device=cpu",
        ]
    )
    run_dir = base / "outputs" / "train" / run_name
    run_training(cfg, run_dir)
    return run_dir


def train_recipe(recipe: str, base: Path) -> Path:
    from helpers import train_tiny

    if recipe == "telco_one_epoch":
        return train_telco_one_epoch(base, recipe)
    task, overrides = TINY_RECIPES[recipe]
    return train_tiny(base, *overrides, task=task, run_name=recipe)


class TrainedRuns:
    """The session's shared runs under `root` (one folder per recipe)."""

    def __init__(self, root: Path, train: Callable[[str, Path], Path] = train_recipe):
        self.root = root
        self.train = train

    def original(self, recipe: str) -> Path:
        """The shared run dir, training it first if no worker has yet."""
        base = self.root / recipe
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / f"{recipe}.lock")):
            if not (base / DONE_MARKER).is_file():
                shutil.rmtree(base, ignore_errors=True)  # a half-trained leftover
                base.mkdir(parents=True)
                self.train(recipe, base)
                (base / DONE_MARKER).touch()
        return base / "outputs" / "train" / recipe

    def copy(self, recipe: str, dest: Path) -> Path:
        """A private copy of the recipe's run at `<dest>/outputs/train/<recipe>`."""
        run_dir = dest / "outputs" / "train" / recipe
        shutil.copytree(self.original(recipe), run_dir)
        return run_dir
