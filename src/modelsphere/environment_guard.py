"""What every entry point runs its task in (cli.entry_point): secrets are taken
from the environment only, and no value taken from the environment reaches a
name, a file the run writes or a log line (core/redaction.py does the
replacing).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from omegaconf import DictConfig, OmegaConf

from modelsphere.core.errors import ModelSphereError
from modelsphere.core.fileio import atomic_write_text
from modelsphere.core.redaction import (
    ENV_REFERENCE,
    EnvironmentValues,
    activate,
    redact_logs,
    remove_filters,
)

# Settings taken from the environment only (key -> the variable to use).
ENVIRONMENT_ONLY = {"serve.api_key": "MODELSPHERE_API_KEY"}
HYDRA_FILES = ("config.yaml", "overrides.yaml", "hydra.yaml")
REDACTED = "<redacted>"


@contextmanager
def environment_values_guarded(
    cfg: DictConfig, output_dir: Optional[Path]
) -> Iterator[EnvironmentValues]:
    """What an entry point runs its task in: secrets only from the environment,
    and no environment value in names, files written or log lines."""
    env = EnvironmentValues.of(cfg)
    activate(env)
    filters = redact_logs()
    try:
        hydra_dir = output_dir / ".hydra" if output_dir is not None else None
        refuse_literal_secrets(cfg, hydra_dir)
        env.refuse_in_names(cfg)
        yield env
    finally:
        activate(EnvironmentValues())
        remove_filters(filters)


def refuse_literal_secrets(cfg: DictConfig, hydra_dir: Optional[Path]) -> None:
    """A setting in ENVIRONMENT_ONLY given as a literal is refused, and the copies
    Hydra already saved in `.hydra/` are overwritten without it."""
    if not OmegaConf.is_config(cfg):
        return
    for key, variable in ENVIRONMENT_ONLY.items():
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key, default=None)
        if not isinstance(parent, DictConfig) or leaf not in parent:
            continue
        raw = OmegaConf.to_container(parent, resolve=False).get(leaf)
        if raw is None or (isinstance(raw, str) and ENV_REFERENCE.search(raw)):
            continue
        if hydra_dir is not None:
            _scrub(hydra_dir, str(raw))
        raise ModelSphereError(
            f"{key} is a secret: it is only taken from the environment "
            f"(set {variable}=... before the command); given on the command line "
            "it would be saved with the run and shown by `ps`"
        )


def _scrub(hydra_dir: Path, secret: str) -> None:
    for name in HYDRA_FILES:
        path = hydra_dir / name
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if secret in text:
                atomic_write_text(path, text.replace(secret, REDACTED))
