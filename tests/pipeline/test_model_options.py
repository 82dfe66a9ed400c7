"""The model options (mlp, mlp_plr, tabm) and the numeric embeddings: each trains,
saves, reloads, predicts and exports to ONNX through the same artifact and
predictor code."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from helpers import compose_config, csv_overrides, make_table, train_tiny
from modelsphere.core.devices import select_device
from modelsphere.core.errors import ModelSphereError
from modelsphere.features.tensors import SplitTensors
from modelsphere.inference import engines
from modelsphere.inference.predictor import Predictor
from modelsphere.models import config as config_module
from modelsphere.models.artifact import load_artifact
from modelsphere.models.members import (
    MEMBERS_FOR_REGRESSION,
    Members,
    mean_of_members,
    member_count,
)
from modelsphere.models.config import ModelConfig, validate_model
from modelsphere.models import registry
from modelsphere.models.registry import ARCHITECTURES, build_model, spec_from_config
from modelsphere.models.spec import ModelSpec
from modelsphere.training.epochs import batch_loss
from modelsphere.training.optimization import make_loss

OPTIONS = ("mlp", "mlp_plr", "tabm")
# Small versions of each option, so a test trains in a second.
SMALL = {
    "mlp": ["model=mlp_small"],
    "mlp_plr": [
        "model=mlp_plr",
        "model.hidden_sizes=[16]",
        "model.periodic.d_embedding=4",
        "model.periodic.n_frequencies=4",
    ],
    "tabm": ["model=tabm", "model.hidden_sizes=[16,16]", "model.ensemble.k=4"],
    # Any architecture takes any numeric embedding (TabM's best variant, TabM+PLE).
    "tabm+piecewise_linear": [
        "model=tabm",
        "model.hidden_sizes=[16,16]",
        "model.ensemble.k=4",
        "model.numeric_embedding=piecewise_linear",
        "model.piecewise.n_bins=8",
    ],
}
CPU = select_device("cpu", False, "auto")


EMBEDDING = {"mlp": "piecewise_linear", "mlp_plr": "periodic", "tabm": "none"}


def tiny_spec(
    architecture: str,
    task: str = "binary",
    n_numeric: int = 3,
    cards=None,
    numeric_embedding=None,
    members=None,
    member_sampling=None,
    dropout=0.1,
):
    cfg = OmegaConf.structured(
        ModelConfig(
            architecture=architecture,
            hidden_sizes=[8, 8],
            numeric_embedding=numeric_embedding or EMBEDDING[architecture],
            members=members,
            dropout=dropout,
        )
    )
    if member_sampling is not None:
        cfg.member_sampling = member_sampling
    cfg.ensemble.k, cfg.periodic.n_frequencies, cfg.piecewise.n_bins = 3, 4, 4
    cards = [5, 4] if cards is None else cards
    classes = ["a", "b", "c"] if task == "multiclass" else ["no", "yes"]
    state = {
        "numeric": [{"name": f"x{i}", "missing_indicator": False} for i in range(3)][
            :n_numeric
        ],
        "categorical": [
            {"name": f"c{i}", "levels": [f"l{j}" for j in range(card - 2)]}
            for i, card in enumerate(cards)
        ],
        "target": {"name": "y", "task": task, "classes": classes},
    }
    gen = torch.Generator().manual_seed(5)
    train = SplitTensors(
        numeric=torch.randn(20, n_numeric, generator=gen),
        categorical=torch.zeros(20, len(cards), dtype=torch.long),
        target=torch.randint(0, len(classes), (20,), generator=gen),
    )
    return spec_from_config(cfg, state, task, train=train)


def inputs(spec: ModelSpec, rows: int = 6):
    gen = torch.Generator().manual_seed(0)
    numeric = torch.randn(rows, spec.n_numeric, generator=gen)
    categorical = torch.stack(
        [torch.randint(0, c, (rows,), generator=gen) for c in spec.cardinalities]
        or [torch.zeros(rows, dtype=torch.long)],
        dim=1,
    )[:, : len(spec.cardinalities)]
    return numeric, categorical


def test_config_names_every_architecture():
    assert set(config_module.ARCHITECTURES) == set(ARCHITECTURES)


@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_composes_and_builds(option):
    cfg = compose_config([f"model={option}"])
    validate_model(cfg.model)
    assert cfg.model.architecture == option
    spec = tiny_spec(option)
    assert spec.architecture == option
    model = build_model(spec).eval()
    assert model(*inputs(spec)).shape == (6, 1)


@pytest.mark.parametrize(
    "option, numeric_embedding",
    [
        ("mlp", "piecewise_linear"),
        ("mlp", "none"),
        ("mlp_plr", "periodic"),
        ("tabm", "none"),
        ("tabm", "piecewise_linear"),
        ("tabm", "periodic"),
    ],
)
@pytest.mark.parametrize("n_numeric, cards", [(0, [5, 4]), (3, [])])
def test_options_take_only_numeric_or_only_categorical(
    option, numeric_embedding, n_numeric, cards
):
    spec = tiny_spec(option, "multiclass", n_numeric, cards, numeric_embedding)
    out = build_model(spec).eval()(*inputs(spec))
    assert out.shape == (6, 3) and torch.isfinite(out).all()


def test_unknown_architecture_is_a_clear_error():
    spec = tiny_spec("mlp")
    spec.architecture = "gbdt"
    with pytest.raises(ModelSphereError, match="gbdt.*mlp, mlp_plr, tabm"):
        build_model(spec)


def test_spec_without_architecture_field_loads_as_mlp():
    """Artifacts written before the field existed rebuild as the MLP."""
    data = tiny_spec("mlp").to_dict()
    del data["architecture"]
    assert ModelSpec(**data).architecture == "mlp"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model=tabm", "model.hidden_sizes=[32,16]"], "equal model.hidden_sizes"),
        (["model=tabm", "model.normalization=layernorm"], "normalization=none"),
        (["model=tabm", "model.ensemble.k=0"], "ensemble.k"),
        (["model=tabm", "model.ensemble.arch_type=big"], "arch_type"),
        (["model=tabm", "model.members=2"], "is an ensemble already"),
        (["model.members=0"], "model.members must be >= 1"),
        (["model.member_sampling=bootstrap"], "model.member_sampling"),
        (["model=mlp_plr", "model.periodic.frequency_init_scale=0"], "init_scale"),
        (["model=mlp_plr", "model.numeric_embedding=none"], "must be periodic"),
        (["model.numeric_embedding=splines"], "model.numeric_embedding"),
        (["model.piecewise.n_bins=1"], "n_bins must be >= 2"),
        (["model.piecewise.bins=kmeans"], "model.piecewise.bins"),
        (["model.piecewise.d_embedding=0"], "piecewise.d_embedding"),
        (["model.architecture=trees"], "model.architecture"),
    ],
)
def test_invalid_architecture_settings_are_rejected(overrides, message):
    cfg = compose_config(overrides)
    with pytest.raises(ModelSphereError, match=message):
        validate_model(cfg.model)


def test_tabm_trains_k_members_and_predicts_their_mean_probability():
    for task, n_outputs, to_probability in [
        ("binary", 1, torch.sigmoid),
        ("multiclass", 3, lambda x: torch.softmax(x, dim=-1)),
    ]:
        spec = tiny_spec("tabm", task)
        model = build_model(spec)
        numeric, categorical = inputs(spec)
        model.train()
        members = model(numeric, categorical)
        assert members.shape == (6, 3, n_outputs)
        model.eval()
        members = model.tabm(numeric, categorical)
        combined = model(numeric, categorical)
        expected = to_probability(members).mean(dim=1)
        assert torch.allclose(to_probability(combined), expected, atol=1e-6)


@pytest.mark.parametrize(
    "task, members, expected",
    [
        ("regression", None, MEMBERS_FOR_REGRESSION),
        ("binary", None, 1),
        ("multiclass", None, 1),
        ("regression", 1, 1),
        ("binary", 3, 3),
    ],
)
def test_members_rule_gives_a_regression_target_an_ensemble(task, members, expected):
    spec = tiny_spec("mlp", task, members=members)
    assert member_count(spec) == expected
    model = build_model(spec)
    assert isinstance(model, Members) == (expected > 1)
    if expected > 1:  # the default: every member weighs every row once
        assert spec.extra["members"]["sampling"] == "shared"
    if expected == 1:  # a single network's spec and weights are as they were
        assert "members" not in spec.extra
        assert not any(key.startswith("members.") for key in model.state_dict())


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_members_train_as_k_networks_and_predict_their_mean(task):
    spec = tiny_spec("mlp", task, members=3)
    torch.manual_seed(0)
    model = build_model(spec)
    torch.manual_seed(0)
    single = build_model(tiny_spec("mlp", task, members=1))
    first = model.members[0].state_dict()
    for key, value in single.state_dict().items():  # member 0 starts as one would
        assert torch.equal(first[key], value), key
    second = model.members[1].state_dict()
    assert any(not torch.equal(first[k], second[k]) for k in first)
    numeric, categorical = inputs(spec)
    model.train()
    assert model(numeric, categorical).shape == (6, 3, spec.n_outputs)
    model.eval()
    each = torch.stack([m(numeric, categorical) for m in model.members], dim=1)
    combined = model(numeric, categorical)
    if task == "regression":
        assert torch.allclose(combined, each.mean(dim=1), atol=1e-6)
    elif task == "binary":
        expected = torch.sigmoid(each).mean(dim=1)
        assert torch.allclose(torch.sigmoid(combined), expected, atol=1e-6)
    else:
        expected = torch.softmax(each, dim=-1).mean(dim=1)
        assert torch.allclose(torch.softmax(combined, -1), expected, atol=1e-6)
    folded = registry.inference_form(model)
    assert len(folded.members) == 3
    assert torch.allclose(folded(numeric, categorical), combined, atol=1e-5)


def twin_members(task: str, sampling: str):
    """Two members with the same weights and no dropout: only the sampling of
    rows can make them learn differently."""
    spec = tiny_spec("mlp", task, members=2, member_sampling=sampling, dropout=0.0)
    model = build_model(spec)
    model.members[1].load_state_dict(model.members[0].state_dict())
    return spec, model.train()


def member_gradients(model, spec, seed: int, weights=None):
    """Each member's gradients after one batch's loss; `weights` [rows, k, 1]
    scales the loss of each (row, member) instead of the model's own sampling."""
    numeric, categorical = inputs(spec, rows=16)
    gen = torch.Generator().manual_seed(1)
    if model.task == "regression":
        target = torch.randn(16, generator=gen)
    else:
        target = torch.randint(0, 2, (16,), generator=gen)
    model.zero_grad()
    torch.manual_seed(seed)
    outputs = model(numeric, categorical)
    if weights is not None:  # the same values, gradients scaled by the weights
        outputs = outputs * weights + (outputs * (1 - weights)).detach()
    batch_loss(make_loss(model.task, target, "none"), outputs, target).backward()
    return [
        torch.cat([p.grad.flatten() for p in member.parameters()])
        for member in model.members
    ]


