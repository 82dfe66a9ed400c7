"""`mlp` and `mlp_plr`: [numeric features (embedded or as they are), one embedding
per categorical column] -> MLP -> head. The default embeds the numerics
piecewise-linearly; `mlp_plr` is the same network with periodic embeddings."""

from __future__ import annotations

from typing import Any, Dict

import torch
from omegaconf import OmegaConf
from torch import nn

from modelsphere.core.config import require
from modelsphere.models.layers import (
    categorical_embeddings,
    embed_categorical,
    mlp_backbone,
)
from modelsphere.models.members import (
    Members,
    MeanOfMembers,
    member_count,
    SAMPLING_BEFORE_THE_SETTING,
    member_settings,
)
from modelsphere.models.numeric_embeddings import (
    fold_embedding,
    fold_tables,
    numeric_modules,
    piecewise_form,
)
from modelsphere.models.piecewise_first_layer import PiecewiseFirstLayer
from modelsphere.models.piecewise_tables import PiecewiseLinearTables
from modelsphere.models.spec import Architecture, ModelSpec


class TabularMLP(nn.Module):
    """An MLP over [numeric features (embedded or as they are), one embedding per
    categorical column]. With piecewise-linear numerics in the `embedding` form
    (the default), the first Linear over the embeddings is computed without
    them (PiecewiseFirstLayer: same weights, same function, a fraction of the
    arithmetic); in the `tables` form, the first hidden layer is their bins'
    rows (PiecewiseLinearTables) plus a Linear of the categorical embeddings."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.tables = None
        self.categorical_first = None
        self.first_layer = None
        categorical_width = sum(spec.embedding_dims)
        # The seeded initial weights, and so every trained model, depend on the
        # order the layers are built in: each form keeps the order its results
        # (benchmarks/results/quality*.md) were measured with.
        if spec.n_numeric and piecewise_form(spec) == "tables":
            self.embeddings = categorical_embeddings(
                spec.cardinalities, spec.embedding_dims
            )
            self.numeric_embeddings = None
            first = spec.hidden_sizes[0]
            self.tables = PiecewiseLinearTables(spec.extra["piecewise"]["edges"], first)
            if categorical_width:
                self.categorical_first = nn.Linear(categorical_width, first, bias=False)
            width_in, first_linear = first, False
        else:
            self.numeric_embeddings, numeric_width = numeric_modules(spec)
            self.embeddings = categorical_embeddings(
                spec.cardinalities, spec.embedding_dims
            )
            width_in, first_linear = numeric_width + categorical_width, True
            if "piecewise" in spec.extra and self.numeric_embeddings is not None:
                self.first_layer = PiecewiseFirstLayer(
                    spec.extra["piecewise"]["edges"], self.numeric_embeddings
                )
        self.backbone, width = mlp_backbone(
            width_in,
            spec.hidden_sizes,
            spec.normalization,
            spec.activation,
            spec.dropout,
            first_linear=first_linear,
        )
        self.head = nn.Linear(width, spec.n_outputs)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        categorical_parts = embed_categorical(self.embeddings, categorical)
        if self.tables is not None:
            x = self.tables(numeric)
            if self.categorical_first is not None:
                x = x + self.categorical_first(torch.cat(categorical_parts, dim=1))
            return self.head(self.backbone(x))
        if self.first_layer is not None:
            first, *rest = self.backbone
            x = self.first_layer(
                numeric, categorical_parts, self.numeric_embeddings, first
            )
            for layer in rest:
                x = layer(x)
            return self.head(x)
        if self.numeric_embeddings is not None:
            numeric = self.numeric_embeddings(numeric).flatten(1)
        parts = [numeric] + categorical_parts
        x = torch.cat(parts, dim=1) if len(parts) > 1 else numeric
        return self.head(self.backbone(x))


def check_mlp_plr(model_cfg: Any, key: str) -> None:
    require(
        model_cfg.numeric_embedding == "periodic",
        f"{key}.architecture=mlp_plr is the MLP with periodic embeddings: "
        f"{key}.numeric_embedding must be periodic, got "
        f"{model_cfg.numeric_embedding} (use model=mlp for the others)",
    )


def build_mlp(spec: ModelSpec) -> nn.Module:
    """One TabularMLP, or `model.members` of them averaged (models/members.py)."""
    if member_count(spec) > 1:
        return Members(spec, TabularMLP)
    return TabularMLP(spec)


def folded(model: nn.Module) -> nn.Module:
    """With piecewise-linear numerics, the same function as one encoding and one
    first layer (numeric_embeddings.FoldedPiecewiseMLP), member by member."""
    if isinstance(model, Members):
        return MeanOfMembers(model, folded)
    if model.tables is not None:
        return fold_tables(model)
    if "piecewise" in model.spec.extra and model.numeric_embeddings is not None:
        return fold_embedding(model)
    return model


def mlp_settings(model_cfg: Any, task: str) -> Dict[str, Any]:
    # a config saved before `model.member_sampling` existed trained with shared
    sampling = OmegaConf.select(
        model_cfg, "member_sampling", default=SAMPLING_BEFORE_THE_SETTING
    )
    return member_settings(model_cfg.members, task, sampling)


ARCHITECTURES = {
    "mlp": Architecture(build=build_mlp, settings=mlp_settings, inference_form=folded),
    # the same MLP; its spec holds the periodic settings
    "mlp_plr": Architecture(
        build=build_mlp,
        settings=mlp_settings,
        check=check_mlp_plr,
        inference_form=folded,
    ),
}
