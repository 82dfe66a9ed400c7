"""The model options and the one place that builds them.

- `mlp` (mlp.py): [numeric embeddings, categorical embeddings] -> MLP -> head,
  the numerics piecewise-linear embedded by default;
- `mlp_plr`: the same MLP with periodic embeddings of the numerics;
- `tabm` (tabm.py): TabM, an efficient ensemble of k MLPs.

`model.numeric_embedding` (none | piecewise_linear | periodic) picks how numeric
features enter any of them (numeric_embeddings.py). `spec_from_config` turns a
model config and the fitted features into a `ModelSpec` (spec.py); `build_model`
rebuilds the network from a spec alone.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from torch import nn

from modelsphere.core.errors import ModelSphereError
from modelsphere.features.tensors import SplitTensors
from modelsphere.features.transform import cardinalities, numeric_width
from modelsphere.models.mlp import TabularMLP
from modelsphere.models.numeric_embeddings import FoldedPiecewiseMLP, fit_bin_edges
from modelsphere.models.spec import (
    ModelSpec,
    embedding_dim,
    n_outputs_for,
    piecewise_width,
)
from modelsphere.models.tabm import TabMEnsemble


def spec_from_config(
    model_cfg: Any,
    feature_state: Dict[str, Any],
    task: str,
    train: Optional[SplitTensors] = None,
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
    model_cfg: Any, task: str, train: Optional[SplitTensors] = None, seed: int = 0
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
    model_cfg: Any, task: str, train: Optional[SplitTensors], seed: int
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


def inference_form(model: nn.Module) -> nn.Module:
    """The module predictions run: the model itself, or for an MLP with
    piecewise-linear embeddings the same function with the embeddings folded
    into its first layer (numeric_embeddings.FoldedPiecewiseMLP)."""
    folds = isinstance(model, TabularMLP) and "piecewise" in model.spec.extra
    if not (folds and model.numeric_embeddings is not None):
        return model
    return FoldedPiecewiseMLP(model)


# The architecture named in a spec -> its builder. Every builder takes the spec
# alone, so an artifact's model.json rebuilds any of them.
ARCHITECTURES: Dict[str, Callable[[ModelSpec], nn.Module]] = {
    "mlp": TabularMLP,
    "mlp_plr": TabularMLP,  # the MLP; its spec holds the periodic settings
    "tabm": TabMEnsemble,
}


def build_model(spec: ModelSpec) -> nn.Module:
    if spec.architecture not in ARCHITECTURES:
        raise ModelSphereError(
            f"model architecture {spec.architecture!r} is unknown to this "
            f"modelsphere: it builds {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[spec.architecture](spec)
