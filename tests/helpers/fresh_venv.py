"""Fresh virtual environments for the install tests (tests/tooling/test_install.py,
test_dockerfile.py): what a user's `pip install` gets, apart from this suite's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

INSTALL_TIMEOUT_S = 900  # a cold pip cache downloads torch's CPU wheel
# Where a fresh venv gets torch's CPU build first, when set (CI on GitHub: the
# default index's torch wheel is the CUDA one); unset, the pin in
# requirements.txt comes from pip's configured index like everything else.
TORCH_INDEX_VARIABLE = "MODELSPHERE_TORCH_INDEX_URL"


def create_venv(path: Path) -> Path:
    """A new venv at `path` (no packages of ours); its python."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin" / "python"


def venv_environment(python: Path) -> dict:
    """The environment of a shell in that venv: its bin/ first, nothing of the
    suite's own venv or PYTHONPATH."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["HYDRA_FULL_ERROR"] = "0"
    return env


def run_in_venv(
    python: Path, command: Sequence[str] | str, cwd: Path, timeout: int = 600
) -> subprocess.CompletedProcess:
    """`command` (argv, or a shell line) in the venv; output captured."""
    return subprocess.run(
        command,
        cwd=cwd,
        env=venv_environment(python),
        shell=isinstance(command, str),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def torch_pin(requirements: Path) -> str:
    (pin,) = [
        line.strip()
        for line in requirements.read_text().splitlines()
        if line.startswith("torch==")
    ]
    return pin


def install_torch_first(python: Path, requirements: Path, cwd: Path) -> None:
    """torch's CPU build from TORCH_INDEX_VARIABLE's index, where it is set."""
    index = os.environ.get(TORCH_INDEX_VARIABLE)
    if index:
        pip_install(python, torch_pin(requirements), "--index-url", index, cwd=cwd)


def pip_install(python: Path, *args: str, cwd: Path) -> None:
    result = run_in_venv(
        python,
        [str(python), "-m", "pip", "install", "-q", *args],
        cwd,
        INSTALL_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
