"""The model artifact: `model.safetensors` (weights) + `model.json` (everything else).

Loading executes nothing: safetensors holds raw tensors only, the JSON holds the
model spec, feature state, schema, resolved config, metrics and provenance, and the
weights file is checked against the SHA-256 recorded in the JSON.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from modelsphere.core.errors import ModelSphereError
from modelsphere.core.fileio import (
    atomic_path,
    atomic_write_json,
    read_json,
    sha256_file,
)
from modelsphere.core.runs import META_FILE, WEIGHTS_FILE
from modelsphere.data.schema import Schema
from modelsphere.models.registry import build_model, inference_form
from modelsphere.models.spec import ModelSpec

log = logging.getLogger(__name__)

ARTIFACT_FORMAT = "modelsphere-artifact"
ARTIFACT_VERSION = 1


@dataclass
class Artifact:
    run_dir: Path
    spec: ModelSpec
    feature_state: Dict[str, Any]
    schema: Schema
    config: Dict[str, Any]
    meta: Dict[str, Any]
    state_dict: Dict[str, torch.Tensor]

    @property
    def task(self) -> str:
        return self.schema.task

    def build(self, device: torch.device) -> torch.nn.Module:
        """The model with its trained weights in its inference form
        (`model.inference_form`), on `device`, in eval mode."""
        self.check_shapes()
        model = build_model(self.spec)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ModelSphereError(
                f"{self.run_dir / WEIGHTS_FILE} does not match the model described in "
                f"{META_FILE}: {first}"
            ) from exc
        return inference_form(model.eval()).to(device).eval()

    def check_shapes(self) -> None:
        """The spec's tensors against the weights file's, before anything is
        allocated: the spec is built on PyTorch's meta device (shapes, no memory),
        so an edited spec (say 100,000-wide layers) is refused at no cost, and a
        model that passes needs no more memory than its weights file holds."""
        weights = self.run_dir / WEIGHTS_FILE
        try:
            with torch.device("meta"):
                expected = build_model(self.spec).state_dict()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ModelSphereError(
                f"{self.run_dir / META_FILE}: its model_spec does not build: {exc}"
            ) from exc
        for name, tensor in expected.items():
            if name not in self.state_dict:
                raise ModelSphereError(
                    f"{weights} does not match the model described in {META_FILE}: "
                    f"the spec has a tensor {name!r} the weights file lacks"
                )
            found = tuple(self.state_dict[name].shape)
            if tuple(tensor.shape) != found:
                raise ModelSphereError(
                    f"{weights} does not match the model described in {META_FILE}: "
                    f"{name!r} is {found} in the weights file but "
                    f"{tuple(tensor.shape)} in the spec"
                )
        unexpected = sorted(set(self.state_dict) - set(expected))
        if unexpected:
            raise ModelSphereError(
                f"{weights} does not match the model described in {META_FILE}: "
                f"the weights file has tensors the spec lacks, e.g. {unexpected[0]!r}"
            )


def save_artifact(
    run_dir: str | Path,
    model: torch.nn.Module,
    spec: ModelSpec,
    feature_state: Dict[str, Any],
    schema: Schema,
    config: Dict[str, Any],
    extra: Dict[str, Any],
) -> Path:
    run_dir = Path(run_dir)
    weights = {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in model.state_dict().items()
    }
    with atomic_path(run_dir / WEIGHTS_FILE) as tmp:
        save_file(
            weights,
            str(tmp),
            metadata={
                "format": ARTIFACT_FORMAT,
                "format_version": str(ARTIFACT_VERSION),
            },
        )
    meta = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": sha256_file(run_dir / WEIGHTS_FILE),
        "model_spec": spec.to_dict(),
        "feature_state": feature_state,
        "schema": schema.to_dict(),
        "config": config,
        **extra,
    }
    atomic_write_json(run_dir / META_FILE, meta)
    return run_dir / META_FILE


def load_artifact(run_dir: str | Path) -> Artifact:
    """Read and verify an artifact; every defect is a message, nothing is executed."""
    run_dir = Path(run_dir)
    meta = read_json(run_dir / META_FILE, "model metadata")
    if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
        raise ModelSphereError(
            f"{run_dir / META_FILE} is not a modelsphere model artifact"
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or version > ARTIFACT_VERSION:
        raise ModelSphereError(
            f"{run_dir / META_FILE} has artifact format version {version!r}; this "
            f"modelsphere reads versions up to {ARTIFACT_VERSION}: upgrade modelsphere"
        )
    weights_path = run_dir / meta.get("weights_file", WEIGHTS_FILE)
    if not weights_path.is_file():
        raise ModelSphereError(f"model weights not found: {weights_path}")
    if sha256_file(weights_path) != meta.get("weights_sha256"):
        raise ModelSphereError(
            f"{weights_path} does not match the SHA-256 recorded in {META_FILE}: the "
            "file is corrupted or from another run"
        )
    try:
        state_dict = load_file(str(weights_path))
        spec = ModelSpec(**meta["model_spec"])
        schema = Schema.from_dict(meta["schema"])
        feature_state = meta["feature_state"]
        config = meta["config"]
    except (SafetensorError, KeyError, TypeError, ModelSphereError) as exc:
        raise ModelSphereError(
            f"{run_dir / META_FILE} (with {weights_path.name}) is a damaged model "
            f"artifact: {exc}"
        ) from exc
    return Artifact(run_dir, spec, feature_state, schema, config, meta, state_dict)
