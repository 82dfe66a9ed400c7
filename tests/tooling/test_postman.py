"""The Postman collection in docs/postman: it covers every route of the app, is a
well-formed Collection v2.1, its examples fit the Telco churn model, and newman
runs it green against serve.py serving a freshly trained Telco model.

newman is an npm dev dependency (package.json): `npm ci` installs it, as CI does.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from helpers import REPO, free_port, start_serve_py, wait_server_ready
from modelsphere.serving.app import ServeSettings, create_app

POSTMAN = REPO / "docs" / "postman"
COLLECTION = POSTMAN / "modelsphere.postman_collection.json"
ENVIRONMENT = POSTMAN / "modelsphere.postman_environment.json"
NEWMAN = REPO / "node_modules" / ".bin" / "newman"
SCHEMA_URL = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
FOLDERS = ["Health", "Metadata", "Inference", "Errors"]
MODEL_NAME = "telco_churn"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PM_TEST = re.compile(r"\bpm\.test\(")
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
# Requests that target a path the app does not have, on purpose (the 404 example).
DELIBERATELY_UNKNOWN = {("GET", "/v2/no_such_endpoint")}
# FastAPI's own pages: not part of the documented API.
FASTAPI_PAGES = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
NEWMAN_TIMEOUT_SECONDS = 120


@pytest.fixture(scope="module")
def collection() -> dict:
    return json.loads(COLLECTION.read_text())


@pytest.fixture(scope="module")
def telco_run(tmp_path_factory, trained_runs) -> Path:
    """The bundled Telco churn data, 1 epoch on the CPU (the session's run)."""
    return trained_runs.copy("telco_one_epoch", tmp_path_factory.mktemp("postman"))


def requests_of(node: dict, folder: str = "") -> Iterator[Tuple[str, dict]]:
    """(top-level folder name, item) for every request, however deep."""
    for item in node.get("item", []):
        if "request" in item:
            yield folder, item
        else:
            yield from requests_of(item, folder or item["name"])


def path_of(item: dict) -> str:
    raw = item["request"]["url"]["raw"]
    assert raw.startswith("{{baseUrl}}/"), raw
    return raw[len("{{baseUrl}}") :].split("?")[0]


def route_pattern(template: str) -> re.Pattern:
    """/v2/models/{name} -> a regex matching any single segment for {name}."""
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile(
        "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
        + "$"
    )


def scripts_of(item: dict, listen: str) -> List[str]:
    return [
        line
        for event in item.get("event", [])
        if event["listen"] == listen
        for line in event["script"]["exec"]
    ]


def written_assertions(collection: dict) -> int:
    return sum(
        len(PM_TEST.findall(line))
        for _, item in requests_of(collection)
        for line in scripts_of(item, "test")
    )


def all_ids(node) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("id", "_postman_id") and isinstance(value, str):
                yield value
            else:
                yield from all_ids(value)
    elif isinstance(node, list):
        for value in node:
            yield from all_ids(value)


def model_meta(run_dir: Path) -> dict:
    return json.loads((run_dir / "model.json").read_text())


# ----------------------------------------------------------------------------
# Static checks


def test_collection_covers_every_route_of_the_app(collection, telco_run):
    spec = create_app(ServeSettings(run_dir=str(telco_run))).openapi()
    routes = {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        if path not in FASTAPI_PAGES
        for method in operations
    }
    assert len(routes) >= 8, routes
    documented = {
        (item["request"]["method"], path_of(item).replace("{{modelName}}", "{name}"))
        for folder, item in requests_of(collection)
        if folder != "Errors"
    }
    missing = routes - documented
    assert not missing, f"routes without a (non-error) request: {sorted(missing)}"
    patterns = [(method, route_pattern(path)) for method, path in routes]
    for _, item in requests_of(collection):
        method, path = item["request"]["method"], path_of(item)
        if (method, path) in DELIBERATELY_UNKNOWN:
            continue
        assert any(
            method == m and pattern.match(path) for m, pattern in patterns
        ), f"{item['name']!r}: {method} {path} is not a route of the app"


def test_collection_is_a_well_formed_v2_1_collection(collection):
    # The official JSON schema is not available offline (no installed package
    # ships it), so the structure it requires is checked here.
    info = collection["info"]
    assert info["schema"] == SCHEMA_URL
    assert info["name"] and info["description"]
    assert UUID.match(info["_postman_id"])
    assert [folder["name"] for folder in collection["item"]] == FOLDERS
    for folder in collection["item"]:
        assert folder["description"] and folder["item"], folder["name"]
    variables = {var["key"]: var["value"] for var in collection["variable"]}
    assert variables["baseUrl"] == "http://127.0.0.1:8000"
    assert variables["modelName"] == MODEL_NAME

    ids = list(all_ids(collection))
    assert len(ids) == len(set(ids)), "ids must be unique"
    assert all(UUID.match(value) for value in ids), ids

    items = list(requests_of(collection))
    assert len(items) >= 20
    for _, item in items:
        name, request = item["name"], item["request"]
        assert request["method"] in METHODS, name
        assert request.get("description"), f"{name!r} has no description"
        url = request["url"]
        assert url["host"] == ["{{baseUrl}}"], name
        assert "/" + "/".join(url["path"]) == path_of(item), name
        for header in request.get("header", []):
            assert set(header) >= {"key", "value"}, name
        if "body" in request:
            body = request["body"]
            assert body["mode"] == "raw", name
            assert body["options"]["raw"]["language"] == "json", name
            if "malformed" in name:
                with pytest.raises(json.JSONDecodeError):
                    json.loads(body["raw"])
            elif "{{" not in body["raw"]:
                json.loads(body["raw"])  # the examples are valid JSON
        tests = scripts_of(item, "test")
        assert any(PM_TEST.search(line) for line in tests), f"{name!r}: no pm.test"
        for event in item["event"]:
            assert event["listen"] in ("test", "prerequest"), name
            assert event["script"]["type"] == "text/javascript", name


def test_environment_points_at_serve_py_defaults():
    environment = json.loads(ENVIRONMENT.read_text())
    assert environment["_postman_variable_scope"] == "environment"
    assert UUID.match(environment["id"])
    values = {var["key"]: var["value"] for var in environment["values"]}
    assert values["baseUrl"] == "http://127.0.0.1:8000"
    assert values["modelName"] == MODEL_NAME


def test_example_bodies_fit_the_telco_model(collection, telco_run):
    """The happy-path examples send exactly the trained model's features."""
    meta = model_meta(telco_run)
    schema = meta["schema"]
    assert meta["config"]["data"]["name"] == MODEL_NAME
    features = set(schema["numeric"]) | set(schema["categorical"])
    inference = [
        item
        for folder, item in requests_of(collection)
        if folder == "Inference" and "body" in item["request"]
    ]
    assert inference
    for item in inference:
        body = json.loads(item["request"]["body"]["raw"])
        if path_of(item) == "/predict":
            for record in body["records"]:
                assert set(record) == features | {schema["id_column"]}, item["name"]
                for name in schema["numeric"]:
                    value = record[name]
                    assert value is None or isinstance(value, (int, float)), name
        else:
            tensors = {tensor["name"]: tensor for tensor in body["inputs"]}
            assert set(tensors) == features, item["name"]
            for name, tensor in tensors.items():
                numeric = name in schema["numeric"]
                assert tensor["datatype"] == ("FP64" if numeric else "BYTES"), name
                assert tensor["shape"] == [len(tensor["data"])], name


# ----------------------------------------------------------------------------
# newman against serve.py


def test_newman_runs_the_collection_against_serve_py(collection, telco_run, tmp_path):
    if not NEWMAN.exists():
        pytest.fail(
            "node_modules/.bin/newman is missing: run `npm ci` in the repository "
            "root (package.json pins newman as a dev dependency)"
        )
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH: install Node.js >= 16, then `npm ci`")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    report = tmp_path / "newman.json"
    server = start_serve_py(telco_run, port)
    try:
        wait_server_ready(server, base)
        newman = subprocess.run(
            [
                str(NEWMAN),
                "run",
                str(COLLECTION),
                "-e",
                str(ENVIRONMENT),
                "--env-var",
                f"baseUrl={base}",
                "--reporters",
                "cli,json",
                "--reporter-json-export",
                str(report),
                "--color",
                "off",
                "--timeout-request",
                "30000",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=NEWMAN_TIMEOUT_SECONDS,
        )
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server_log = server.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            server.kill()
            server_log = server.communicate()[0]
    output = newman.stdout + newman.stderr
    run = json.loads(report.read_text())["run"]
    failures = [
        f"{failure['source']['name']}: {failure['error']['message']}"
        for failure in run["failures"]
    ]
    assert newman.returncode == 0, failures or output[-4000:]
    assert failures == []
    stats = run["stats"]
    assert stats["assertions"]["failed"] == 0
    assert stats["assertions"]["total"] >= written_assertions(collection)
    assert stats["requests"]["total"] == len(list(requests_of(collection)))
    assert stats["requests"]["failed"] == 0
    assert "Traceback" not in server_log, server_log[-4000:]
