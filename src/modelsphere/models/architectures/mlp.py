"""`mlp` and `mlp_plr`: [numeric features (embedded or as they are), one embedding
per categorical column] -> MLP -> head. The default embeds the numerics
piecewise-linearly; `mlp_plr` is the same network with periodic embeddings."""

from __future__ import annotations

import torch
from torch import nn

from modelsphere.models.layers import (
    categorical_embeddings,
    embed_categorical,
    mlp_backbone,
)
from modelsphere.models.numeric_embeddings import numeric_modules
from modelsphere.models.spec import ModelSpec


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
