"""The service's edges under a hostile or careless client, and its shutdown
(issue #20, items 5 and 8; docs/bad_inputs.md, "Second pass").

serve.py runs as a user starts it (a subprocess on loopback) where the behaviour
lives in the HTTP server (timeouts, parser errors, SIGTERM); in process where it
lives in the app (large requests off the event loop, docs behind the key).
"""

from __future__ import annotations

import gc
import http.client
import json
import os
import re
import signal
import socket
import threading
import time
from contextlib import closing, contextmanager
from typing import Iterator, Optional

import fastapi.routing
import pytest
from fastapi.testclient import TestClient

from helpers import (
    free_port,
    make_table,
    start_serve_py,
    wait_client_ready,
    wait_server_ready,
)
from modelsphere.inference.predictor import Predictor
from modelsphere.serving.app import ServeSettings, create_app, thin_path
from modelsphere.serving.routing import SCORING_THREAD_NAME
from modelsphere.serving.schemas import PredictResponse

pytestmark = pytest.mark.pipeline

READ_TIMEOUT = 1.0  # serve.timeout_request_read in the served process
WAIT = 15.0  # the longest a test waits for an answer it expects
KEY = "edge-test-key-123"
NAME = "tiny_binary"


def records(rows: int, seed: int = 1) -> list:
    frame = make_table(rows=rows, seed=seed).drop(columns=["label"])
    return json.loads(frame.to_json(orient="records"))


def body_of(rows: int) -> bytes:
    return json.dumps({"records": records(rows)}).encode()


@pytest.fixture(scope="module")
def served(tmp_path_factory, trained_runs):
    run_dir = trained_runs.copy("binary_one_epoch", tmp_path_factory.mktemp("edges"))
    port = free_port()
    process = start_serve_py(
        run_dir, port, f"serve.timeout_request_read={READ_TIMEOUT}", "device=cpu"
    )
    wait_server_ready(process, f"http://127.0.0.1:{port}")
    yield port, process
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=60)[0]
    assert "Traceback" not in output, output[-3000:]


def raw_exchange(port: int, payload: bytes) -> bytes:
    """Send `payload` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        if payload:
            sock.sendall(payload)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


def parsed(response: bytes):
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = dict(
        line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:]
    )
    return status, headers, json.loads(body)


def engine_calls_via(connection: http.client.HTTPConnection) -> dict:
    """/metrics' engine calls per path (batcher, direct), read on `connection`."""
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    found = re.findall(
        r'^modelsphere_engine_calls_total\{via="(\w+)"\} (\S+)$', text, re.M
    )
    return {via: float(count) for via, count in found}


def test_a_request_on_the_only_connection_skips_the_batcher(served):
    """serving.protocol puts the worker's open connections in each request's
    scope: on its only one, no other request can join a request, so it is
    scored at once on the loop (via="direct"); with a second connection open,
    it goes through the batcher."""
    port, _ = served
    headers = {"Content-Type": "application/json"}

    def post_on(connection, seeds):
        for seed in seeds:
            connection.request(
                "POST", "/predict", json.dumps(one_record(seed)), headers
            )
            response = connection.getresponse()
            assert response.status == 200, response.read()
            response.read()

    with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)) as one:
        before = engine_calls_via(one)
        post_on(one, range(3))
        alone = engine_calls_via(one)
        with closing(
            http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        ) as two:
            two.request("GET", "/v2/health/live")  # open, answered, kept alive
            assert two.getresponse().read()
            post_on(one, range(2))
            beside = engine_calls_via(one)
    assert alone["direct"] - before["direct"] == 3
    assert alone["batcher"] == before["batcher"]
    assert beside["batcher"] - alone["batcher"] == 2
    assert beside["direct"] == alone["direct"]


