"""Shared fixtures, and the tier markers: every test under tests/unit/,
tests/pipeline/ or tests/tooling/ is marked with its tier, so `pytest -m unit`
runs one tier (`make test-quick`). Helpers live in tests/helpers/.

`trained_runs` trains each shared recipe once per session: under pytest-xdist
(`make test` runs the suite on every core) the workers share one folder, the
parent of their own base temp dirs, so a recipe is trained once in all. Each
worker also takes its share of the cores for PyTorch's threads (and passes it
to the processes it starts), so that N workers on N cores do not each run N
threads and spend their time switching between them."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

import torch

from helpers import make_table
from helpers.trained_runs import TrainedRuns

TIERS = ("unit", "pipeline", "tooling")
# The order the tiers run in: the few long benchmark smoke runs of tooling first
# and the many short unit tests last, so that under pytest-xdist (one file per
# worker, handed out in this order) no long file starts near the end.
RUN_ORDER = ("tooling", "pipeline", "unit")


def pytest_configure(config):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(threads)  # for the CLI runs it starts


@pytest.fixture(autouse=True)
def unfrozen_heap():
    """A served app freezes the heap of the process it loads in
    (serving/heap.py): in the test process, every earlier test's objects too.
    Each test gives them back to the collector when it ends."""
    yield
    if gc.get_freeze_count():
        gc.unfreeze()


def tier_of(item) -> str:
    return Path(str(item.fspath)).parent.name


def pytest_collection_modifyitems(items):
    for item in items:
        tier = tier_of(item)
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
    rank = {tier: position for position, tier in enumerate(RUN_ORDER)}
    items.sort(key=lambda item: rank.get(tier_of(item), len(RUN_ORDER)))


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.csv"
    make_table().to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> TrainedRuns:
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the session's workers
    return TrainedRuns(base / "trained_runs")
