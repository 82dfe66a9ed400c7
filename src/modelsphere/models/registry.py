"""The model options and the one place that builds them.

Every module in `models/architectures/` declares its options in `ARCHITECTURES`
(name -> `Architecture`, models/spec.py); this registry finds them all:

- `mlp` (architectures/mlp.py): [numeric embeddings, categorical embeddings] ->
  MLP -> head, the numerics piecewise-linear embedded by default;
- `mlp_plr`: the same MLP with periodic embeddings of the numerics;
- `tabm` (architectures/tabm.py): TabM, an efficient ensemble of k MLPs.

`model.members` averages copies of the `mlp` / `mlp_plr` network (members.py;
by default 8 for a regression target, one otherwise).

`model.numeric_embedding` (none | piecewise_linear | periodic) picks how numeric
features enter any of them (numeric_embeddings.py). `spec_from_config` turns a
model config and the fitted features into a `ModelSpec`; `build_model` rebuilds
the network from a spec alone.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Dict, Optional

from torch import nn

from modelsphere.core.errors import ModelSphereError
from modelsphere.features.tensors import SplitTensors
from modelsphere.features.transform import cardinalities, numeric_width
from modelsphere.models import architectures
from modelsphere.models.numeric_embeddings import numeric_embedding_settings
from modelsphere.models.spec import (
    Architecture,
    ModelSpec,
    embedding_dim,
    n_outputs_for,
)


def _discover() -> Dict[str, Architecture]:
    """Every architecture the modules in models/architectures/ declare."""
    found: Dict[str, Architecture] = {}
    for module_info in sorted(pkgutil.iter_modules(architectures.__path__)):
        name = f"{architectures.__name__}.{module_info.name}"
        declared = importlib.import_module(name).ARCHITECTURES
        clash = set(found) & set(declared)
        if clash:
            raise RuntimeError(f"{name} declares {sorted(clash)} again")
        found.update(declared)
    return found


ARCHITECTURES: Dict[str, Architecture] = _discover()


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ModelSphereError(
            f"model architecture {name!r} is unknown to this modelsphere: it "
            f"builds {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[name]


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
    settings.update(architecture(model_cfg.architecture).settings(model_cfg, task))
    return settings


def inference_form(model: nn.Module) -> nn.Module:
    """The module predictions run: the model itself, or the cheaper form of the
    same function its architecture declares (the MLP folds piecewise-linear
    embeddings into its first layer)."""
    return architecture(model.spec.architecture).inference_form(model)


def build_model(spec: ModelSpec) -> nn.Module:
    return architecture(spec.architecture).build(spec)
