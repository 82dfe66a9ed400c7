"""The real-time service: endpoints, bad input, API key, metrics, predict.py parity."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from helpers import (
    compose_config,
    free_port,
    make_table,
    start_serve_py,
    wait_client_ready,
    wait_server_ready,
)
from modelsphere.core.devices import select_device
from modelsphere.inference.batch_predict import predict_file
from modelsphere.inference.predictor import Predictor
from modelsphere.serving.app import ServeSettings, create_app
from modelsphere.serving.runner import settings_from_config

NAME = "tiny_binary"  # the data set name: train_tiny trains on tiny_binary.csv


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained_runs):
    """One tiny trained model per task (the session's), copied for this module."""
    base = tmp_path_factory.mktemp("serving")
    return {
        task: trained_runs.copy(task, base)
        for task in ("binary", "multiclass", "regression")
    }


def client_for(run_dir: Path, **settings) -> TestClient:
    app = create_app(ServeSettings(run_dir=str(run_dir), **settings))
    client = TestClient(app)
    client.__enter__()
    wait_client_ready(client)
    return client


@pytest.fixture(scope="module")
def binary(runs):
    client = client_for(runs["binary"], engine="torch", max_batch_rows=100)
    yield client
    client.__exit__(None, None, None)


def feature_records(rows: int = 5, task: str = "binary", seed: int = 1):
    frame = make_table(rows=rows, task=task, seed=seed).drop(columns=["label"])
    return json.loads(frame.to_json(orient="records"))


# ----------------------------------------------------------------------------
# Health, metadata


def test_health_and_metadata(binary):
    assert binary.get("/v2/health/live").json() == {"live": True}
    assert binary.get("/v2/health/ready").json() == {"ready": True}
    assert binary.get(f"/v2/models/{NAME}/ready").json() == {
        "name": NAME,
        "ready": True,
    }
    meta = binary.get(f"/v2/models/{NAME}").json()
    assert meta["name"] == NAME and meta["versions"] == ["binary"]
    kinds = {item["name"]: item["parameters"]["kind"] for item in meta["inputs"]}
    assert kinds == {
        "age": "numeric",
        "income": "numeric",
        "plan": "categorical",
        "region": "categorical",
    }
    plan = next(item for item in meta["inputs"] if item["name"] == "plan")
    assert set(plan["parameters"]["levels"]) == {"basic", "plus", "premium"}
    assert meta["parameters"]["task"] == "binary"
    assert meta["parameters"]["classes"] == ["no", "yes"]
    assert 0.0 <= meta["parameters"]["training_metrics"]["test"]["roc_auc"] <= 1.0


def test_not_ready_until_the_model_is_loaded(runs):
    app = create_app(ServeSettings(run_dir=str(runs["binary"])))
    client = TestClient(app)  # no lifespan: the model is never loaded
    assert client.get("/v2/health/live").status_code == 200
    response = client.get("/v2/health/ready")
    assert response.status_code == 503
    assert response.json()["error"] == "model is loading"
    predict = client.post("/predict", json={"records": feature_records(1)})
    assert predict.status_code == 503


def test_openapi_shows_the_real_fields_with_an_example(binary):
    spec = binary.get("/openapi.json").json()
    record = spec["components"]["schemas"]["Record"]
    assert set(record["required"]) == {"age", "income", "plan", "region"}
    assert "levels seen in training" in record["properties"]["plan"]["description"]
    example = record["examples"][0]
    assert set(example) == {"age", "income", "plan", "region"}
    assert binary.post("/predict", json={"records": [example]}).status_code == 200


# ----------------------------------------------------------------------------
# Predictions and parity


def test_predict_returns_labels_probabilities_and_ids(binary):
    records = feature_records(3)
    response = binary.post("/predict", json={"records": records})
    assert response.status_code == 200
    body = response.json()
    assert body["model_name"] == NAME and body["model_version"] == "binary"
    assert [p["id"] for p in body["predictions"]] == [r["customer_id"] for r in records]
    for prediction in body["predictions"]:
        assert prediction["prediction"] in {"no", "yes"}
        probabilities = prediction["probabilities"]
        assert set(probabilities) == {"no", "yes"}
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        best = max(probabilities, key=probabilities.get)
        assert prediction["prediction"] == best


def test_api_matches_predict_py_exactly(binary, runs, tmp_path):
    """Same rows through predict.py's file path and through the API: identical."""
    frame = make_table(rows=40, seed=3).drop(columns=["label"])
    frame.loc[0, "plan"] = "enterprise"  # unseen category
    frame.loc[1, "income"] = None  # missing value
    path = tmp_path / "rows.csv"
    frame.to_csv(path, index=False)
    predictor = Predictor.from_run_dir(runs["binary"], select_device("cpu"), 8192)
    predict_file(predictor, path, tmp_path / "scored.parquet", chunk_rows=16)
    batch = pd.read_parquet(tmp_path / "scored.parquet")
    records = json.loads(frame.to_json(orient="records"))
    api = binary.post("/predict", json={"records": records}).json()["predictions"]
    assert [p["prediction"] for p in api] == batch["prediction"].tolist()
    for label in ("no", "yes"):
        served = np.array([p["probabilities"][label] for p in api])
        np.testing.assert_array_equal(served, batch[f"{label}_probability"].to_numpy())


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_onnx_engine_matches_torch(runs, task):
    records = feature_records(50, task=task)
    device = select_device("cpu")
    torch_out = Predictor.from_run_dir(runs[task], device, 64).predict_records(records)
    onnx_out = Predictor.from_run_dir(
        runs[task], device, 64, engine="onnx"
    ).predict_records(records)
    assert set(torch_out) == set(onnx_out)
    for column, values in torch_out.items():
        if column == "prediction" and task != "regression":
            assert list(values) == list(onnx_out[column])
        else:
            np.testing.assert_allclose(values, onnx_out[column], rtol=0, atol=1e-5)


def test_regression_and_multiclass_responses(runs):
    with TestClient(create_app(ServeSettings(run_dir=str(runs["regression"])))) as c:
        wait_client_ready(c)
        body = c.post("/predict", json={"records": feature_records(2, "regression")})
        predictions = body.json()["predictions"]
        assert all(isinstance(p["prediction"], float) for p in predictions)
        assert all("probabilities" not in p for p in predictions)
    with TestClient(create_app(ServeSettings(run_dir=str(runs["multiclass"])))) as c:
        wait_client_ready(c)
        body = c.post("/predict", json={"records": feature_records(2, "multiclass")})
        for p in body.json()["predictions"]:
            assert p["prediction"] in {0, 1, 2}
            assert set(p["probabilities"]) == {"0", "1", "2"}


# ----------------------------------------------------------------------------
# Open Inference Protocol v2


def oip_inputs(records):
    columns = {"age": "FP64", "income": "FP64", "plan": "BYTES", "region": "BYTES"}
    return [
        {
            "name": name,
            "shape": [len(records)],
            "datatype": datatype,
            "data": [r[name] for r in records],
        }
        for name, datatype in columns.items()
    ]


def test_oip_infer_matches_predict(binary):
    records = feature_records(4)
    predicted = binary.post("/predict", json={"records": records}).json()
    response = binary.post(
        f"/v2/models/{NAME}/infer", json={"id": "req-1", "inputs": oip_inputs(records)}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "req-1" and body["model_name"] == NAME
    outputs = {output["name"]: output for output in body["outputs"]}
    assert outputs["prediction"]["shape"] == [4]
    assert outputs["prediction"]["data"] == [
        p["prediction"] for p in predicted["predictions"]
    ]
    probabilities = outputs["probabilities"]
    assert probabilities["shape"] == [4, 2]
    assert probabilities["parameters"]["classes"] == ["no", "yes"]
    expected = [
        p["probabilities"][label]
        for p in predicted["predictions"]
        for label in ("no", "yes")
    ]
    assert probabilities["data"] == pytest.approx(expected, abs=1e-12)
    only = binary.post(
        f"/v2/models/{NAME}/infer",
        json={"inputs": oip_inputs(records), "outputs": [{"name": "prediction"}]},
    )
    assert [o["name"] for o in only.json()["outputs"]] == ["prediction"]


def test_oip_accepts_the_id_column_beside_the_features(binary):
    records = feature_records(2)
    inputs = oip_inputs(records) + [
        {
            "name": "customer_id",
            "shape": [2],
            "datatype": "BYTES",
            "data": [r["customer_id"] for r in records],
        }
    ]
    response = binary.post(f"/v2/models/{NAME}/infer", json={"inputs": inputs})
    assert response.status_code == 200
    assert response.json()["outputs"][0]["shape"] == [2]


@pytest.mark.parametrize(
    "mutate, status, loc_end, words",
    [
        (lambda i: i.append(dict(i[0], name="nope")), 422, "name", "not a feature"),
        (lambda i: i.pop(3), 422, "inputs", "missing input"),
        (lambda i: i[0].update(datatype="BYTES"), 422, "datatype", "numeric"),
        (lambda i: i[1].update(shape=[3]), 422, "data", "values for shape"),
        (lambda i: i[0]["data"].__setitem__(0, "old"), 422, 0, "not a finite number"),
        (lambda i: i[2]["data"].__setitem__(0, 1.5), 422, 0, "categorical"),
        (lambda i: i.append(dict(i[0])), 422, "name", "given twice"),
        (lambda i: i[0]["data"].__setitem__(0, 10**400), 422, 0, "not a finite"),
        (lambda i: i[1].update(datatype="INT64"), 422, 0, "not an integer"),
        (lambda i: i[2].update(datatype="FP64"), 422, "datatype", "BYTES"),
    ],
)
def test_oip_bad_tensors_name_the_field(binary, mutate, status, loc_end, words):
    inputs = oip_inputs(feature_records(2))
    mutate(inputs)
    response = binary.post(f"/v2/models/{NAME}/infer", json={"inputs": inputs})
    assert response.status_code == status
    body = response.json()
    assert words in body["error"]
    assert body["detail"][0]["loc"][-1] == loc_end


# ----------------------------------------------------------------------------
# Bad input: 4xx naming the field, never 500


def post_raw(client, body: bytes, content_type="application/json", path="/predict"):
    return client.post(path, content=body, headers={"content-type": content_type})


def test_bad_records_name_the_field(binary):
    good = feature_records(1)[0]
    cases = {
        "missing": ({k: v for k, v in good.items() if k != "plan"}, "plan"),
        "extra": (dict(good, shoe_size=42), "shoe_size"),
        "wrong type": (dict(good, age="old"), "age"),
        "bool for number": (dict(good, age=True), "age"),
        "list for category": (dict(good, plan=["basic"]), "plan"),
    }
    for name, (record, field) in cases.items():
        response = binary.post("/predict", json={"records": [record]})
        assert response.status_code == 422, name
        body = response.json()
        locs = [item["loc"] for item in body["detail"]]
        assert any(field in loc for loc in locs), (name, locs)
        assert field in body["error"], name


def test_malformed_and_hostile_bodies_get_4xx(binary):
    good = json.dumps({"records": feature_records(1)})
    assert post_raw(binary, good.encode()).status_code == 200
    cases = [
        (b'{"records": [', 422),
        (good.replace("}]", ', "age": NaN}]', 1).encode(), 422),
        (
            json.dumps({"records": [dict(feature_records(1)[0], age=1e309)]}).encode(),
            422,
        ),
        (b'{"records": []}', 422),
        (b"[" * 100_000 + b"]" * 100_000, 400),
        (b'"just a string"', 422),
    ]
    for body, status in cases:
        response = post_raw(binary, body)
        assert response.status_code == status, (body[:60], response.text[:200])
        assert response.json()["error"]
    response = post_raw(binary, good.encode(), content_type="text/plain")
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]


def test_limits_give_413(binary):
    too_many = {"records": feature_records(101)}
    response = binary.post("/predict", json=too_many)
    assert response.status_code == 413
    assert "limit is 100" in response.json()["error"]
    huge = b'{"records": [' + b" " * (2 << 20) + b"]}"
    response = post_raw(binary, huge)
    assert response.status_code == 413
    assert "serve.max_body_bytes" in response.json()["error"]


def test_unknown_model_and_path_give_404(binary):
    assert binary.get("/v2/models/other").status_code == 404
    response = binary.post(
        "/v2/models/other/infer", json={"inputs": oip_inputs(feature_records(1))}
    )
    assert response.status_code == 404
    assert NAME in response.json()["error"]
    assert binary.get("/nowhere").status_code == 404


def test_unseen_categories_and_missing_values_are_scored(binary):
    record = dict(feature_records(1)[0], plan="platinum", region=None, income=None)
    response = binary.post("/predict", json={"records": [record]})
    assert response.status_code == 200
    probabilities = response.json()["predictions"][0]["probabilities"]
    assert sum(probabilities.values()) == pytest.approx(1.0)


def test_large_requests_are_answered_off_the_event_loop(runs):
    client = client_for(runs["binary"], inline_max_bytes=1024, max_batch_rows=500)
    try:
        records = feature_records(300)
        small = client.post("/predict", json={"records": records[:2]}).json()
        large = client.post("/predict", json={"records": records}).json()
        assert large["predictions"][:2] == small["predictions"]
    finally:
        client.__exit__(None, None, None)


# ----------------------------------------------------------------------------
# API key and metrics


def test_api_key_is_required_when_configured(runs):
    client = client_for(runs["binary"], api_key="s3cret-key-123")
    try:
        body = {"records": feature_records(1)}
        assert client.post("/predict", json=body).status_code == 401
        wrong = client.post("/predict", json=body, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401
        assert "API key" in wrong.json()["error"]
        assert client.get(f"/v2/models/{NAME}").status_code == 401
        right = {"X-API-Key": "s3cret-key-123"}
        assert client.post("/predict", json=body, headers=right).status_code == 200
        bearer = {"Authorization": "Bearer s3cret-key-123"}
        assert client.post("/predict", json=body, headers=bearer).status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/metrics").status_code == 200
    finally:
        client.__exit__(None, None, None)


def test_the_forward_batch_is_the_serve_config_key(runs, monkeypatch):
    """serve.forward_batch_rows reaches the workers' predictor (it was a
    constant in code before)."""
    cfg = compose_config(
        ["device=cpu", f"run_dir={runs['binary']}", "serve.forward_batch_rows=3"],
        "serve",
    )
    settings = settings_from_config(cfg)
    assert settings.forward_batch_rows == 3
    seen = []
    real = Predictor.from_run_dir

    def recording(run_dir, device, batch_size, *args):
        seen.append(batch_size)
        return real(run_dir, device, batch_size, *args)

    monkeypatch.setattr(Predictor, "from_run_dir", recording)
    client = client_for(runs["binary"], forward_batch_rows=3)
    try:
        body = {"records": feature_records(5)}
        assert client.post("/predict", json=body).status_code == 200
    finally:
        client.__exit__(None, None, None)
    assert seen == [3]


def test_metrics_count_requests_errors_and_rows(binary):
    binary.post("/predict", json={"records": feature_records(3)})
    binary.post("/predict", json={"records": []})
    text = binary.get("/metrics").text
    assert (
        'modelsphere_requests_total{method="POST",route="/predict",status="200"}'
        in text
    )
    assert 'modelsphere_request_errors_total{route="/predict",status="422"}' in text
    assert "modelsphere_request_latency_seconds_bucket" in text
    rows = [
        line
        for line in text.splitlines()
        if line.startswith('modelsphere_rows_predicted_total{route="/predict"}')
    ]
    assert rows and float(rows[0].split()[-1]) >= 3


# ----------------------------------------------------------------------------
# serve.py as a user starts it


def test_serve_py_starts_answers_and_stops(runs):
    port = free_port()
    process = start_serve_py(runs["binary"], port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_server_ready(process, base)
        request = urllib.request.Request(
            f"{base}/predict",
            data=json.dumps({"records": feature_records(2)}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request) as response:
            assert len(json.loads(response.read())["predictions"]) == 2
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}" in output
    assert "Traceback" not in output


def test_serve_py_without_a_model_says_so(tmp_path):
    from helpers import run_cli

    result = run_cli("serve.py", f"paths.outputs_dir={tmp_path}")
    assert result.returncode == 2
    assert "no training run found" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
