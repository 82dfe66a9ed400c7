"""benchmarks/load_client.py against a tiny server on loopback: requests are
counted, statuses > 399 are errors (as wrk counts them), latencies are ordered."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks.load_client import percentile, run_load


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn answers

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 500 if b"bad" in body else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_counts_requests_and_status_errors(server):
    bodies = [b'{"ok": 1}', b'{"bad": 1}']
    summary = run_load(server, bodies, concurrency=2, seconds=0.5, timeout=5)
    assert summary["requests"] > 4
    status_errors = summary["errors"]["status"]
    # each connection alternates good and bad bodies: about half are errors
    assert abs(status_errors - summary["requests"] / 2) <= 2
    assert sum(summary["errors"].values()) == status_errors
    latency = summary["latency_us"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p99"] <= latency["max"]
    assert summary["duration_us"] >= 0.5e6


def test_an_unreachable_server_is_a_connect_error():
    summary = run_load("http://127.0.0.1:9", [b"{}"], 1, seconds=0.2, timeout=1)
    assert summary["requests"] == 0 and summary["errors"]["connect"] > 0
    assert summary["latency_us"]["p99"] == 0.0


def test_percentile_is_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0