@pytest.mark.parametrize("task", ["regression", "binary"])
def test_online_bagging_gives_each_member_its_own_weighting_of_the_rows(task):
    spec, model = twin_members(task, "shared")
    first, second = member_gradients(model, spec, seed=3)
    assert torch.equal(first, second)  # twins under shared rows stay twins
    spec, model = twin_members(task, "online_bagging")
    assert spec.extra["members"]["sampling"] == "online_bagging"
    first, second = member_gradients(model, spec, seed=3)
    assert not torch.allclose(first, second)
    # the gradients are those of the loss with each (row, member) weighted by a
    # Poisson(1) count drawn from the run's generator
    torch.manual_seed(3)
    counts = torch.poisson(torch.ones(16, 2, 1))
    assert counts.min() == 0 and counts.max() > 1
    model.sampling = "shared"
    expected = member_gradients(model, spec, seed=3, weights=counts)
    model.sampling = "online_bagging"
    got = member_gradients(model, spec, seed=3)
    for member_got, member_expected in zip(got, expected):
        assert torch.allclose(member_got, member_expected, atol=1e-6)


def test_online_bagging_leaves_outputs_and_evaluation_alone():
    spec, bagged = twin_members("regression", "online_bagging")
    _, shared = twin_members("regression", "shared")
    shared.load_state_dict(bagged.state_dict())
    numeric, categorical = inputs(spec)
    torch.manual_seed(0)
    train_outputs = bagged(numeric, categorical)
    assert torch.equal(train_outputs, shared(numeric, categorical))
    bagged.eval(), shared.eval()
    assert torch.equal(bagged(numeric, categorical), shared(numeric, categorical))