# ----------------------------------------------------------------------------
# 8. Idle and half-sent connections are timed out


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # connects, never sends
        b"POST /predict HTTP/1.1\r\nHost: x\r\n",  # half a head
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"records": [',  # half a body
    ],
    ids=["idle", "half-head", "half-body"],
)
def test_a_connection_that_does_not_send_its_request_is_closed_with_408(
    served, payload
):
    port, _ = served
    started = time.monotonic()
    status, headers, body = parsed(raw_exchange(port, payload))
    assert status == 408
    assert headers["content-type"] == "application/json"
    assert "serve.timeout_request_read" in body["error"]
    assert time.monotonic() - started < WAIT


def test_a_keep_alive_connection_is_not_cut_while_requests_arrive(served):
    port, _ = served
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        for _ in range(3):  # each well within the read timeout, 3 x longer in all
            connection.request("GET", "/v2/health/live")
            assert connection.getresponse().read() == b'{"live":true}'
            time.sleep(READ_TIMEOUT / 2)
    finally:
        connection.close()


def test_a_request_the_http_parser_refuses_gets_the_json_error(served):
    port, _ = served
    status, headers, body = parsed(
        raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n")
    )
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert body["error"].startswith("invalid HTTP request")
    assert body["detail"] == []


# ----------------------------------------------------------------------------
# 8. Health answers off the scoring path


@pytest.fixture()
def app_for(trained_runs, tmp_path):
    copies: dict = {}  # recipe -> this test's copy of its run

    @contextmanager
    def make(recipe: str = "binary_one_epoch", **settings) -> Iterator[TestClient]:
        if recipe not in copies:
            copies[recipe] = trained_runs.copy(recipe, tmp_path)
        run_dir = copies[recipe]
        settings.setdefault("engine", "torch")
        app = create_app(ServeSettings(run_dir=str(run_dir), **settings))
        with TestClient(app) as client:
            wait_client_ready(client)
            yield client

    return make


