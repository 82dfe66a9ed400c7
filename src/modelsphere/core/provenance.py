"""What produced a run: package versions, Python, platform and git commit."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional

PACKAGES = (
    "modelsphere",
    "torch",
    "numpy",
    "pandas",
    "pyarrow",
    "hydra-core",
    "omegaconf",
    "torchmetrics",
    "safetensors",
    "matplotlib",
)
GIT_TIMEOUT_SECONDS = 5


def package_versions(*extra: str) -> Dict[str, Optional[str]]:
    """The installed versions of PACKAGES and of `extra` (None: not installed)."""
    versions: Dict[str, Optional[str]] = {}
    for name in (*PACKAGES, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(args, cwd: Path) -> Optional[str]:
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_state(cwd: Path | None = None) -> Dict[str, Any]:
    """The commit of the code that ran, and whether the work tree had changes."""
    cwd = cwd or Path(__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], cwd)
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def provenance() -> Dict[str, Any]:
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch_cuda": torch.version.cuda,
        "packages": package_versions(),
        "git": git_state(),
    }
