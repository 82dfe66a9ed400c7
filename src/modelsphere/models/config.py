"""The `model` settings: which architecture, its width and depth, how numeric and
categorical features enter it. The choices come from the modules that implement
them: architectures from the registry, layers from layers.py, embeddings from
numeric_embeddings.py, TabM's ensemble from architectures/tabm.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import DictConfig

from modelsphere.core.config import require, setting, validate
from modelsphere.features.config import FeatureConfig
from modelsphere.models import numeric_embeddings
from modelsphere.models.architectures.tabm import EnsembleConfig
from modelsphere.models.layers import ACTIVATIONS, NORMALIZATIONS
from modelsphere.models.members import MEMBER_SAMPLING
from modelsphere.models.numeric_embeddings import PeriodicConfig, PiecewiseConfig
from modelsphere.models.registry import ARCHITECTURES, architecture


@dataclass
class ModelConfig:
    name: str = "mlp"  # names the preset in run dirs and reports
    architecture: str = setting("mlp", choices=tuple(ARCHITECTURES))
    hidden_sizes: List[int] = field(default_factory=lambda: [256, 256])
    activation: str = setting("relu", choices=tuple(ACTIVATIONS))
    dropout: float = setting(0.1, ge=0, lt=1)
    normalization: str = setting("none", choices=NORMALIZATIONS)
    # null: per column, min(max_embedding_dim, 1.6 * levels^0.56)
    embedding_dim: Optional[int] = setting(None, ge=1)
    max_embedding_dim: int = setting(32, ge=1)
    numeric_embedding: str = setting(
        "piecewise_linear", choices=numeric_embeddings.KINDS
    )
    periodic: PeriodicConfig = field(default_factory=PeriodicConfig)
    piecewise: PiecewiseConfig = field(default_factory=PiecewiseConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    # copies of the network trained together, their outputs averaged
    # (models/members.py); null: 8 for a regression target, 1 otherwise
    members: Optional[int] = setting(None, ge=1)
    # how each member weighs the rows of a batch in training: each row once
    # (shared) or a Poisson(1) count per row and member (online_bagging)
    member_sampling: str = setting("shared", choices=MEMBER_SAMPLING)
    features: FeatureConfig = field(default_factory=FeatureConfig)

    @staticmethod
    def check(node: DictConfig, key: str) -> None:
        sizes = list(node.hidden_sizes)
        require(len(sizes) >= 1, f"{key}.hidden_sizes needs >= 1 layer")
        require(
            all(size >= 1 for size in sizes),
            f"{key}.hidden_sizes must be positive, got {sizes}",
        )
        architecture(node.architecture).check(node, key)


def validate_model(model: DictConfig) -> None:
    """The `model` section's checks alone."""
    validate(model, ModelConfig, "model")