def test_large_requests_are_parsed_and_scored_on_the_scoring_thread(
    app_for, monkeypatch
):
    threads = []
    score = Predictor.predict_records

    def recording(self, rows):
        threads.append(threading.current_thread().name)
        return score(self, rows)

    monkeypatch.setattr(Predictor, "predict_records", recording)
    small, large = body_of(1), body_of(200)
    # (batching off: with it on, a small request is scored on the scoring thread
    # as well, with the others that arrive with it: the tests below)
    with app_for(inline_max_bytes=len(small), batching=False) as client:
        for body in (small, large):
            response = client.post(
                "/predict", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 200, response.text
    small_on, large_on = threads[-2:]  # (the model's warm-up came first)
    assert small_on != SCORING_THREAD_NAME
    assert large_on == SCORING_THREAD_NAME


def test_liveness_answers_while_a_large_request_is_being_scored(app_for, monkeypatch):
    release, scoring = threading.Event(), threading.Event()
    score = Predictor.predict_records

    def blocked(self, rows):
        if len(rows) > 1:
            scoring.set()
            release.wait(WAIT)
        return score(self, rows)

    monkeypatch.setattr(Predictor, "predict_records", blocked)
    with app_for(inline_max_bytes=0) as client:
        answers = []
        sender = threading.Thread(
            target=lambda: answers.append(
                client.post("/predict", json={"records": records(50)})
            )
        )
        sender.start()
        try:
            assert scoring.wait(WAIT)
            assert client.get("/v2/health/live").json() == {"live": True}
            assert client.get("/v2/health/ready").json() == {"ready": True}
        finally:
            release.set()
            sender.join(WAIT)
        assert answers[0].status_code == 200


# ----------------------------------------------------------------------------
# Small requests that arrive together share one engine call (issue 15;
# serving/batching.py), and a well-formed one takes the thin path
# (serving/thin_path.py)


class EngineCalls:
    """Records the rows of each call of the model after `arm()`; while held,
    the first such call waits for `release()`."""

    def __init__(self, monkeypatch):
        self.sizes: list = []
        self.armed = False
        self.held, self.started = threading.Event(), threading.Event()
        score = Predictor.predict_records

        def recorded(predictor, rows):
            if self.armed:
                self.sizes.append(len(rows))
                if not self.started.is_set():
                    self.started.set()
                    self.held.wait(WAIT)
            return score(predictor, rows)

        monkeypatch.setattr(Predictor, "predict_records", recorded)

    def arm(self) -> None:
        self.armed = True

    def release(self) -> None:
        self.held.set()


def posted_together(
    client, bodies: list, engine: EngineCalls, queued: Optional[int] = None
) -> list:
    """Each body in its own request; the first holds the engine while the rest
    (or `queued` of them) queue behind it; then the engine is released. The
    responses, in order."""
    queued = len(bodies) - 1 if queued is None else queued
    responses: list = [None] * len(bodies)

    def send(index: int) -> None:
        responses[index] = client.post("/predict", json=bodies[index])

    senders = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    engine.arm()
    senders[0].start()
    assert engine.started.wait(WAIT)
    for sender in senders[1:]:
        sender.start()
    batcher = client.app.state.batcher
    deadline = time.monotonic() + WAIT
    while batcher.queued < queued and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batcher.queued == queued
    engine.release()
    for sender in senders:
        sender.join(WAIT)
    return responses


def one_record(seed: int) -> dict:
    return {"records": records(1, seed=seed)}


def test_requests_that_queue_behind_the_engine_share_one_call(app_for, monkeypatch):
    engine = EngineCalls(monkeypatch)
    bodies = [one_record(seed) for seed in range(6)]
    with app_for() as client:
        together = posted_together(client, bodies, engine)
        engine.armed = False
        alone = [client.post("/predict", json=body) for body in bodies]
        calls = client.get("/metrics").text
    assert engine.sizes == [1, 5]  # the first alone, the five queued in one call
    assert [r.status_code for r in together] == [200] * len(bodies)
    # each request gets its own records' answer, as when it is scored alone
    assert [r.json() for r in together] == [r.json() for r in alone]
    assert len({json.dumps(r.json()) for r in alone}) == len(bodies)
    # 2 shared + 6 alone, all through the batcher (in process: no connections)
    assert 'modelsphere_engine_calls_total{via="batcher"} 8.0' in calls


def test_a_batch_holds_at_most_batch_max_rows_and_a_larger_request_is_alone(
    app_for, monkeypatch
):
    engine = EngineCalls(monkeypatch)
    bodies = [one_record(1), {"records": records(3)}] + [
        one_record(seed) for seed in (2, 3, 4)
    ]
    with app_for(batch_max_rows=2) as client:
        together = posted_together(client, bodies, engine, queued=3)
    assert [r.status_code for r in together] == [200] * len(bodies)
    # 3 rows > batch_max_rows: the handler's own call, on the loop, not queued;
    # the three single records behind the held one: 2, then 1
    assert sorted(engine.sizes) == [1, 1, 2, 3]


def test_a_bad_record_fails_only_its_own_request_in_a_shared_call(app_for, monkeypatch):
    engine = EngineCalls(monkeypatch)
    # finite, but beyond float32 once scaled: a model with standard scaling and
    # no numeric embedding refuses it (tests/pipeline/test_hostile_second_pass.py)
    bad = {"records": [dict(records(1, seed=5)[0], income=1e308)]}
    bodies = [one_record(1), one_record(2), bad, one_record(3)]
    with app_for("binary_standard") as client:
        together = posted_together(client, bodies, engine)
    assert [r.status_code for r in together] == [200, 200, 422, 200]
    detail = together[2].json()["detail"]
    assert [d["loc"] for d in detail] == [["body", "records", 0, "income"]]
    assert "out of the range" in together[2].json()["error"]
    # the shared call failed; each of its requests was then scored alone
    assert engine.sizes == [1, 3, 1, 1, 1]


def test_without_batching_each_request_is_its_own_call(app_for, monkeypatch):
    engine = EngineCalls(monkeypatch)
    with app_for(batching=False) as client:
        assert client.app.state.batcher is None
        engine.arm()
        engine.release()
        for seed in range(3):
            assert client.post("/predict", json=one_record(seed)).status_code == 200
    assert engine.sizes == [1, 1, 1]


def test_a_well_formed_request_takes_the_thin_path_with_the_same_answer(
    app_for, monkeypatch
):
    """The thin path answers without FastAPI's response serialisation, and
    what it answers is what the route's full handler answers."""
    serialised = []
    full = fastapi.routing.serialize_response

    async def counted(*args, **kwargs):
        serialised.append(1)
        return await full(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "serialize_response", counted)
    body = {"records": records(3)}
    del body["records"][1]["customer_id"]  # no id: none in its answer either
    with app_for(api_key=KEY) as client:
        headers = {"X-API-Key": KEY}
        serialised.clear()  # (the readiness probe's answer)
        thin = client.post("/predict", json=body, headers=headers)
        assert serialised == []
        thin_path(client.app, "/predict").thin_handler = None
        full_answer = client.post("/predict", json=body, headers=headers)
        assert serialised == [1]
    assert thin.status_code == full_answer.status_code == 200
    assert thin.json() == full_answer.json()
    assert thin.headers["content-type"] == full_answer.headers["content-type"]
    PredictResponse.model_validate_json(thin.content)
    assert [set(p) for p in thin.json()["predictions"]] == [
        {"id", "prediction", "probabilities"},
        {"prediction", "probabilities"},
        {"id", "prediction", "probabilities"},
    ]


def test_a_loaded_worker_freezes_its_start_up_heap(app_for):
    """serve.freeze_startup_heap (serving/heap.py): once the model is loaded,
    the objects alive leave the garbage collector's scans; the setting off,
    they stay in them."""
    gc.unfreeze()
    with app_for(freeze_startup_heap=False):
        assert gc.get_freeze_count() == 0
    with app_for():  # the default
        assert gc.get_freeze_count() > 0


@pytest.mark.parametrize(
    "headers, content, status",
    [
        ({"content-type": "application/json"}, body_of(1), 401),  # no key
        ({"X-API-Key": "wrong", "content-type": "application/json"}, body_of(1), 401),
        ({"X-API-Key": KEY, "content-type": "text/plain"}, body_of(1), 415),
        ({"X-API-Key": KEY, "content-type": "application/json"}, b'{"records": [', 422),
        (
            {"X-API-Key": KEY, "content-type": "application/json"},
            json.dumps({"records": [{"age": "forty"}]}).encode(),
            422,
        ),
    ],
    ids=["no-key", "wrong-key", "not-json", "broken-json", "invalid-record"],
)
def test_the_thin_path_leaves_every_refusal_to_the_full_handler(
    app_for, headers, content, status
):
    declined = []
    with app_for(api_key=KEY) as client:
        route = thin_path(client.app, "/predict")
        thin = route.thin_handler

        async def recorded(request, body):
            response = await thin(request, body)
            declined.append(response is None)
            return response

        route.thin_handler = recorded
        response = client.post("/predict", content=content, headers=headers)
    assert declined == [True]
    assert response.status_code == status, response.text
    assert response.json()["error"]


# ----------------------------------------------------------------------------
# 8. Docs, schema and the model's routes behind the key


GUARDED = ["/docs", "/redoc", "/openapi.json", f"/v2/models/{NAME}/ready"]


@pytest.mark.parametrize("path", GUARDED)
def test_with_a_key_docs_schema_and_model_routes_require_it(app_for, path):
    with app_for(api_key=KEY) as client:
        assert client.get(path).status_code == 401
        deadline = time.monotonic() + WAIT
        while (
            answer := client.get(path, headers={"X-API-Key": KEY})
        ).status_code == 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert answer.status_code == 200, answer.text


def test_open_docs_with_a_key_is_a_setting(app_for):
    with app_for(api_key=KEY, docs_require_key=False) as client:
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/docs").status_code == 200
    with app_for() as client:  # no key: all open
        assert client.get("/openapi.json").status_code == 200


def test_the_key_is_a_documented_security_scheme(app_for):
    """/docs shows an "Authorize" button: the key is an OpenAPI security scheme
    (either header) on the model's routes, and on none without a key."""
    with app_for(api_key=KEY) as client:
        schema = client.get("/openapi.json", headers={"X-API-Key": KEY}).json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": schemes["ApiKey"]["description"],
    }
    assert schemes["Bearer"]["scheme"] == "bearer"
    security = schema["paths"]["/predict"]["post"]["security"]
    assert {"ApiKey": []} in security and {"Bearer": []} in security
    assert "security" not in schema["paths"]["/v2/health/live"]["get"]
    with app_for() as client:
        assert "securitySchemes" not in client.get("/openapi.json").json().get(
            "components", {}
        )


