"""benchmarks.serve_load at a tiny size: serve.py under the Python load client
(benchmarks/load_client.py, nothing to install) writes well-formed results (no
timing assertions). The published figures use wrk; the load client's own test is
tests/unit/test_load_client.py."""

from __future__ import annotations

import json
import runpy
import statistics
import sys

import pytest


def test_serve_load_smoke(tmp_path, monkeypatch, trained_runs):
    run_dir = trained_runs.copy("binary", tmp_path)
    argv = ["serve_load.py", "--run-dir", str(run_dir), "--engines", "torch"]
    argv += ["--workers", "1", "--rows", "1", "--concurrency", "1", "8"]
    argv += ["--duration", "1", "--warmup", "0", "--repeats", "2"]
    argv += ["--inprocess-calls", "20", "--out", str(tmp_path), "--name", "smoke"]
    argv += ["--client", "python"]  # installs with nothing: wrk is for the figures
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_module("benchmarks.serve_load", run_name="__main__", alter_sys=True)

    payload = json.loads((tmp_path / "smoke.json").read_text())
    assert payload["setup"]["engines"] == ["torch"]
    assert payload["setup"]["client"] == "python"
    assert payload["machine"]["cpu_count"] >= 1
    [config] = payload["results"]
    assert (config["engine"], config["workers"]) == ("torch", 1)
    [alone, cell] = config["cells"]
    assert (alone["rows"], alone["concurrency"]) == (1, 1)
    assert (cell["rows"], cell["concurrency"]) == (1, 8)
    assert cell["requests_per_second"] > 0 and cell["rows_per_second"] > 0
    assert cell["requests"] > 0 and cell["errors"] == 0
    assert len(cell["runs"]) == 2
    for run in cell["runs"]:
        assert run["connections_per_worker"] in (None, [8])  # None: no `ss` here
    assert 0 < cell["latency_ms"]["p50"] <= cell["latency_ms"]["p99"]
    timing = payload["in_process"]["torch"]["1"]
    assert timing["predict_records_ms"] > 0 and timing["engine_forward_ms"] > 0
    assert "torch,rows=1" in payload["http_overhead"]
    # the framework's floor in the same server: a constant-JSON route, each of
    # its runs beside one of the cell's (before it, then after it, in turn)
    floor = config["floor"]
    assert floor["requests"] > 0 and floor["errors"] == 0
    assert len(floor["runs"]) == len(cell["runs"]) == 2
    for round_, (own, constant) in enumerate(zip(cell["runs"], floor["runs"])):
        first, then = (constant, own) if round_ % 2 == 0 else (own, constant)
        assert first["started_monotonic"] < then["started_monotonic"]
        between = [
            run["started_monotonic"]
            for server in (payload["unbatched"], payload["unfrozen"])
            for run in server["cells"][1]["runs"] + server["floor"]["runs"]
        ]
        assert not any(
            first["started_monotonic"] < t < then["started_monotonic"] for t in between
        )
    [share] = [t for t in payload["targets"] if "constant JSON" in t["target"]]
    pairs = [
        own["requests_per_second"] / constant["requests_per_second"]
        for own, constant in zip(cell["runs"], floor["runs"])
    ]
    expected = statistics.median(pairs)
    expected_pairs = ", ".join(f"{pair:.2f}x" for pair in pairs)
    assert share["value"] == round(expected, 3) and share["met"] == (expected >= 0.6)
    assert {t["met"] for t in payload["targets"]} <= {True, False, None}
    assert payload["faster_engine"] is None  # one engine: nothing to compare
    # serve.batching both ways, side by side: the same engine, workers and size
    assert config["batching"] is True
    unbatched = payload["unbatched"]
    assert (unbatched["engine"], unbatched["workers"]) == ("torch", 1)
    assert unbatched["batching"] is False
    assert [(c["rows"], c["concurrency"]) for c in unbatched["cells"]] == [
        (1, 1),
        (1, 8),
    ]
    assert all(c["errors"] == 0 and c["requests"] > 0 for c in unbatched["cells"])
    # unbatched, each single-record request is its own engine call
    calls = unbatched["engine_calls"]
    assert calls["engine_calls"] == calls["records_scored"] > 0
    assert calls["records_per_engine_call"] == 1.0
    assert config["engine_calls"]["records_per_engine_call"] >= 1.0
    comparison = payload["batching_comparison"]
    ratio = comparison["batched_over_unbatched_requests_per_second"]["rows=1,c=8"]
    unbatched_c8 = unbatched["cells"][1]["requests_per_second"]
    assert ratio == cell["requests_per_second"] / unbatched_c8
    assert set(comparison["floor_share"]) == {"batched", "unbatched"}
    # serve.freeze_startup_heap both ways: the served default froze its heap
    # (its log says so), the compared server did not
    assert config["freeze_startup_heap"] is True and config["frozen_objects"][0] > 0
    unfrozen = payload["unfrozen"]
    assert unfrozen["freeze_startup_heap"] is False and unfrozen["batching"] is True
    assert unfrozen["frozen_objects"] == []
    assert [(c["rows"], c["concurrency"]) for c in unfrozen["cells"]] == [
        (1, 1),
        (1, 8),
    ]
    freeze = payload["heap_freeze_comparison"]["cells"]["rows=1,c=8"]
    assert freeze["p99_ms"]["frozen"] == cell["latency_ms"]["p99"]
    assert freeze["p99_ms"]["unfrozen"] == unfrozen["cells"][1]["latency_ms"]["p99"]
    # the three servers took turns, run by run: each repeat of each cell ran
    # on all of them before the next repeat began, the next round starting
    # one server further on
    servers = [config, unbatched, unfrozen]
    for position in range(2):  # (1 row, c=1) and (1 row, c=8)
        turns = sorted(
            (run["started_monotonic"], i)
            for i, server in enumerate(servers)
            for run in server["cells"][position]["runs"]
        )
        assert [i for _, i in turns] == [0, 1, 2, 1, 2, 0]
    markdown = (tmp_path / "smoke.md").read_text()
    assert "`serve.freeze_startup_heap` (torch, workers=1): p99 ms" in markdown
    assert "serve.batching=on, serve.freeze_startup_heap=off" in markdown
    assert "## engine=torch, workers=1, serve.batching=off" in markdown
    assert "`serve.batching` (torch, workers=1): batched/unbatched" in markdown
    assert "## engine=torch, workers=1" in markdown and "## Targets" in markdown
    assert "The framework's floor, GET `/v2/health/live`" in markdown
    # the share as the target reads it, with each pair's ratio
    assert (
        "Share of the floor, the median of the paired runs' ratios: "
        f"{share['value']:.2f}x (each pair {expected_pairs})" in markdown
    )


def test_a_floor_route_that_does_not_answer_200_stops_the_load(monkeypatch):
    from benchmarks import serve_load

    def status(url, body=None):  # /predict answers, the floor does not
        return 503 if url.endswith(serve_load.FLOOR_ROUTE) else 200

    monkeypatch.setattr(serve_load, "http_status", status)
    server = type("Server", (), {"base": "http://127.0.0.1:1"})()
    args = type("Args", (), {"warmup": 0, "repeats": 1})()
    with pytest.raises(SystemExit, match="the floor, did not answer 200"):
        serve_load.load_cells(args, [server], None, "{}", 1, 8, with_floor=True)
