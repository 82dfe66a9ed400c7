"""The optional packages of the run trackers: imported only when selected, and
a missing one named with the extra that installs it."""

from __future__ import annotations

import importlib
from typing import Any

from modelsphere.core.errors import ModelSphereError

TRACKING_EXTRA = (
    "pip install -r requirements-tracking.txt (or pip install -e '.[tracking]')"
)


def require_package(module: str, setting: str, package: str) -> Any:
    """Import `module` for the tracker `setting`, or stop naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelSphereError(
            f"{setting} needs the {package} package, which is not installed: "
            f"{TRACKING_EXTRA}"
        ) from None
