"""docs/report/build.py renders the trade-off report PDF from benchmark results."""

from __future__ import annotations

import json
import os
import runpy
import subprocess

import pytest
from markupsafe import escape
from pypdf import PdfReader

from helpers import REPO

BUILD = REPO / "docs" / "report" / "build.py"
SECTIONS = [
    "1. Problem statement",
    "2. Decision categories and options",
    "3. Architecture",
    "4. Decision 1: CPU vs GPU training",
    "5. Decision 2: Parquet vs CSV storage",
    "6. Decision 3: batch vs real-time inference",
    "7. The other four categories",
    "8. Threats to validity",
]


def _train_throughput():
    loops = {
        "ours": 307_091.2,
        "bare_randperm_loop": 330_421.6,
        "ours_with_dropout_0.1": 207_721.8,
        "per_row_dataloader": 133_865.5,
    }
    return {
        "benchmark": "train_throughput",
        "date": "2026-01-02T03:04:05+00:00",
        "machine": {"processor": "Test CPU", "cpu_count": 2, "device": "cpu"},
        "setup": {
            "rows": 1000,
            "numeric_features": 4,
            "hidden_sizes": [8],
            "batch_size": 64,
        },
        "results": {name: {"rows_per_second": v} for name, v in loops.items()},
        "ratios": {
            "ours_vs_bare_randperm_loop": 0.93,
            "ours_vs_per_row_dataloader": 2.29,
        },
    }


def _serve_load():
    def cell(rows, concurrency, rps, p99):
        return {
            "rows": rows,
            "concurrency": concurrency,
            "requests_per_second": rps,
            "rows_per_second": rps * rows,
            "latency_ms": {"p50": 0.39, "p99": p99},
        }

    cells = [cell(1, 1, 2491.0, 0.54), cell(1, 8, 2654.0, 5.16)]
    cells.append(cell(64, 8, 880.0, 15.7))
    return {
        "benchmark": "serve_load",
        "date": "2026-01-02T03:04:05+00:00",
        "machine": {"processor": "Test CPU", "cpu_count": 2},
        "load_average": {"start": [0.5, 0.4, 0.3], "end": [1.5, 1.0, 0.8]},
        "results": [{"engine": "onnx", "workers": 1, "cells": cells}],
        "http_overhead": {"onnx,rows=1": {"http_overhead_ms": 0.25}},
        "faster_engine": {"onnx_over_torch_geometric_mean": 1.21},
        "in_process": {"onnx": {"64": {"engine_forward_us_per_row": 1.0}}},
    }


def _pdf_text(path) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(path).pages)


def _build(argv):
    return runpy.run_path(str(BUILD))["main"](argv)


def weasyprint_or_skip() -> None:
    """WeasyPrint needs Pango from the system. Where it is absent the PDF test is
    skipped with the reason, except in CI (CI set), where it must run."""
    try:
        import weasyprint  # noqa: F401
    except (ImportError, OSError) as exc:
        if os.environ.get("CI"):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        pytest.skip(f"WeasyPrint cannot load its system libraries here: {reason}")


def test_report_from_fixture_results(tmp_path):
    weasyprint_or_skip()
    results = tmp_path / "results"
    results.mkdir()
    (results / "train_throughput.json").write_text(json.dumps(_train_throughput()))
    (results / "serve_load.json").write_text(json.dumps(_serve_load()))
    (results / "quality.json").write_text("{not json")  # unreadable: not measured
    out, svg = tmp_path / "report.pdf", tmp_path / "architecture.svg"

    argv = ["--results", str(results), "--out", str(out), "--diagram-svg", str(svg)]
    assert _build(argv) == 0

    text = _pdf_text(out)
    flat = " ".join(text.split())
    for title in SECTIONS:
        assert title in flat, title
    # The architecture diagram is in the PDF (labels only it carries) and on disk.
    assert "run dir: model.safetensors" in flat and "each its own shard" in flat
    assert svg.read_text().lstrip().startswith("<?xml")
    assert "<svg" in svg.read_text()
    # Measured figures are quoted from the results; missing files say so.
    assert "307,091 rows/s" in flat and "2.29x" in flat
    assert "2,491 req/s" in flat and "0.54 ms" in flat
    assert "not measured yet" in flat
    assert "storage_formats.json" in flat
    assert "not measured yet (python -m benchmarks.quality)" in flat
    assert not list(tmp_path.glob("*.tmp"))
    # The commit it was built from, for the staleness test below.
    keywords = PdfReader(out).metadata["/Keywords"]
    assert keywords.startswith("modelsphere-commit:") and len(keywords) > 40


def test_report_without_node_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `node` on it
    out = tmp_path / "report.pdf"
    code = _build(["--results", str(tmp_path), "--out", str(out), "--diagram-svg", ""])
    assert code == 1
    assert "Node.js 'node' not found: `make report` installs it" in (
        capsys.readouterr().err
    )
    assert not out.exists()


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)


