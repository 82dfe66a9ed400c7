"""The LICENSE file exists and says what pyproject.toml declares (issue #16)."""

from __future__ import annotations

import re

import pytest

from helpers import REPO

pytestmark = pytest.mark.tooling

TITLES = {"MIT": "MIT License"}


def test_the_license_file_matches_the_declared_license():
    # (tomllib is Python 3.11+; the project supports 3.10)
    pyproject = (REPO / "pyproject.toml").read_text()
    declared = re.search(r'^license = "([^"]+)"$', pyproject, re.M).group(1)
    text = (REPO / "LICENSE").read_text()
    assert text.splitlines()[0] == TITLES[declared]
    assert "Permission is hereby granted, free of charge" in text
