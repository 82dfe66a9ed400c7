"""benchmarks.storage_formats runs at a tiny size and writes sane results."""

from __future__ import annotations

import json
import runpy
import sys


def test_storage_formats_smoke(tmp_path, monkeypatch):
    argv = ["storage_formats.py", "--rows", "1500", "--repeats", "1"]
    argv += ["--e2e-rows", "1200", "--e2e-repeats", "1"]
    argv += ["--work-dir", str(tmp_path / "work"), "--out", str(tmp_path)]
    argv += ["--name", "smoke"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_module("benchmarks.storage_formats", run_name="__main__", alter_sys=True)

    payload = json.loads((tmp_path / "smoke.json").read_text())
    assert payload["benchmark"] == "storage_formats"
    assert {"date", "machine", "versions", "load_average"} <= set(payload)
    (size,) = payload["sizes"]
    assert size["rows"] == 1500
    parquet, csv = size["formats"]["parquet"], size["formats"]["csv"]
    for result in (parquet, csv):
        assert result["file_bytes"] > 0 and result["write_seconds"] > 0
        for read in result["reads"].values():
            assert read["seconds"] > 0 and read["peak_rss_mib"] > 50
        assert result["reads"]["full"]["rows"] == 1500
        assert result["reads"]["three_columns"]["dtypes"].keys() == {
            "num_0",
            "cat_0",
            "target",
        }
        # Exact values back through the pipeline's reader, and its types kept.
        assert result["values_round_trip_exact"] is True
        assert result["types_changed"]["pipeline"] == {}
    # Compressed columnar storage is smaller; a schemaless CSV read loses the
    # id column's string type, Parquet keeps it.
    assert csv["file_bytes"] > parquet["file_bytes"]
    assert size["ratios_csv_over_parquet"]["file_bytes"] > 1
    assert parquet["types_changed"]["plain"] == {}
    assert csv["types_changed"]["plain"] == {"id": "string -> integer"}

    (e2e,) = payload["end_to_end"]
    assert e2e["rows"] == 1200
    for fmt, result in e2e["formats"].items():
        assert result["preprocess_seconds"] > 0 and result["train_seconds"] > 0
        assert result["processed_split_bytes"] > 0
    assert e2e["ratio_csv_over_parquet_total_seconds"] > 0
    assert not (tmp_path / "work").exists()  # generated data is removed

    markdown = (tmp_path / "smoke.md").read_text()
    assert "## Size, write and read" in markdown
    assert "| 1,500 | parquet |" in markdown and "| 1,200 | 1 | csv |" in markdown
