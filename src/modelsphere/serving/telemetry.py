"""Prometheus metrics: requests, latency, errors and rows scored, per route.

Each app has its own registry (so tests can build several apps). With several
uvicorn workers (`serve.workers`), whichever worker answers a scrape reports the
whole service: serve.py gives the workers one directory for prometheus_client's
multi-process mode (`worker_metrics`), every worker writes its counts there, and
`/metrics` sums them over the workers, the ones already gone included.
"""

import contextlib
import logging
import os
import shutil
import tempfile
import time
from typing import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.responses import Response

log = logging.getLogger(__name__)

# prometheus_client's switch to multi-process mode: read when it is imported,
# so it must be set before the workers start.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
)


class Telemetry:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelsphere_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "modelsphere_request_errors_total",
            "HTTP responses with status >= 400",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelsphere_request_latency_seconds",
            "time to answer a request",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rows = Counter(
            "modelsphere_rows_predicted_total",
            "rows scored",
            ["route"],
            registry=self.registry,
        )
        self.engine_calls = Counter(
            "modelsphere_engine_calls_total",
            "calls of the model on requests' records: small requests that arrive "
            "together share one (serve.batching); via: batcher (queued for the "
            "scoring thread, shared or not) or direct (scored where the request "
            "is handled: the event loop, or the scoring thread for a large one)",
            ["via"],
            registry=self.registry,
        )

    def render(self) -> Response:
        registry = self.registry
        if os.environ.get(MULTIPROCESS_ENV):  # every worker's counts, summed
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@contextlib.contextmanager
def worker_metrics(workers: int) -> Iterator[None]:
    """While the block runs, workers started from this process count into one
    fresh directory (removed afterwards), so their metrics add up. A directory
    the user set in PROMETHEUS_MULTIPROC_DIR is used as it is, and kept."""
    if workers <= 1 or os.environ.get(MULTIPROCESS_ENV):
        yield
        return
    directory = tempfile.mkdtemp(prefix="modelsphere-metrics-")
    os.environ[MULTIPROCESS_ENV] = directory
    log.info("metrics of the %d workers are summed in %s", workers, directory)
    try:
        yield
    finally:
        os.environ.pop(MULTIPROCESS_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware overhead): times every HTTP request and
    labels it by its route template, so /v2/models/{name} is one series."""

    def __init__(self, app, telemetry: Telemetry):
        self.app, self.telemetry = app, telemetry

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            telemetry = self.telemetry
            telemetry.requests.labels(scope["method"], template, str(status)).inc()
            telemetry.latency.labels(template).observe(time.perf_counter() - started)
            if status >= 400:
                telemetry.errors.labels(template, str(status)).inc()