def test_the_committed_report_was_built_from_an_ancestor_with_the_same_inputs():
    """The PDF in docs/ says which commit it was built from (its Keywords); that
    commit is an ancestor of HEAD and nothing the report reads (its result files
    and its own sources) has changed since, in history or in the working tree.
    Otherwise the PDF's figures are stale: run `make report`, then commit."""
    if _git("rev-parse", "HEAD").returncode != 0:
        pytest.skip("not a git checkout")
    build = runpy.run_path(str(BUILD))
    keywords = PdfReader(REPO / "docs" / "tradeoff_report.pdf").metadata.get(
        "/Keywords", ""
    )
    prefix, dirty = build["STAMP_PREFIX"], build["DIRTY_SUFFIX"]
    assert keywords.startswith(prefix), f"no commit stamp in the PDF: {keywords!r}"
    commit = keywords[len(prefix) :]
    assert not commit.endswith(dirty), (
        f"the PDF was built from uncommitted inputs ({commit}): commit them, then "
        "run `make report`"
    )
    ancestor = _git("merge-base", "--is-ancestor", commit, "HEAD")
    assert (
        ancestor.returncode == 0
    ), f"the PDF's commit {commit} is not in HEAD's history"
    changed = _git("diff", "--name-only", commit, "--", *build["REPORT_INPUTS"])
    assert changed.returncode == 0, changed.stderr
    assert not changed.stdout.strip(), (
        f"the report's inputs changed since the PDF was built from {commit}: "
        f"{changed.stdout.split()}; run `make report`"
    )


def test_the_decisions_decide_and_gaps_are_stated_not_coloured():
    """From the committed results: page 1 names each decision's primary option
    and its switch point as a number; every missed target says why; what is not
    measured sits in the pending note, not as red cells before the appendices."""
    module = runpy.run_path(str(BUILD))
    results = module["load_results"](REPO / "benchmarks" / "results")
    html = module["render_html"](results, "<svg></svg>")
    body = html.split("Appendix A.")[0]
    assert 'class="missing"' not in body
    assert "The decisions at a glance" in body
    crossovers = module["all_facts"](results)["crossovers"]
    for name in ("cpu_row_epochs", "batch_records", "parquet_size"):
        assert crossovers[name].measured and str(crossovers[name]) in body, name
    rows = module["all_facts"](results)["requirements"]
    assert rows
    for row in rows:
        reason = row["why"] or "reason not established by this run"
        assert row["met"] or str(escape(reason)) in body, row
    if not module["all_facts"](results)["gpu_measured"]:
        assert "Pending measurements." in body


def _distributed_scale():
    def run(rows_per_second, peaks):
        return {"rows_per_second": rows_per_second, "peak_rss_mib_per_process": peaks}

    def target(measured, met=True):
        return {"goal": "a goal", "measured": measured, "met": met}

    one, two = "1 process x 2 threads", "2 processes x 1 thread, shards"
    return {
        "setup": {"rows": 1_000_000},
        "results": {one: run(117_912.0, [1171.2]), two: run(82_441.0, [948.0, 887.0])},
        "libraries_peak_rss_mib": 397.4,
        "memory": {
            "setup": {"rows": 20_000_000},
            "results": {one: run(1.0, [8869.1]), two: run(1.0, [4822.3, 4801.0])},
        },
        "targets": {
            "rows_per_process": target({"held": [350_000, 350_000]}),
            "peak_rss_ratio": target(0.544),
            "stream_speed": target(0.77, met=False),
        },
    }


def test_the_scaling_out_row_and_its_targets_come_from_the_scale_results(tmp_path):
    """Section 4's "Scaling out" row quotes distributed_scale.json and
    stream_scale.json, and each of their targets is a requirement row, a count
    per process printed as counts."""
    module = runpy.run_path(str(BUILD))
    (tmp_path / "distributed_scale.json").write_text(json.dumps(_distributed_scale()))
    stream = {
        "setup": {"rows": 20_000_000},
        "targets": {"peak_rss": {"goal": "g", "measured": 1644.4, "met": True}},
    }
    (tmp_path / "stream_scale.json").write_text(json.dumps(stream))
    results = module["load_results"](tmp_path)
    flat = " ".join(module["render_html"](results, "<svg></svg>").split())
    assert "117,912 rows/s (1 process x 2 threads) against 82,441 rows/s" in flat
    assert "8,869 MiB alone, 4,822 MiB with 2 shards (0.54x)" in flat
    assert "the libraries (397 MiB)" in flat
    assert "one streamed epoch of 20,000,000 rows at 1,644 MiB" in flat
    rows = {
        row["name"]: row
        for row in module["all_facts"](results)["requirements"]
        if row["name"].startswith("scaling out")
    }
    assert rows["scaling out: rows per process"]["value"] == "held 350,000 / 350,000"
    assert rows["scaling out: peak rss ratio"]["value"] == "0.544"
    assert rows["scaling out: stream speed"]["met"] is False
    assert rows["scaling out: peak rss"]["source"] == "stream_scale.json"


def test_an_older_scale_result_without_the_memory_runs_is_quoted_as_not_measured(
    tmp_path,
):
    """A distributed_scale.json written before the memory runs (its ratio taken
    on the small table, no stream target): the memory cells read "not measured"
    and the targets it has are still listed; the report builds."""
    module = runpy.run_path(str(BUILD))
    older = _distributed_scale()
    del older["memory"], older["targets"]["stream_speed"]
    (tmp_path / "distributed_scale.json").write_text(json.dumps(older))
    results = module["load_results"](tmp_path)
    scale = module["all_facts"](results)["scale"]
    assert not scale["peak_ratio"].measured and not scale["peak_two"].measured
    assert scale["one"].measured
    names = [row["name"] for row in module["all_facts"](results)["requirements"]]
    assert "scaling out: peak rss ratio" in names
    assert "scaling out: stream speed" not in names
    module["render_html"](results, "<svg></svg>")
