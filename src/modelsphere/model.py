"""The model options and the one place that builds them.

- `mlp` (TabularMLP, here): [numeric embeddings, categorical embeddings] -> MLP
  -> head, the numerics piecewise-linear embedded by default;
- `mlp_plr`: the same MLP with periodic embeddings of the numerics;
- `tabm` (model_tabm.py): TabM, an efficient ensemble of k MLPs.

`model.numeric_embedding` (none | piecewise_linear | periodic) picks how numeric
features enter any of them (numeric_embeddings.py).

The whole architecture is described by a `ModelSpec` (plain data, saved as JSON in
the artifact), so a saved model is rebuilt from its spec without executing code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

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

if TYPE_CHECKING:  # pragma: no cover
    from .epochs import SplitTensors

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
    model_cfg: Any,
    feature_state: Dict[str, Any],
    task: str,
    train: Optional["SplitTensors"] = None,
    seed: int = 0,
) -> ModelSpec:
    """The spec for `model_cfg` on these features; `train` (the transformed
    training split) is needed by architectures that fit data-dependent settings
    (the piecewise-linear bin edges), with `seed` for any subsampling."""
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
        extra=architecture_settings(model_cfg, task, train, seed),
        architecture=model_cfg.architecture,
    )


def architecture_settings(
    model_cfg: Any, task: str, train: Optional["SplitTensors"] = None, seed: int = 0
) -> Dict[str, Any]:
    """What an architecture needs beyond the MLP fields, as plain data."""
    settings = numeric_embedding_settings(model_cfg, task, train, seed)
    if model_cfg.architecture == "tabm":
        ensemble = model_cfg.ensemble
        settings["ensemble"] = {
            "k": ensemble.k,
            "arch_type": ensemble.arch_type,
            "task": task,
        }
    return settings


def numeric_embedding_settings(
    model_cfg: Any, task: str, train: Optional["SplitTensors"], seed: int
) -> Dict[str, Any]:
    """{"periodic": settings}, {"piecewise": settings with the bin edges fitted
    on `train`}, or {} for numerics that go in as they are."""
    kind = model_cfg.numeric_embedding
    if kind == "periodic":
        periodic = model_cfg.periodic
        keys = ("d_embedding", "n_frequencies", "frequency_init_scale", "lite")
        return {"periodic": {key: periodic[key] for key in keys}}
    if kind != "piecewise_linear":
        return {}
    if train is None:
        raise ModelSphereError(
            "model.numeric_embedding=piecewise_linear fits its bin edges on the "
            "training split: spec_from_config needs train="
        )
    # Imported on use, as in numeric_modules below.
    from .numeric_embeddings import fit_bin_edges

    piecewise = dict(model_cfg.piecewise)
    n_numeric = train.numeric.shape[1]
    if not n_numeric:
        return {"piecewise": {"d_embedding": piecewise["d_embedding"], "edges": []}}
    edges = fit_bin_edges(train.numeric, train.target, task, piecewise, seed)
    return {
        "piecewise": {
            "d_embedding": piecewise_width(piecewise, n_numeric),
            "edges": edges,
        }
    }


def piecewise_width(piecewise: Dict[str, Any], n_numeric: int) -> int:
    """Each numeric column's embedding width: `d_embedding`, shrunk on wide tables
    so that all of them together stay within `max_numeric_width` (the first
    layer's input, and so the model's compute, grows with their sum)."""
    share = piecewise["max_numeric_width"] // n_numeric
    return int(max(1, min(piecewise["d_embedding"], share)))


def numeric_modules(spec: ModelSpec) -> Tuple[Optional[nn.Module], int]:
    """The spec's numeric embedding (None if the numerics go in as they are) and
    the width it hands on. rtdl_num_embeddings is imported only when a spec asks
    for an embedding (numeric_embeddings.py keeps it from importing scikit-learn)."""
    embedded = "piecewise" in spec.extra or "periodic" in spec.extra
    if not (spec.n_numeric and embedded):
        return None, spec.n_numeric
    from .numeric_embeddings import numeric_embedding

    return numeric_embedding(spec)


class TabularMLP(nn.Module):
    """An MLP over [numeric features (embedded or as they are), one embedding per
    categorical column]."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.numeric_embeddings, numeric_width = numeric_modules(spec)
        self.embeddings = categorical_embeddings(
            spec.cardinalities, spec.embedding_dims
        )
        self.backbone, width = mlp_backbone(
            numeric_width + sum(spec.embedding_dims),
            spec.hidden_sizes,
            spec.normalization,
            spec.activation,
            spec.dropout,
        )
        self.head = nn.Linear(width, spec.n_outputs)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        if self.numeric_embeddings is not None:
            numeric = self.numeric_embeddings(numeric).flatten(1)
        parts = [numeric] + embed_categorical(self.embeddings, categorical)
        x = torch.cat(parts, dim=1) if len(parts) > 1 else numeric
        return self.head(self.backbone(x))


def inference_form(model: nn.Module) -> nn.Module:
    """The module predictions run: the model itself, or for an MLP with
    piecewise-linear embeddings the same function with the embeddings folded
    into its first layer (numeric_embeddings.FoldedPiecewiseMLP)."""
    folds = isinstance(model, TabularMLP) and "piecewise" in model.spec.extra
    if not (folds and model.numeric_embeddings is not None):
        return model
    from .numeric_embeddings import FoldedPiecewiseMLP

    return FoldedPiecewiseMLP(model)


def _tabm(spec: ModelSpec) -> nn.Module:
    from .model_tabm import TabMEnsemble

    return TabMEnsemble(spec)


# The architecture named in a spec -> its builder. Every builder takes the spec
# alone, so an artifact's model.json rebuilds any of them.
ARCHITECTURES: Dict[str, Callable[[ModelSpec], nn.Module]] = {
    "mlp": TabularMLP,
    "mlp_plr": TabularMLP,  # the MLP; its spec holds the periodic settings
    "tabm": _tabm,
}


def build_model(spec: ModelSpec) -> nn.Module:
    if spec.architecture not in ARCHITECTURES:
        raise ModelSphereError(
            f"model architecture {spec.architecture!r} is unknown to this "
            f"modelsphere: it builds {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[spec.architecture](spec)
