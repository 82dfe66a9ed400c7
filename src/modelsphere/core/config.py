"""Config machinery: typed settings that declare their own checks.

Every layer owns the dataclass of its settings (`data/config.py`,
`features/config.py`, `models/config.py`, `training/config.py`,
`inference/config.py`, `serving/config.py`), with its choices taken from the
module that implements them. Hydra composes `conf/` onto those dataclasses, so a
misspelt key or a wrong type fails when composing; the YAML files only say where a
preset differs from the dataclass default.

A field's value checks are declared beside it with `setting(...)`: the allowed
choices, bounds, a length. Checks that relate several fields are the dataclass's
`check(node, key)` staticmethod. `validate(node, Schema)` runs all of them before
any work starts, and each message names the field and what is allowed. This
module also holds the sections every app shares (paths, device) and the run-dir
naming resolvers.
"""

from __future__ import annotations

import dataclasses
import secrets
import tempfile
import typing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from modelsphere.core.devices import AMP_DTYPES, DEVICE_NAMES
from modelsphere.core.errors import ModelSphereError
from modelsphere.core.launch import launched_rank
from modelsphere.core.redaction import saved_config

CHECKS = "modelsphere.checks"  # the key of a field's checks in its metadata


@dataclass(frozen=True)
class Checks:
    """What a field's value must satisfy (None: no such check)."""

    choices: Optional[Sequence[Any]] = None
    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    length: Optional[int] = None

    def apply(self, key: str, value: Any, nullable: bool) -> None:
        if value is None:
            return
        if self.choices is not None and value not in self.choices:
            options = ", ".join(map(str, self.choices))
            raise ModelSphereError(
                f"{key}={value!r} is not valid: choose one of {options}"
            )
        if self.length is not None and len(value) != self.length:
            what = "a single character" if self.length == 1 else f"{self.length} long"
            raise ModelSphereError(f"{key} must be {what}")
        low = self.ge if self.ge is not None else self.gt
        high = self.le if self.le is not None else self.lt
        too_low = low is not None and (
            value < low if self.ge is not None else value <= low
        )
        too_high = high is not None and (
            value > high if self.le is not None else value >= high
        )
        if not (too_low or too_high):
            return
        if low is not None and high is not None:
            left = "[" if self.ge is not None else "("
            right = "]" if self.le is not None else ")"
            rule = f"in {left}{low}, {high}{right}"
        elif low is not None:
            rule = f"{'>=' if self.ge is not None else '>'} {low}"
        else:
            rule = f"{'<=' if self.le is not None else '<'} {high}"
        null = " or null" if nullable else ""
        raise ModelSphereError(f"{key} must be {rule}{null}, got {value}")


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Any = None,
    choices: Optional[Sequence[Any]] = None,
    ge: Optional[float] = None,
    gt: Optional[float] = None,
    le: Optional[float] = None,
    lt: Optional[float] = None,
    length: Optional[int] = None,
) -> Any:
    """A dataclass field with its checks: `lr: float = setting(1e-3, gt=0)`."""
    metadata = {CHECKS: Checks(choices, ge, gt, le, lt, length)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def validate(node: DictConfig, schema: type, key: str = "") -> None:
    """Run every declared check of `schema` (and of its nested sections) on `node`;
    `key` is the node's dotted path, which starts each message."""
    hints = typing.get_type_hints(schema)
    for item in dataclasses.fields(schema):
        name = f"{key}.{item.name}" if key else item.name
        if item.name not in node or OmegaConf.is_missing(node, item.name):
            continue
        kind = hints[item.name]
        if dataclasses.is_dataclass(kind):
            validate(node[item.name], kind, name)
            continue
        checks = item.metadata.get(CHECKS)
        if checks is not None:
            checks.apply(name, node[item.name], _is_optional(kind))
    if hasattr(schema, "check"):
        schema.check(node, key)


def _is_optional(kind: Any) -> bool:
    return typing.get_origin(kind) is typing.Union and type(None) in typing.get_args(
        kind
    )


def require(condition: bool, message: str) -> None:
    """A check between fields: raise `message` unless `condition` holds."""
    if not condition:
        raise ModelSphereError(message)


def _missing_keys(node: DictConfig) -> List[str]:
    """Keys set to `???`, found without resolving interpolations (which would fail
    on the very values that are missing)."""
    found = []
    for key in node.keys():
        if OmegaConf.is_missing(node, key):
            found.append(node._get_full_key(key))
        elif not OmegaConf.is_interpolation(node, key):
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                found += _missing_keys(child)
    return found


def check_no_missing(cfg: DictConfig, hint: str = "") -> None:
    """Fail with every required-but-unset key at once (`???` in the config)."""
    missing = sorted(_missing_keys(cfg))
    if missing:
        keys = ", ".join(missing)
        raise ModelSphereError(f"missing required config value(s): {keys}. {hint}")


def to_plain(cfg: DictConfig) -> Dict[str, Any]:
    """The resolved config as plain JSON-able data (saved beside each artifact);
    a value taken from the environment stays `${oc.env:NAME}` (core.redaction)."""
    return saved_config(cfg)


# ----------------------------------------------------------------------------
# The sections every app shares


@dataclass
class PathsConfig:
    data_dir: str = "data"  # raw CSVs and processed splits
    outputs_dir: str = "outputs"  # run dirs, sweeps, predictions, `latest`


@dataclass
class DeviceConfig:
    # auto: CUDA when available, else the CPU; cpu; cuda
    name: str = setting("auto", choices=DEVICE_NAMES)
    amp: bool = True  # mixed precision on CUDA (never on the CPU)
    # auto: bf16 where the GPU supports it, else fp16 with loss scaling
    amp_dtype: str = setting("auto", choices=AMP_DTYPES)
    num_threads: Optional[int] = setting(None, ge=1)  # null: torch's default
    deterministic: bool = True  # deterministic kernels (bitwise on the CPU)


# ----------------------------------------------------------------------------
# Run dirs and registration


def _new_run_id() -> str:
    """Timestamp to the millisecond plus a random suffix: run dirs never collide."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")[:-3]
    return f"{stamp}_{secrets.token_hex(2)}"


def _run_dir(outputs_dir: str, job_name: str) -> str:
    """This invocation's run dir. Under torchrun or srun only rank 0 gets one in
    outputs/ (the run's); the other ranks log to a scratch dir, so a distributed
    run leaves one run dir, not one per process."""
    rank = launched_rank()
    if rank > 0:
        scratch = Path(tempfile.gettempdir()) / "modelsphere-ranks"
        return str(scratch / f"{job_name}-rank{rank}-{_new_run_id()}")
    return f"{outputs_dir}/{job_name}/{_new_run_id()}"


def register_schema(name: str, schema: type) -> None:
    """Make `schema` the base of a primary config (`defaults: [- name]`)."""
    ConfigStore.instance().store(name=name, node=schema)


def register_resolvers() -> None:
    """The `${run_id:}`, `${stem:}` and `${run_dir:}` resolvers; idempotent."""
    # use_cache: every `${run_id:}` in one process resolves to the same id.
    OmegaConf.register_new_resolver(
        "run_id", lambda: _new_run_id(), use_cache=True, replace=True
    )
    OmegaConf.register_new_resolver(
        "stem", lambda path: Path(str(path)).stem, replace=True
    )
    OmegaConf.register_new_resolver("run_dir", _run_dir, use_cache=True, replace=True)


register_resolvers()
