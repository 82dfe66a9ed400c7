"""A closed-loop HTTP load client in Python: the serving benchmark's client where
wrk is not installed (its smoke test, and machines without Debian's wrk).

Like `wrk -c N`: N keep-alive connections, each in its own thread, each sending
the next request body as soon as the previous answer has arrived, for a fixed
time. It reports what serve_load.lua makes wrk report: the request count, the
duration, error counters by kind and latency percentiles in microseconds.
Threads share the GIL and the CPUs with the server, so on a small machine this
client saturates before the server does: its rates are lower bounds, and the
published serving figures come from wrk.
"""

from __future__ import annotations

import http.client
import math
import socket
import statistics
import threading
import time
from typing import Dict, List, Optional
from urllib.parse import urlsplit

PERCENTILES = (50, 90, 95, 99)
HEADERS = {"Content-Type": "application/json", "Connection": "keep-alive"}


class _Connection:
    """One client connection: sends bodies in turn, records latencies and errors."""

    def __init__(
        self,
        base: str,
        bodies: List[bytes],
        timeout: float,
        start: int,
        get: Optional[str] = None,
    ):
        parts = urlsplit(base)
        self.get = get
        self.host, self.port = parts.hostname, parts.port
        self.bodies, self.timeout, self.next = bodies, timeout, start
        self.latencies_us: List[float] = []
        self.errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
        self.connection = None

    def _connect(self) -> bool:
        self.connection = http.client.HTTPConnection(
            self.host, self.port, timeout=self.timeout
        )
        try:
            self.connection.connect()
        except OSError:
            self.errors["connect"] += 1
            self.connection = None
            return False
        return True

    def run(self, deadline: float) -> None:
        while time.perf_counter() < deadline:
            if self.connection is None and not self._connect():
                time.sleep(0.01)
                continue
            body = self.bodies[self.next % len(self.bodies)]
            self.next += 1
            started = time.perf_counter()
            try:
                if self.get is None:
                    self.connection.request("POST", "/predict", body, HEADERS)
                else:
                    self.connection.request("GET", self.get, headers=HEADERS)
            except OSError:
                self.errors["write"] += 1
                self.connection.close()
                self.connection = None
                continue
            try:
                response = self.connection.getresponse()
                response.read()
            except socket.timeout:
                self.errors["timeout"] += 1
                self.connection.close()
                self.connection = None
                continue
            except (OSError, http.client.HTTPException):
                self.errors["read"] += 1
                self.connection.close()
                self.connection = None
                continue
            self.latencies_us.append((time.perf_counter() - started) * 1e6)
            if response.status > 399:  # as wrk counts errors.status
                self.errors["status"] += 1
        if self.connection is not None:
            self.connection.close()


def percentile(sorted_values: List[float], p: float) -> float:
    """The nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def run_load(
    base: str,
    bodies: List[bytes],
    concurrency: int,
    seconds: float,
    timeout: float,
    get: Optional[str] = None,
) -> Dict:
    """`concurrency` connections for `seconds`; wrk's summary as a dict. `get`:
    GET that path (no body) instead of POSTing the bodies to /predict."""
    connections = [
        _Connection(base, bodies, timeout, start=i, get=get) for i in range(concurrency)
    ]
    started = time.perf_counter()
    deadline = started + seconds
    threads = [
        threading.Thread(target=c.run, args=(deadline,), daemon=True)
        for c in connections
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + timeout + 5)
    duration = time.perf_counter() - started
    latencies = sorted(x for c in connections for x in c.latencies_us)
    errors = {
        kind: sum(c.errors[kind] for c in connections) for kind in connections[0].errors
    }
    latency = {"min": 0.0, "mean": 0.0, "max": 0.0, "stdev": 0.0}
    latency |= {f"p{p}": 0.0 for p in PERCENTILES}
    if latencies:
        latency = {
            "min": latencies[0],
            "mean": statistics.fmean(latencies),
            "max": latencies[-1],
            "stdev": statistics.pstdev(latencies),
        } | {f"p{p}": percentile(latencies, p) for p in PERCENTILES}
    return {
        "requests": len(latencies),
        "duration_us": duration * 1e6,
        "errors": errors,
        "latency_us": latency,
    }
