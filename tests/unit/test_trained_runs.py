"""The suite's shared trained runs (tests/helpers/trained_runs.py): a recipe is
trained once however many workers ask, and each test gets a private copy."""

from __future__ import annotations

from pathlib import Path

from helpers.trained_runs import DONE_MARKER, TrainedRuns


class CountingTrainer:
    """Stands in for training: writes a run dir and counts the calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, recipe: str, base: Path) -> Path:
        self.calls.append(recipe)
        run_dir = base / "outputs" / "train" / recipe
        run_dir.mkdir(parents=True)
        (run_dir / "model.json").write_text(f'{{"recipe": "{recipe}"}}')
        return run_dir


def test_a_recipe_is_trained_once_for_every_worker(tmp_path):
    trainer = CountingTrainer()
    root = tmp_path / "shared"
    first_worker, second_worker = TrainedRuns(root, trainer), TrainedRuns(root, trainer)
    one = first_worker.copy("binary", tmp_path / "a")
    two = second_worker.copy("binary", tmp_path / "b")
    second_worker.copy("regression", tmp_path / "c")
    assert trainer.calls == ["binary", "regression"]
    assert one == tmp_path / "a" / "outputs" / "train" / "binary"
    assert (one / "model.json").read_text() == (two / "model.json").read_text()


def test_a_copy_is_private(tmp_path):
    runs = TrainedRuns(tmp_path / "shared", CountingTrainer())
    mine = runs.copy("binary", tmp_path / "mine")
    (mine / "model.json").write_text("changed by one test")
    (mine / "model.onnx").write_text("a cache one test wrote")
    theirs = runs.copy("binary", tmp_path / "theirs")
    assert (theirs / "model.json").read_text() == '{"recipe": "binary"}'
    assert not (theirs / "model.onnx").exists()


def test_a_half_trained_leftover_is_trained_again(tmp_path):
    trainer = CountingTrainer()
    root = tmp_path / "shared"
    stale = root / "binary" / "outputs" / "train" / "binary"
    stale.mkdir(parents=True)
    (stale / "partial.tmp").write_text("interrupted")  # no DONE_MARKER
    run_dir = TrainedRuns(root, trainer).original("binary")
    assert trainer.calls == ["binary"]
    assert not (run_dir / "partial.tmp").exists()
    assert (root / "binary" / DONE_MARKER).is_file()
