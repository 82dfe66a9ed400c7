"""Shared fixtures, and the tier markers: every test under tests/unit/,
tests/pipeline/ or tests/tooling/ is marked with its tier, so `pytest -m unit`
runs one tier (`make test-quick`). Helpers live in tests/helpers/."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_table

TIERS = ("unit", "pipeline", "tooling")


def pytest_collection_modifyitems(items):
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.csv"
    make_table().to_csv(path, index=False)
    return path