def test_health_probes_need_no_key(app_for):
    with app_for(api_key=KEY) as client:
        assert client.get("/v2/health/live").status_code == 200


# ----------------------------------------------------------------------------
# 5. SIGTERM drains: no request is dropped


class Load:
    """`clients` keep-alive connections sending single-record requests in turn,
    and a readiness probe, until stopped. A request is *failed* when it was sent
    and got no complete 200 answer; a connection refused (the server has stopped
    listening) sent nothing."""

    def __init__(self, port: int, clients: int):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"ok": 0, "failed": 0, "refused": 0}
        self.failures: list = []
        self.readiness: list = []
        self.body = body_of(1)
        self.threads = [
            threading.Thread(target=self._client) for _ in range(clients)
        ] + [threading.Thread(target=self._probe)]

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(WAIT)

    def _count(self, outcome: str, detail: str = "") -> None:
        with self.lock:
            self.counts[outcome] += 1
            if outcome == "failed":
                self.failures.append(detail)

    def _client(self) -> None:
        headers = {"content-type": "application/json"}
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        while not self.stop.is_set():
            try:
                connection.request("POST", "/predict", self.body, headers)
            except ConnectionRefusedError:
                self._count("refused")
                connection.close()
                time.sleep(0.01)
                continue
            except OSError as exc:  # a request written on a dying connection
                self._count("failed", f"send: {exc!r}")
                connection.close()
                continue
            try:
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                self._count("failed", f"answer: {exc!r}")
                connection.close()
                continue
            if response.status == 200:
                self._count("ok")
            else:
                self._count("failed", f"status {response.status}")

    def _probe(self) -> None:
        while not self.stop.is_set():
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                connection.request("GET", "/v2/health/ready")
                status = connection.getresponse().status
            except OSError:
                status = None
            finally:
                connection.close()
            with self.lock:
                self.readiness.append(status)
            time.sleep(0.05)