def test_a_spec_from_before_member_sampling_trains_with_shared_rows():
    spec = tiny_spec("mlp", "regression", members=2)
    del spec.extra["members"]["sampling"]
    assert build_model(spec).sampling == "shared"


def test_mean_of_members_for_regression_is_the_mean_value():
    outputs = torch.randn(5, 4, 1)
    assert torch.allclose(mean_of_members(outputs, "regression"), outputs.mean(1))


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_ensemble_loss_is_the_mean_of_member_losses(task):
    gen = torch.Generator().manual_seed(1)
    k, rows = 3, 8
    width = 3 if task == "multiclass" else 1
    outputs = torch.randn(rows, k, width, generator=gen)
    if task == "regression":
        target = torch.randn(rows, generator=gen)
    else:
        target = torch.randint(0, width + int(task == "binary"), (rows,))
    loss_fn = make_loss(task, target, "none")
    members = [batch_loss(loss_fn, outputs[:, i], target) for i in range(k)]
    expected = torch.stack(members).mean()
    assert torch.allclose(batch_loss(loss_fn, outputs, target), expected)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("option", SMALL)
def test_train_save_reload_predict(tmp_path, option, task):
    run_dir = train_tiny(tmp_path, *SMALL[option], task=task)
    artifact = load_artifact(run_dir)
    assert artifact.spec.architecture == option.split("+")[0]
    regression_mlp = task == "regression" and option.startswith("mlp")
    assert member_count(artifact.spec) == (
        MEMBERS_FOR_REGRESSION if regression_mlp else 1
    )
    frame = make_table(rows=40, task=task, seed=3).drop(columns=["label"])
    first = Predictor(artifact, CPU, 16).predict_frame(frame)
    again = Predictor.from_run_dir(run_dir, CPU, 7).predict_frame(frame)
    pd.testing.assert_frame_equal(first, again)
    onnx = Predictor.from_run_dir(run_dir, CPU, 16, engine="onnx")
    assert onnx.engine.name == "onnx"
    served = onnx.predict_frame(frame)
    scores = [c for c in first.columns if c.endswith("_probability")]
    scores = scores or ["prediction"]  # regression: the predicted value
    for column in scores:
        np.testing.assert_allclose(first[column], served[column], atol=1e-5)


