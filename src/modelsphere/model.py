"""The model options and the one place that builds them.

- `mlp` (TabularMLP, here): categorical embeddings + numeric features -> MLP -> head;
- `mlp_plr` (model_plr.py): the same MLP with periodic embeddings of the numerics;
- `tabm` (model_tabm.py): TabM, an efficient ensemble of k MLPs.

The whole architecture is described by a `ModelSpec` (plain data, saved as JSON in
the artifact), so a saved model is rebuilt from its spec without executing code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List

import torch
from torch import nn

from .errors import ModelSphereError
from .features import cardinalities, numeric_width
from .layers import (  # noqa: F401  (Dropout: re-exported for callers)
    ACTIVATIONS,
    Dropout,
    categorical_embeddings,
    embed_categorical,
    mlp_backbone,
)

EMBEDDING_SIZE_FACTOR, EMBEDDING_SIZE_POWER = 1.6, 0.56  # fastai's rule of thumb


@dataclass
class ModelSpec:
    n_numeric: int
    cardinalities: List[int]
    embedding_dims: List[int]
    hidden_sizes: List[int]
    n_outputs: int
    activation: str = "relu"
    dropout: float = 0.0
    normalization: str = "none"
    name: str = "mlp"
    extra: Dict[str, Any] = field(default_factory=dict)  # architecture settings
    architecture: str = "mlp"  # a key of ARCHITECTURES

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def embedding_dim(cardinality: int, fixed: int | None, maximum: int) -> int:
    if fixed is not None:
        return int(fixed)
    return int(
        min(
            maximum,
            max(1, round(EMBEDDING_SIZE_FACTOR * cardinality**EMBEDDING_SIZE_POWER)),
        )
    )


def n_outputs_for(task: str, n_classes: int) -> int:
    """Binary: one logit; multiclass: one per class; regression: one value."""
    return n_classes if task == "multiclass" else 1


def spec_from_config(
    model_cfg: Any, feature_state: Dict[str, Any], task: str
) -> ModelSpec:
    cards = cardinalities(feature_state)
    classes = feature_state["target"].get("classes") or []
    return ModelSpec(
        n_numeric=numeric_width(feature_state),
        cardinalities=cards,
        embedding_dims=[
            embedding_dim(c, model_cfg.embedding_dim, model_cfg.max_embedding_dim)
            for c in cards
        ],
        hidden_sizes=list(model_cfg.hidden_sizes),
        n_outputs=n_outputs_for(task, len(classes)),
        activation=model_cfg.activation,
        dropout=float(model_cfg.dropout),
        normalization=model_cfg.normalization,
        name=model_cfg.name,
        extra=architecture_settings(model_cfg, task),
        architecture=model_cfg.architecture,
    )


def architecture_settings(model_cfg: Any, task: str) -> Dict[str, Any]:
    """What an architecture needs beyond the MLP fields, as plain data."""
    periodic = {
        key: model_cfg.periodic[key]
        for key in ("d_embedding", "n_frequencies", "frequency_init_scale", "lite")
    }
    if model_cfg.architecture == "mlp_plr":
        return {"periodic": periodic}
    if model_cfg.architecture == "tabm":
        ensemble = model_cfg.ensemble
        settings: Dict[str, Any] = {
            "ensemble": {"k": ensemble.k, "arch_type": ensemble.arch_type, "task": task}
        }
        if ensemble.numeric_embeddings == "periodic":
            settings["periodic"] = periodic
        return settings
    return {}


class TabularMLP(nn.Module):
    """An MLP over [numeric features, one embedding per categorical column]."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.embeddings = categorical_embeddings(
            spec.cardinalities, spec.embedding_dims
        )
        self.backbone, width = mlp_backbone(
            spec.n_numeric + sum(spec.embedding_dims),
            spec.hidden_sizes,
            spec.normalization,
            spec.activation,
            spec.dropout,
        )
        self.head = nn.Linear(width, spec.n_outputs)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        parts = [numeric] + embed_categorical(self.embeddings, categorical)
        x = torch.cat(parts, dim=1) if len(parts) > 1 else numeric
        return self.head(self.backbone(x))


def _periodic_mlp(spec: ModelSpec) -> nn.Module:
    # Imported on use: rtdl_num_embeddings imports scikit-learn when it is
    # installed (about 1 s), which every CLI and worker would pay otherwise.
    from .model_plr import PeriodicMLP

    return PeriodicMLP(spec)


def _tabm(spec: ModelSpec) -> nn.Module:
    from .model_tabm import TabMEnsemble

    return TabMEnsemble(spec)


# The architecture named in a spec -> its builder. Every builder takes the spec
# alone, so an artifact's model.json rebuilds any of them.
ARCHITECTURES: Dict[str, Callable[[ModelSpec], nn.Module]] = {
    "mlp": TabularMLP,
    "mlp_plr": _periodic_mlp,
    "tabm": _tabm,
}


def build_model(spec: ModelSpec) -> nn.Module:
    if spec.architecture not in ARCHITECTURES:
        raise ModelSphereError(
            f"model architecture {spec.architecture!r} is unknown to this "
            f"modelsphere: it builds {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[spec.architecture](spec)
