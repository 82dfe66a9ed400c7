"""MLP-PLR: every numeric input goes through periodic embeddings (Gorishniy et al.,
"On Embeddings for Numerical Features in Tabular Deep Learning", 2022), taken from
the maintained `rtdl_num_embeddings` package, before the same MLP as `mlp`.

A numeric value x becomes ReLU(Linear([cos(2*pi*c*x), sin(2*pi*c*x)])) with
trained frequencies c (one set per column), which lets an MLP fit the sharp,
irregular functions of single features that trees fit easily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional

import torch
from rtdl_num_embeddings import PeriodicEmbeddings
from torch import nn

from .layers import categorical_embeddings, embed_categorical, mlp_backbone

if TYPE_CHECKING:  # pragma: no cover
    from .model import ModelSpec


def periodic_embeddings(
    n_numeric: int, settings: Dict[str, Any]
) -> Optional[PeriodicEmbeddings]:
    """The embedding module for `n_numeric` columns (None when there are none)."""
    if n_numeric == 0:
        return None
    return PeriodicEmbeddings(
        n_numeric,
        int(settings["d_embedding"]),
        n_frequencies=int(settings["n_frequencies"]),
        frequency_init_scale=float(settings["frequency_init_scale"]),
        lite=bool(settings["lite"]),
    )


class PeriodicMLP(nn.Module):
    """An MLP over [periodic embeddings of the numerics, categorical embeddings]."""

    def __init__(self, spec: "ModelSpec"):
        super().__init__()
        self.spec = spec
        settings = spec.extra["periodic"]
        self.numeric_embeddings = periodic_embeddings(spec.n_numeric, settings)
        self.embeddings = categorical_embeddings(
            spec.cardinalities, spec.embedding_dims
        )
        self.backbone, width = mlp_backbone(
            spec.n_numeric * int(settings["d_embedding"]) + sum(spec.embedding_dims),
            spec.hidden_sizes,
            spec.normalization,
            spec.activation,
            spec.dropout,
        )
        self.head = nn.Linear(width, spec.n_outputs)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        parts = embed_categorical(self.embeddings, categorical)
        if self.numeric_embeddings is not None:
            parts.insert(0, self.numeric_embeddings(numeric).flatten(1))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return self.head(self.backbone(x))
