"""TabularMLP shapes and layers; spec_from_config."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from modelsphere.models.architectures.mlp import TabularMLP
from modelsphere.models.config import ModelConfig
from modelsphere.models.layers import Dropout
from modelsphere.models.registry import build_model, spec_from_config
from modelsphere.models.spec import ModelSpec, embedding_dim, n_outputs_for

ROWS = 7


def make_spec(**overrides) -> ModelSpec:
    values = dict(
        n_numeric=3,
        cardinalities=[5, 4],
        embedding_dims=[3, 2],
        hidden_sizes=[8, 6],
        n_outputs=1,
    )
    values.update(overrides)
    return ModelSpec(**values)


def inputs(spec: ModelSpec, rows: int = ROWS, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    numeric = torch.randn(rows, spec.n_numeric, generator=gen)
    columns = [
        torch.randint(0, card, (rows,), generator=gen) for card in spec.cardinalities
    ]
    categorical = (
        torch.stack(columns, dim=1)
        if columns
        else torch.zeros((rows, 0), dtype=torch.long)
    )
    return numeric, categorical


@pytest.mark.parametrize(
    "task, n_classes, width",
    [("binary", 2, 1), ("multiclass", 4, 4), ("regression", 0, 1)],
)
@pytest.mark.parametrize("with_categorical", [True, False])
def test_output_shape_per_task(task, n_classes, width, with_categorical):
    assert n_outputs_for(task, n_classes) == width
    extra = {} if with_categorical else {"cardinalities": [], "embedding_dims": []}
    spec = make_spec(n_outputs=width, **extra)
    model = build_model(spec)
    out = model(*inputs(spec))
    assert out.shape == (ROWS, width)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_no_numeric_columns():
    spec = make_spec(n_numeric=0)
    model = TabularMLP(spec)
    numeric, categorical = inputs(spec)
    assert numeric.shape == (ROWS, 0)
    out = model(numeric, categorical)
    assert out.shape == (ROWS, 1)
    assert model.backbone[0].in_features == 5  # the two embeddings only


def test_input_width_is_numeric_plus_embeddings():
    model = TabularMLP(make_spec())
    first = model.backbone[0]
    assert isinstance(first, nn.Linear)
    assert (first.in_features, first.out_features) == (3 + 3 + 2, 8)
    assert (model.head.in_features, model.head.out_features) == (6, 1)


@pytest.mark.parametrize(
    "normalization, layer",
    [("none", nn.Identity), ("batchnorm", nn.BatchNorm1d), ("layernorm", nn.LayerNorm)],
)
@pytest.mark.parametrize(
    "activation, act_layer", [("relu", nn.ReLU), ("gelu", nn.GELU), ("silu", nn.SiLU)]
)
def test_normalization_and_activation_layers(
    normalization, layer, activation, act_layer
):
    spec = make_spec(
        normalization=normalization, activation=activation, dropout=0.25, n_outputs=3
    )
    model = TabularMLP(spec)
    kinds = [type(module) for module in model.backbone]
    assert kinds == [nn.Linear, layer, act_layer, Dropout] * 2
    assert model.backbone[3].p == 0.25
    model.train()
    assert model(*inputs(spec)).shape == (ROWS, 3)
    model.eval()
    first, second = model(*inputs(spec)), model(*inputs(spec))
    assert torch.equal(first, second)  # eval: dropout and batch stats frozen


def test_reserved_embedding_rows_start_at_zero():
    torch.manual_seed(0)
    model = TabularMLP(make_spec(cardinalities=[6, 3], embedding_dims=[4, 2]))
    for table in model.embeddings:
        assert torch.count_nonzero(table.weight[:2]) == 0
        assert torch.count_nonzero(table.weight[2:]) == table.weight[2:].numel()


def test_missing_and_unseen_codes_contribute_the_same_embedding():
    spec = make_spec()
    model = TabularMLP(spec).eval()
    numeric = torch.randn(1, spec.n_numeric)
    missing = model(numeric, torch.tensor([[0, 0]]))
    unseen = model(numeric, torch.tensor([[1, 1]]))
    assert torch.equal(missing, unseen)


def test_spec_round_trips_through_dict():
    spec = make_spec(activation="gelu", normalization="layernorm", dropout=0.1)
    again = ModelSpec(**spec.to_dict())
    assert again == spec
    first = TabularMLP(spec)
    second = TabularMLP(again)
    second.load_state_dict(first.state_dict(), strict=True)


@pytest.mark.parametrize(
    "cardinality, expected", [(2, 2), (3, 3), (4, 3), (12, 6), (100, 21), (10**5, 32)]
)
def test_embedding_dim_rule(cardinality, expected):
    assert embedding_dim(cardinality, None, 32) == expected
    assert embedding_dim(cardinality, None, 32) == min(
        32, max(1, round(1.6 * cardinality**0.56))
    )
    assert embedding_dim(cardinality, 5, 32) == 5
    assert embedding_dim(cardinality, None, 2) == 2


def feature_state(task="multiclass", classes=("a", "b", "c")):
    return {
        "numeric": [
            {"name": "x", "missing_indicator": True},
            {"name": "z", "missing_indicator": False},
        ],
        "categorical": [
            {"name": "c", "levels": ["p", "q"]},
            {"name": "d", "levels": [f"l{i}" for i in range(98)]},
        ],
        "target": (
            {"name": "y", "task": task, "classes": list(classes)}
            if task != "regression"
            else {"name": "y", "task": task, "mean": 0.0, "std": 1.0}
        ),
    }


def test_spec_from_config():
    cfg = OmegaConf.structured(
        ModelConfig(
            name="m",
            hidden_sizes=[16, 8],
            activation="silu",
            dropout=0.2,
            numeric_embedding="none",
        )
    )
    spec = spec_from_config(cfg, feature_state(), "multiclass")
    assert spec.n_numeric == 3  # x, x missing indicator, z
    assert spec.cardinalities == [4, 100]
    assert spec.embedding_dims == [3, 21]
    assert spec.hidden_sizes == [16, 8]
    assert spec.n_outputs == 3
    assert (spec.activation, spec.dropout, spec.name) == ("silu", 0.2, "m")
    model = build_model(spec)
    out = model(torch.randn(5, 3), torch.tensor([[0, 99]] * 5))
    assert out.shape == (5, 3)


def test_spec_from_config_fixed_and_capped_embedding_dims():
    fixed = OmegaConf.structured(ModelConfig(embedding_dim=7, numeric_embedding="none"))
    assert spec_from_config(fixed, feature_state(), "multiclass").embedding_dims == [
        7,
        7,
    ]
    capped = OmegaConf.structured(
        ModelConfig(max_embedding_dim=4, numeric_embedding="none")
    )
    assert spec_from_config(capped, feature_state(), "multiclass").embedding_dims == [
        3,
        4,
    ]


@pytest.mark.parametrize(
    "task, classes, n_outputs",
    [("binary", ("no", "yes"), 1), ("regression", (), 1), ("multiclass", "abcd", 4)],
)
def test_spec_from_config_outputs_per_task(task, classes, n_outputs):
    cfg = OmegaConf.structured(ModelConfig(numeric_embedding="none"))
    spec = spec_from_config(cfg, feature_state(task, classes), task)
    assert spec.n_outputs == n_outputs


def test_dropout_is_inverted_dropout():
    torch.manual_seed(0)
    layer = Dropout(0.25)
    x = torch.ones(200, 500)
    out = layer.train()(x)
    kept = out != 0
    # Kept values are scaled by 1/(1-p); about 75% are kept; the mean is preserved.
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.75))
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    assert abs(out.mean().item() - 1.0) < 0.02
    assert torch.equal(layer.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    # Gradients flow through kept units only, with the same scale.
    x = torch.ones(4, 1000, requires_grad=True)
    out = layer.train()(x)
    out.sum().backward()
    assert torch.allclose(x.grad, (out != 0).float() / 0.75)
