"""benchmarks.inference_paths at a tiny size writes well-formed results (no
timings). Its own file: the longest smoke run, so pytest-xdist (loadfile) can
give it a worker of its own."""

from __future__ import annotations

import json
import runpy
import sys

import pytest


def test_inference_paths_smoke(tmp_path, monkeypatch, trained_runs):
    """Scores 2,000 Telco rows both ways with the session's Telco model, the
    batch paths taking turns (each round starting one path further on), profiles
    the batch path and summarises the serving results it is given."""
    run_dir = trained_runs.copy("telco_one_epoch", tmp_path)
    argv = ["inference_paths.py", "--rows", "2000", "--repeats", "2"]
    argv += ["--large-rows", "5000", "--run-dir", str(run_dir)]
    argv += ["--work-dir", str(tmp_path / "work"), "--out", str(tmp_path)]
    argv += ["--name", "smoke", "--serve-results", str(tmp_path / "absent.json")]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_module("benchmarks.inference_paths", run_name="__main__", alter_sys=True)
    payload = json.loads((tmp_path / "smoke.json").read_text())
    assert set(payload["batch"]) == {
        "parquet -> parquet",
        "csv -> parquet",
        "parquet -> parquet, engine=torch, no prefetch",
    }
    for result in payload["batch"].values():
        assert result["rows"] == 2000 and result["rows_per_second"] > 0
        assert result["in_process_seconds"] < result["seconds"]
    turns = {
        name: [(run["round"], run["turn"]) for run in result["runs"]]
        for name, result in payload["batch"].items()
    }
    assert turns == {
        "parquet -> parquet": [(0, 0), (1, 2)],
        "csv -> parquet": [(0, 1), (1, 0)],
        "parquet -> parquet, engine=torch, no prefetch": [(0, 2), (1, 1)],
    }
    earlier = payload["vs_earlier_path"]
    ratio = (
        payload["batch"]["parquet -> parquet"]["in_process_rows_per_second"]
        / payload["batch"]["parquet -> parquet, engine=torch, no prefetch"][
            "in_process_rows_per_second"
        ]
    )
    assert earlier["value"] == pytest.approx(ratio) and earlier["goal"] == 1.3
    assert earlier["met"] == (ratio >= 1.3)
    assert payload["large"]["rows"] == 5000
    assert payload["first_run_seconds_with_onnx_export"] > 0
    startup = payload["startup"]
    assert 0 < startup["seconds"] and len(startup["runs"]) == 2
    assert startup["rows_per_second_cap"] == pytest.approx(2000 / startup["seconds"])
    stages = payload["batch_profile"]["stages"]
    assert stages["model forward"] > 0 and stages["feature transform"] > 0
    assert sum(stages.values()) == pytest.approx(payload["batch_profile"]["seconds"])
    assert set(payload["single_record_in_process"]) == {"torch", "onnx"}
    assert payload["api"] is None
    floor = payload["model_forward_floor"]
    assert floor["flops_per_row"] > 2 * 256 * 256  # the default MLP's two layers
    assert payload["target"]["met"] is False  # 2,000 rows cannot amortise start-up
    assert isinstance(payload["target"]["in_process_met"], bool)
    markdown = (tmp_path / "smoke.md").read_text()
    assert "| parquet -> parquet |" in markdown and "not measured" in markdown
    assert "The same default run on 5,000 rows" in markdown
    assert "Target (issue 15)" in markdown