def test_onnx_export_failure_falls_back_to_torch(tmp_path, monkeypatch, caplog):
    run_dir = train_tiny(tmp_path, *SMALL["tabm"])

    def broken_export(module, weights_sha256):
        raise RuntimeError("unsupported operator\nmore detail")

    monkeypatch.setattr(engines, "_export", broken_export)
    with caplog.at_level(logging.WARNING, logger="modelsphere.inference.engines"):
        predictor = Predictor.from_run_dir(run_dir, CPU, 16, engine="onnx")
    assert predictor.engine.name == "torch"
    assert "could not be exported to ONNX (unsupported operator)" in caplog.text
    assert "falling back to engine=torch" in caplog.text
    out = predictor.predict_frame(make_table(rows=5).drop(columns=["label"]))
    assert len(out) == 5


def test_options_compose_on_the_csv_overrides(tmp_path):
    """`model=<option>` works beside the usual data overrides."""
    csv = tmp_path / "t.csv"
    for option in OPTIONS:
        cfg = compose_config(csv_overrides(csv, tmp_path) + [f"model={option}"])
        assert cfg.model.name == option


def test_the_cli_path_does_not_import_the_optional_architectures():
    """rtdl_num_embeddings imports scikit-learn when it is installed (~1 s): the
    entry points and the server load it only to build a model that needs it."""
    code = (
        "import sys, modelsphere.inference.batch_predict, modelsphere.cli, "
        "modelsphere.training.run, modelsphere.serving.app; "
        "loaded = {'rtdl_num_embeddings', 'tabm', 'sklearn'} & set(sys.modules); "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_batchnorm_is_refused_a_step_of_one_row_before_training(tmp_path):
    """BatchNorm cannot train on one row (under DDP the other processes would
    wait for that one forever): a batch size leaving a 1-row step is refused."""
    from modelsphere.data.preprocessing import prepare_data

    make_table().to_csv(tmp_path / "tiny_binary.csv", index=False)
    cfg = compose_config(csv_overrides(tmp_path / "tiny_binary.csv", tmp_path))
    n_train = prepare_data(cfg.data, cfg.paths.data_dir).split_rows("train")
    norm = "model.normalization=batchnorm"
    with pytest.raises(ModelSphereError, match="batchnorm needs 2 or more rows"):
        train_tiny(tmp_path, norm, f"train.batch_size={n_train - 1}")
    train_tiny(tmp_path, norm, f"train.batch_size={n_train - 2}")  # 2 rows: fine
