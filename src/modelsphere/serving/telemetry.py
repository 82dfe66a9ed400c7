"""Prometheus metrics: requests, latency, errors and rows scored, per route.

Each app has its own registry (so tests can build several apps). With several
uvicorn workers every worker counts its own requests: scrape each worker, or set
PROMETHEUS_MULTIPROC_DIR as prometheus_client documents for multi-process mode.
"""

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.responses import Response

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

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


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
