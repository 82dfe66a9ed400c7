"""benchmarks.raw_graph at smoke size: the default data and one quality data set
exported, checked against predict.py's path with hostile rows, and the request
path and bulk chunk timed; results well formed (no timing is asserted)."""

from __future__ import annotations

import json
import runpy
import sys


def test_raw_graph_benchmark_smoke(tmp_path, monkeypatch):
    argv = ["raw_graph.py", "--datasets", "penguins", "--max-epochs", "1"]
    argv += ["--calls", "20", "--rounds", "1", "--chunk-rows", "512"]
    argv += ["--work-dir", str(tmp_path / "work"), "--out", str(tmp_path)]
    argv += ["--name", "smoke"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_module("benchmarks.raw_graph", run_name="__main__", alter_sys=True)

    payload = json.loads((tmp_path / "smoke.json").read_text())
    agreement = payload["agreement"]
    assert list(agreement) == ["telco (default data)", "penguins"]
    for cell in agreement.values():
        assert cell["agrees"] is True
        assert cell["rows"] > cell["hostile_rows"] == 24
    assert agreement["penguins"]["task"] == "multiclass"
    request = payload["request_path"]
    assert len(request["microseconds"]) == 4
    assert request["ratio_to_bare_graph"] > 0
    assert set(request["by_request_rows"]) == {"1", "64", "512"}
    assert payload["bulk_chunk"]["rows"] == 512
    markdown = (tmp_path / "smoke.md").read_text()
    assert "2 of 2 data sets agree" in markdown