@contextmanager
def killed_if_left(process) -> Iterator[None]:
    """serve.py is killed if it is still running when the block ends."""
    try:
        yield
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


class ServerLog:
    """serve.py's output, read line by line on a thread while it runs."""

    def __init__(self, process):
        self.lines: list = []
        self.reader = threading.Thread(
            target=lambda: self.lines.extend(iter(process.stdout.readline, ""))
        )
        self.reader.start()

    def wait_for(self, text: str, times: int) -> None:
        deadline = time.monotonic() + 60
        while sum(text in line for line in list(self.lines)) < times:
            assert time.monotonic() < deadline, "".join(self.lines)[-3000:]
            time.sleep(0.05)

    def text(self) -> str:
        self.reader.join(WAIT)
        return "".join(self.lines)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_drains_without_dropping_a_request(
    trained_runs, tmp_path, workers
):
    run_dir = trained_runs.copy("binary_one_epoch", tmp_path)
    port = free_port()
    process = start_serve_py(
        run_dir,
        port,
        "serve.drain_seconds=2",
        f"serve.workers={workers}",
        "device=cpu",
    )
    log = ServerLog(process)
    with killed_if_left(process):
        log.wait_for("model ready", times=workers)  # every worker's
        with Load(port, clients=8) as load:
            time.sleep(1.5)
            ok_before = load.counts["ok"]
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        output = log.text()
    assert ok_before > 0
    assert load.counts["failed"] == 0, (load.counts, load.failures[:5])
    assert load.counts["ok"] > ok_before  # served during the drain too
    assert 503 in load.readiness  # readiness failed first
    assert "draining" in output
    assert "Traceback" not in output, output[-3000:]


