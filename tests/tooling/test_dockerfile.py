"""The service's container image (Dockerfile, issue #16): hadolint-clean, two
stages, an unprivileged user, a readiness health check; and, with no container
engine here, its build steps run in a fresh venv (the COPYs done as files, the
`pip install`s and the build-time ONNX export run as written) and its CMD and
HEALTHCHECK run against a read-only copy of the run."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

import pytest

from helpers import REPO, free_port, train_tiny
from helpers.fresh_venv import (
    create_venv,
    install_torch_first,
    pip_install,
    run_in_venv,
    torch_pin,
    venv_environment,
)

pytestmark = pytest.mark.tooling

DOCKERFILE = REPO / "Dockerfile"
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"
READY_TIMEOUT_S = 120


def instructions() -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    parsed = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            parsed.append((keyword.upper(), rest.strip()))
    return parsed


def stages() -> List[List[Tuple[str, str]]]:
    found: List[List[Tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def exec_form(rest: str) -> List[str]:
    return json.loads(rest)


def test_the_dockerfile_is_hadolint_clean():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.is_file(), "make test installs hadolint (requirements-tools.txt)"
    result = subprocess.run(
        [str(hadolint), str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_two_stages_an_unprivileged_user_and_a_readiness_check():
    build, final = stages()
    assert any(k == "RUN" and "onnx_cache /srv/run" in r for k, r in build)
    copied = [r for k, r in final if k == "COPY"]
    assert all(r.startswith("--from=build") for r in copied if "/opt/venv" in r)
    assert not any(k == "RUN" and "pip" in r for k, r in final)  # no build tools
    (user,) = [r for k, r in final if k == "USER"]
    assert user not in ("root", "0")
    (check,) = [r for k, r in final if k == "HEALTHCHECK"]
    assert "/v2/health/ready" in check
    (cmd,) = [exec_form(r) for k, r in final if k == "CMD"]
    assert cmd[:2] == ["python", "/srv/serve.py"] and "run_dir=/srv/run" in cmd


def _mapped(text: str, root: Path) -> str:
    """An image path (/opt/venv, /srv, /build, the home dir) under `root`."""
    for image_path in ("/opt/venv", "/srv", "/build", "/home/modelsphere"):
        text = text.replace(image_path, str(root / image_path.lstrip("/")))
    return text


def _copy(rest: str, root: Path, workdir: Path, run_dir: Path) -> None:
    """COPY from the build context (this checkout; RUN_DIR: the trained run)."""
    *sources, target = shlex.split(rest)
    assert not sources[0].startswith("--from"), "only the final stage copies stages"
    into = Path(_mapped(target, root)) if target.startswith("/") else workdir / target
    for source in sources:
        origin = run_dir if source == "${RUN_DIR}" else REPO / source
        if origin.is_dir():
            shutil.copytree(origin, into, dirs_exist_ok=True)
        else:
            into.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, into / origin.name)


def _build(root: Path, run_dir: Path) -> Path:
    """The build stage's steps, run here; the venv's python."""
    build, final = stages()
    workdir, python = root / "build", None
    for keyword, rest in build[1:]:
        if keyword == "WORKDIR":
            workdir = Path(_mapped(rest, root))
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            _copy(rest, root, workdir, run_dir)
        elif keyword == "RUN" and rest.startswith("python -m venv"):
            python = create_venv(Path(_mapped(rest.split()[-1], root)))
        elif keyword == "RUN" and CPU_INDEX in rest:
            # torch's CPU build from PyTorch's index: the pin requirements.txt
            # has, from that index where the suite is told to use it (else the
            # same pin comes from pip's configured index with the rest)
            pin = re.search(r"torch==\S+", rest).group(0)
            assert pin == torch_pin(REPO / "requirements.txt")
            install_torch_first(python, REPO / "requirements.txt", workdir)
        elif keyword == "RUN" and rest.startswith("pip install"):
            args = [a for a in shlex.split(rest)[2:] if a != "--no-cache-dir"]
            pip_install(python, *args, cwd=workdir)
        elif keyword == "RUN":
            result = run_in_venv(python, _mapped(rest, root), workdir)
            assert result.returncode == 0, rest + result.stdout + result.stderr
    for keyword, rest in final[1:]:  # the files the final stage adds
        if keyword == "COPY" and not rest.startswith("--from"):
            _copy(rest, root, root, run_dir)
    return python


def test_the_build_steps_install_export_and_serve_a_read_only_run(tmp_path):
    (tmp_path / "train").mkdir()
    run_dir = train_tiny(tmp_path / "train")
    root = tmp_path / "image"
    python = _build(root, run_dir)
    served = root / "srv" / "run"
    graph = served / "model.onnx"
    assert graph.is_file(), "the build stage exported the ONNX graph"
    exported = graph.stat().st_mtime_ns
    for path in [served, *served.iterdir()]:  # the image's run: read-only
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))

    _, final = stages()
    port = free_port()
    (cmd,) = [exec_form(r) for k, r in final if k == "CMD"]
    cmd = [_mapped(a, root).replace("8000", str(port)) for a in cmd]
    cmd = [str(python) if a == "python" else a for a in cmd]
    (home,) = [Path(_mapped(r, root)) for k, r in final if k == "WORKDIR"]
    home.mkdir(parents=True, exist_ok=True)
    (check,) = [r for k, r in final if k == "HEALTHCHECK"]
    probe = exec_form(check.split("CMD", 1)[1].strip())
    probe = [
        str(python) if a == "python" else a.replace("8000", str(port)) for a in probe
    ]
    service = subprocess.Popen(
        cmd,
        cwd=home,
        env=venv_environment(python),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        healthy = False
        while time.monotonic() < deadline and service.poll() is None:
            healthy = run_in_venv(python, probe, home, timeout=30).returncode == 0
            if healthy:
                break
            time.sleep(0.5)
        assert healthy, "the HEALTHCHECK never passed"
    finally:
        service.terminate()
        log, _ = service.communicate(timeout=60)
    assert "loaded the ONNX graph cached in" in log, log
    assert "exported the model to ONNX" not in log, log
    assert graph.stat().st_mtime_ns == exported
