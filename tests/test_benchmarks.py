"""Each benchmark runs at a tiny size and writes well-formed results (no timings)."""

from __future__ import annotations

import json
import runpy
import sys

from conftest import REPO


def test_train_throughput_smoke(tmp_path, monkeypatch):
    argv = ["train_throughput.py", "--rows", "3000", "--repeats", "1"]
    argv += ["--device", "cpu", "--out", str(tmp_path), "--name", "smoke"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(
        str(REPO / "benchmarks" / "train_throughput.py"), run_name="__main__"
    )
    payload = json.loads((tmp_path / "smoke.json").read_text())
    loops = {
        "ours",
        "bare_randperm_loop",
        "ours_with_dropout_0.1",
        "per_row_dataloader",
    }
    assert set(payload["results"]) == loops
    for result in payload["results"].values():
        assert result["rows_per_second"] > 0
        assert len(result["epoch_seconds"]) == 1
    assert payload["setup"]["rows"] == 3000
    assert payload["machine"]["device"] == "cpu"
    markdown = (tmp_path / "smoke.md").read_text()
    assert "| ours |" in markdown and "Ratios:" in markdown
