"""`mlp` and `mlp_plr`: [numeric features (embedded or as they are), one embedding
per categorical column] -> MLP -> head. The default embeds the numerics
piecewise-linearly; `mlp_plr` is the same network with periodic embeddings."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modelsphere.core.config import require
from modelsphere.models.layers import (
    categorical_embeddings,
    embed_categorical,
    mlp_backbone,
)
from modelsphere.models.numeric_embeddings import FoldedPiecewiseMLP, numeric_modules
from modelsphere.models.spec import Architecture, ModelSpec


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


def check_mlp_plr(model_cfg: Any, key: str) -> None:
    require(
        model_cfg.numeric_embedding == "periodic",
        f"{key}.architecture=mlp_plr is the MLP with periodic embeddings: "
        f"{key}.numeric_embedding must be periodic, got "
        f"{model_cfg.numeric_embedding} (use model=mlp for the others)",
    )


def folded(model: TabularMLP) -> nn.Module:
    """With piecewise-linear embeddings, the same function with the embeddings
    folded into the first layer (numeric_embeddings.FoldedPiecewiseMLP)."""
    if "piecewise" in model.spec.extra and model.numeric_embeddings is not None:
        return FoldedPiecewiseMLP(model)
    return model


ARCHITECTURES = {
    "mlp": Architecture(build=TabularMLP, inference_form=folded),
    # the same MLP; its spec holds the periodic settings
    "mlp_plr": Architecture(build=TabularMLP, check=check_mlp_plr),
}
