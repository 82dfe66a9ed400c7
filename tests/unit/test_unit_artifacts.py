"""The model artifact: save, load, verify; every defect is a ModelSphereError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modelsphere.core.errors import ModelSphereError
from modelsphere.core.fileio import sha256_file
from modelsphere.data.schema import Schema
from modelsphere.models.artifact import (
    ARTIFACT_FORMAT,
    ARTIFACT_VERSION,
    META_FILE,
    WEIGHTS_FILE,
    load_artifact,
    save_artifact,
)
from modelsphere.models.registry import build_model
from modelsphere.models.spec import ModelSpec

CPU = torch.device("cpu")


def make_spec(**overrides) -> ModelSpec:
    values = dict(
        n_numeric=2,
        cardinalities=[4],
        embedding_dims=[3],
        hidden_sizes=[8],
        n_outputs=1,
        normalization="batchnorm",
    )
    values.update(overrides)
    return ModelSpec(**values)


SCHEMA = Schema(
    columns=["id", "x", "c", "y"],
    target="y",
    task="binary",
    numeric=["x"],
    categorical=["c"],
    id_column="id",
    classes=["no", "yes"],
    target_kind="string",
)
FEATURE_STATE = {
    "version": 1,
    "numeric": [
        {
            "name": "x",
            "fill_value": 0.5,
            "missing_indicator": True,
            "scaling": "standard",
            "mean": 0.1,
            "std": 2.0,
        }
    ],
    "categorical": [{"name": "c", "levels": ["a", "b"]}],
    "target": {"name": "y", "task": "binary", "classes": ["no", "yes"]},
}
INPUTS = (torch.randn(6, 2, generator=torch.Generator().manual_seed(0)),)
INPUTS += (torch.tensor([[0], [1], [2], [3], [2], [3]]),)


@pytest.fixture
def saved(tmp_path: Path):
    """A saved artifact and the model it was saved from (eval mode)."""
    torch.manual_seed(0)
    model = build_model(make_spec())
    model.train()
    model(*INPUTS)  # moves the batch-norm running statistics off their defaults
    model.eval()
    run_dir = tmp_path / "run"
    save_artifact(
        run_dir,
        model,
        make_spec(),
        FEATURE_STATE,
        SCHEMA,
        {"seed": 0, "model": {"name": "mlp"}},
        {"metrics": {"val": {"roc_auc": 0.75}}},
    )
    return run_dir, model


def edit_meta(run_dir: Path, change) -> None:
    path = run_dir / META_FILE
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def test_round_trip_gives_identical_weights_and_outputs(saved):
    run_dir, model = saved
    assert sorted(p.name for p in run_dir.iterdir()) == [META_FILE, WEIGHTS_FILE]
    artifact = load_artifact(run_dir)
    original = model.state_dict()
    assert artifact.state_dict.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(artifact.state_dict[name], tensor), name
    assert artifact.spec == make_spec()
    assert artifact.schema == SCHEMA
    assert artifact.task == "binary"
    assert artifact.feature_state == FEATURE_STATE
    assert artifact.config == {"seed": 0, "model": {"name": "mlp"}}
    assert artifact.meta["metrics"] == {"val": {"roc_auc": 0.75}}
    assert artifact.meta["format"] == ARTIFACT_FORMAT
    assert artifact.meta["format_version"] == ARTIFACT_VERSION
    assert artifact.meta["weights_sha256"] == sha256_file(run_dir / WEIGHTS_FILE)
    rebuilt = artifact.build(CPU)
    assert not rebuilt.training
    with torch.inference_mode():
        assert torch.equal(rebuilt(*INPUTS), model(*INPUTS))


def test_saving_again_replaces_the_artifact(saved):
    run_dir, model = saved
    with torch.no_grad():
        model.head.bias.add_(1.0)
    save_artifact(run_dir, model, make_spec(), FEATURE_STATE, SCHEMA, {}, {})
    artifact = load_artifact(run_dir)
    assert torch.equal(artifact.state_dict["head.bias"], model.head.bias)
    assert sorted(p.name for p in run_dir.iterdir()) == [META_FILE, WEIGHTS_FILE]


def test_corrupted_weights_fail_the_hash_check(saved):
    run_dir, _ = saved
    weights = run_dir / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelSphereError) as err:
        load_artifact(run_dir)
    assert str(weights) in str(err.value)
    assert "SHA-256" in str(err.value)


def test_invalid_json_is_an_error_naming_the_file(saved):
    run_dir, _ = saved
    meta = run_dir / META_FILE
    meta.write_text(meta.read_text()[:-20])
    with pytest.raises(ModelSphereError) as err:
        load_artifact(run_dir)
    assert str(meta) in str(err.value)
    assert "not valid JSON" in str(err.value)


@pytest.mark.parametrize("version", [ARTIFACT_VERSION + 1, "1", None])
def test_unsupported_format_version_is_an_error(saved, version):
    run_dir, _ = saved
    edit_meta(run_dir, lambda meta: meta.update(format_version=version))
    with pytest.raises(ModelSphereError) as err:
        load_artifact(run_dir)
    assert str(run_dir / META_FILE) in str(err.value)
    assert f"format version {version!r}" in str(err.value)


@pytest.mark.parametrize("payload", [{"format": "something-else"}, [1, 2], "text"])
def test_not_an_artifact_is_an_error(saved, payload):
    run_dir, _ = saved
    path = run_dir / META_FILE
    if isinstance(payload, dict):
        edit_meta(run_dir, lambda meta: meta.update(payload))
    else:
        path.write_text(json.dumps(payload))
    with pytest.raises(ModelSphereError) as err:
        load_artifact(run_dir)
    assert str(path) in str(err.value)
    assert "not a modelsphere model artifact" in str(err.value)


def test_weights_of_another_architecture_fail_on_build(saved):
    run_dir, _ = saved
    weights = run_dir / WEIGHTS_FILE
    other = build_model(make_spec(hidden_sizes=[5]))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(weights))
    edit_meta(run_dir, lambda meta: meta.update(weights_sha256=sha256_file(weights)))
    artifact = load_artifact(run_dir)  # the hash matches: loading succeeds
    with pytest.raises(ModelSphereError) as err:
        artifact.build(CPU)
    message = str(err.value)
    assert str(weights) in message
    assert META_FILE in message
    assert "does not match the model" in message


def test_spec_edited_to_another_architecture_fails_on_build(saved):
    run_dir, _ = saved
    edit_meta(run_dir, lambda meta: meta["model_spec"].update(hidden_sizes=[16]))
    artifact = load_artifact(run_dir)
    with pytest.raises(ModelSphereError, match="does not match the model"):
        artifact.build(CPU)


@pytest.mark.parametrize("missing", [META_FILE, WEIGHTS_FILE])
def test_missing_files_are_errors_naming_them(saved, missing):
    run_dir, _ = saved
    (run_dir / missing).unlink()
    with pytest.raises(ModelSphereError) as err:
        load_artifact(run_dir)
    assert str(run_dir / missing) in str(err.value)
    assert "not found" in str(err.value)


def test_missing_run_dir_is_an_error(tmp_path):
    with pytest.raises(ModelSphereError, match="not found"):
        load_artifact(tmp_path / "nowhere")


def test_truncated_weights_with_matching_hash_are_a_damaged_artifact(saved):
    run_dir, _ = saved
    weights = run_dir / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:40])
    edit_meta(run_dir, lambda meta: meta.update(weights_sha256=sha256_file(weights)))
    with pytest.raises(ModelSphereError) as err:
        load_artifact(run_dir)
    assert str(run_dir) in str(err.value)
    assert "damaged" in str(err.value)


@pytest.mark.parametrize("key", ["model_spec", "feature_state", "schema", "config"])
def test_missing_sections_are_a_damaged_artifact(saved, key):
    run_dir, _ = saved
    edit_meta(run_dir, lambda meta: meta.pop(key))
    with pytest.raises(ModelSphereError) as err:
        load_artifact(run_dir)
    assert str(run_dir) in str(err.value)
    assert key in str(err.value)


@pytest.mark.parametrize("section", ["model_spec", "schema"])
def test_edited_sections_with_unknown_fields_name_the_file(saved, section):
    run_dir, _ = saved
    edit_meta(run_dir, lambda meta: meta[section].update(surprise=1))
    with pytest.raises(ModelSphereError) as err:
        load_artifact(run_dir)
    assert str(run_dir) in str(err.value)
