"""The model spec: a whole architecture as plain data.

A `ModelSpec` is saved as JSON in the artifact (`model.json`), so a saved model is
rebuilt from its spec without executing code. An `Architecture` is what one
module in `models/architectures/` declares to the registry. The sizing rules
every architecture shares live here too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List

from torch import nn

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


def piecewise_width(piecewise: Dict[str, Any], n_numeric: int) -> int:
    """Each numeric column's embedding width: `d_embedding`, shrunk on wide tables
    so that all of them together stay within `max_numeric_width` (the first
    layer's input, and so the model's compute, grows with their sum)."""
    share = piecewise["max_numeric_width"] // n_numeric
    return int(max(1, min(piecewise["d_embedding"], share)))


def no_settings(model_cfg: Any, task: str) -> Dict[str, Any]:
    return {}


def no_checks(model_cfg: Any, key: str) -> None:
    return None


def as_trained(model: nn.Module) -> nn.Module:
    return model


@dataclass(frozen=True)
class Architecture:
    """A model option, as its module in `models/architectures/` declares it.

    - `build(spec)`: the network, from the spec alone (so a saved model rebuilds);
    - `settings(model_cfg, task)`: what it needs in `spec.extra` beyond the MLP
      fields and the numeric embedding, as plain data;
    - `check(model_cfg, key)`: the config rules it adds, raising
      `ModelSphereError` with a message that names the field (`key` is the
      config path of the model section, `model`);
    - `inference_form(model)`: the module predictions run, the trained one or
      a cheaper form of the same function.
    """

    build: Callable[[ModelSpec], nn.Module]
    settings: Callable[[Any, str], Dict[str, Any]] = no_settings
    check: Callable[[Any, str], None] = no_checks
    inference_form: Callable[[nn.Module], nn.Module] = as_trained