def test_an_idle_service_still_drains_before_it_stops_listening(trained_runs, tmp_path):
    """A load balancer may open a connection per request: with no connection
    open at SIGTERM, the service still answers readiness 503 for the drain."""
    run_dir = trained_runs.copy("binary_one_epoch", tmp_path)
    port = free_port()
    process = start_serve_py(run_dir, port, "serve.drain_seconds=3", "device=cpu")
    with killed_if_left(process):
        wait_server_ready(process, f"http://127.0.0.1:{port}")
        process.send_signal(signal.SIGTERM)
        time.sleep(1)  # well inside the drain
        status, _, body = parsed(
            raw_exchange(
                port,
                b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n"
                b"Connection: close\r\n\r\n",
            )
        )
        assert status == 503 and "draining" in body["error"]
        process.communicate(timeout=30)


def test_a_drain_that_runs_out_says_what_it_cut(trained_runs, tmp_path):
    """A connection still open when serve.drain_seconds ends (here a half-sent
    request, with a read timeout longer than the drain) is closed, and the log
    says so: a window too short for the traffic is visible."""
    run_dir = trained_runs.copy("binary_one_epoch", tmp_path)
    port = free_port()
    process = start_serve_py(
        run_dir,
        port,
        "serve.drain_seconds=1",
        "serve.timeout_request_read=60",
        "device=cpu",
    )
    log = ServerLog(process)
    with killed_if_left(process):
        log.wait_for("model ready", times=1)
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        output = log.text()
    assert "serve.drain_seconds=1 ran out with 1 connection(s) open" in output


# ----------------------------------------------------------------------------
# 7. Metrics of several workers add up


def scraped_count(port: int, route: str) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    series = f'modelsphere_requests_total{{method="GET",route="{route}",status="200"}}'
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(series)]
    return float(values[0]) if values else 0.0


def test_two_workers_report_the_requests_of_both(trained_runs, tmp_path):
    """Requests spread over 2 workers by concurrent connections; every scrape,
    whichever worker answers it, counts all of them."""
    run_dir = trained_runs.copy("binary_one_epoch", tmp_path)
    port = free_port()
    process = start_serve_py(run_dir, port, "serve.workers=2", "device=cpu")
    requests, clients = 48, 8
    with killed_if_left(process):
        wait_server_ready(process, f"http://127.0.0.1:{port}")

        def client() -> None:
            for _ in range(requests // clients):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
                connection.request("GET", "/v2/health/live")
                assert connection.getresponse().status == 200
                connection.close()

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # a request is counted once its response has gone out: the last may
        # still be on its way to the shared files when its client returns
        deadline = time.monotonic() + WAIT
        while scraped_count(port, "/v2/health/live") < requests:
            assert time.monotonic() < deadline, "requests never all counted"
            time.sleep(0.05)
        counts = [scraped_count(port, "/v2/health/live") for _ in range(8)]
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0]
    assert counts == [float(requests)] * len(counts)
    shared = output.split("metrics of the 2 workers are summed in ")[1].split()[0]
    assert not os.path.exists(shared)  # the workers' files are removed at exit
