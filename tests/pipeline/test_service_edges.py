"""The service's edges under a hostile or careless client, and its shutdown
(issue #20, items 5 and 8; docs/bad_inputs.md, "Second pass").

serve.py runs as a user starts it (a subprocess on loopback) where the behaviour
lives in the HTTP server (timeouts, parser errors, SIGTERM); in process where it
lives in the app (large requests off the event loop, docs behind the key).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

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
from modelsphere.serving.app import ServeSettings, create_app
from modelsphere.serving.routing import SCORING_THREAD_NAME

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
    run_dir = trained_runs.copy("binary_one_epoch", tmp_path)

    @contextmanager
    def make(**settings) -> Iterator[TestClient]:
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
    with app_for(inline_max_bytes=len(small)) as client:
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
