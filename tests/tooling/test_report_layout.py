"""The report's layout as a reader meets it: a diagram legible at print size that
marks the three decisions, charts whose axes do not distort, table cells that
quote only representative measurements."""

from __future__ import annotations

import json
import re
import runpy
import shutil
import sys

import pytest

from helpers import REPO

REPORT = REPO / "docs" / "report"
sys.path.insert(0, str(REPORT))

import facts  # noqa: E402
import plots  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DIAGRAM = REPO / "docs" / "architecture.svg"
MM_PER_PT = 25.4 / 72
A4_MM = (210.0, 297.0)
# Body text is 9 pt (style.css); the diagram must not print smaller.
MIN_PRINTED_PT = 9.0


def _page_content_mm(css: str):
    """Width and height inside the @page margins of style.css."""
    margins = re.search(r"@page\s*{[^}]*?margin:\s*([^;]+);", css, re.S).group(1)
    top, right, bottom, left = (float(v.rstrip("mm")) for v in margins.split())
    return A4_MM[0] - left - right, A4_MM[1] - top - bottom


def test_the_committed_diagram_is_drawn_from_architecture_dot():
    """The tests below read docs/architecture.svg; it must be what the .dot
    gives today (`make report` redraws it)."""
    if shutil.which("node") is None or not (REPO / "node_modules/@viz-js/viz").is_dir():
        pytest.skip("Node.js or @viz-js/viz missing: `make report` installs them")
    drawn = runpy.run_path(str(REPORT / "build.py"))["render_diagram"]()
    assert drawn == DIAGRAM.read_text(), "run `make report` to redraw the diagram"


def test_the_diagram_prints_at_body_text_size_and_fits_one_page():
    css = (REPORT / "style.css").read_text()
    width_mm, height_mm = _page_content_mm(css)
    share = float(re.search(r"figure\.diagram svg\s*{\s*width:\s*(\d+)%", css)[1])
    svg = DIAGRAM.read_text()
    svg_w, svg_h = (
        float(v)
        for v in re.search(r'viewBox="0\.00 0\.00 ([\d.]+) ([\d.]+)"', svg).groups()
    )
    scale = width_mm * share / 100 / (svg_w * MM_PER_PT)
    sizes = [float(size) for size in re.findall(r'font-size="([\d.]+)"', svg)]
    assert sizes
    assert min(sizes) * min(scale, 1.0) >= MIN_PRINTED_PT, (min(sizes), scale)
    assert svg_h * MM_PER_PT * scale <= height_mm


def test_the_diagram_marks_the_three_decisions_and_the_config():
    svg = DIAGRAM.read_text()
    text = " ".join(re.findall(r">([^<>]+)</text>", svg))
    for label in (
        "Decision 1: CPU vs GPU",
        "Decision 2: Parquet vs CSV",
        "Decision 3: batch vs real time",
        "conf/ (Hydra)",
    ):
        assert label in text, label
    edges = set(re.findall(r"<title>(\w+)&#45;&gt;(\w+)</title>", svg))
    # Several processes are the training loop scaled out, not an alternative
    # path from the data: only the one loop reads the splits.
    assert ("parquet", "train") in edges and ("train", "scale") in edges
    assert not any(tail == "parquet" and head != "train" for tail, head in edges)
    assert any(tail == "conf" for tail, _ in edges)


@pytest.fixture(scope="module")
def results():
    return facts.load_results(RESULTS)


def _value_axes(fig):
    """(axis, which) for every axis that carries a measured value."""
    for ax in fig.axes:
        yield ax, ("x" if ax.get_xlabel().startswith("training rows/s") else "y")


@pytest.mark.parametrize("name", ["storage", "training", "serving"])
def test_value_axes_are_linear_from_zero(results, name):
    fig = {
        "storage": lambda: plots.storage_figure(results["storage_formats"]),
        "training": lambda: plots.training_figure(results),
        "serving": lambda: plots.serving_figure(results["serve_load"]),
    }[name]()
    assert fig is not None
    for ax, which in _value_axes(fig):
        scale = ax.get_xscale() if which == "x" else ax.get_yscale()
        low = (ax.get_xlim() if which == "x" else ax.get_ylim())[0]
        assert scale == "linear" and low == 0, (name, ax.get_title(), scale, low)
    plots.plt.close(fig)


def test_the_storage_chart_draws_csv_over_parquet_ratios(results):
    data = results["storage_formats"]
    fig = plots.storage_figure(data)
    ax = fig.axes[0]
    heights = sorted(round(bar.get_height(), 6) for bar in ax.patches)
    expected = sorted(
        round(getter(size["formats"]["csv"]) / getter(size["formats"]["parquet"]), 6)
        for size in data["sizes"]
        for _, getter in plots.STORAGE_RATIOS
    )
    assert heights == expected
    assert any(line.get_ydata()[0] == 1.0 for line in ax.get_lines())  # parity
    plots.plt.close(fig)


def test_every_chart_says_what_its_colours_are(results):
    for fig in (
        plots.storage_figure(results["storage_formats"]),
        plots.training_figure(results),
        plots.serving_figure(results["serve_load"]),
    ):
        labels = [
            text.get_text()
            for ax in fig.axes
            if ax.get_legend()
            for text in ax.get_legend().get_texts()
        ]
        assert labels, fig
        plots.plt.close(fig)
    fig = plots.training_figure(results)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == [plots.OURS_LABEL, plots.REFERENCE_LABEL]
    # Ticks read 50k, not 50000: no run of digits to count.
    fig.canvas.draw()
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks and all(len(tick) <= 5 for tick in ticks), ticks
    plots.plt.close(fig)


def test_two_worker_figures_come_from_runs_that_used_both_workers(results):
    """A cell where the kernel handed every connection to one worker measures
    one worker; the report must not quote it as two."""
    v = facts.serving(results)
    data = json.loads((RESULTS / "serve_load.json").read_text())
    quoted = {str(v[key]) for key in ("rps_2w_c8", "rows_64_2w")}
    for block in data["results"]:
        if block["workers"] != 2:
            continue
        for cell in block["cells"]:
            if facts.one_sided(cell) and cell["concurrency"] > 1:
                for key, form in (
                    ("requests_per_second", "{:,.0f} req/s"),
                    ("rows_per_second", "{:,.0f} rows/s"),
                ):
                    assert form.format(cell[key]) not in quoted, cell


@pytest.mark.parametrize(
    "mean, std, shown",
    [
        (23219.5242, 1740.7169, ("23,220", "± 1,741")),
        (0.85407, 0.01253, ("0.8541", "± 0.0125")),
        (387.7428, 53.0138, ("387.7", "± 53.0")),
        (0.5, 0.0, ("0.5000", "± 0.0000")),
        (23219.5242, 0.0, ("23,220", "± 0")),  # one seed: no spread to go by
    ],
)
def test_quality_cells_keep_the_digits_the_spread_supports(mean, std, shown):
    cell = facts._mean_std(mean, std)
    assert (cell["mean"], cell["std"]) == shown


def test_a_two_worker_cell_that_measured_one_worker_is_not_quoted():
    def cell(rows, concurrency, spread):
        runs = [{"connections_per_worker": spread} for _ in range(3)]
        return {
            "rows": rows,
            "concurrency": concurrency,
            "requests_per_second": 1000.0,
            "rows_per_second": 1000.0 * rows,
            "latency_ms": {"p50": 1.0, "p99": 2.0},
            "runs": runs,
        }

    def data(spread):
        cells = [cell(1, 8, spread), cell(64, 32, spread)]
        return {"results": [{"engine": "onnx", "workers": 2, "cells": cells}]}

    balanced = facts.serving({"serve_load": data([16, 16])})
    assert balanced["rows_64_2w"].measured and balanced["rps_2w_c8"].measured
    lopsided = facts.serving({"serve_load": data([32, 0])})
    assert not lopsided["rows_64_2w"].measured
    assert not lopsided["rps_2w_c8"].measured


def test_a_serve_load_file_without_the_floor_keeps_every_requirement(results):
    """An older serve_load.json (no floor, no floor target) or one whose floor
    cell was not run: the other requirements stay, the serving text renders,
    the floor figures read as not measured."""
    import benchmarks_summary

    rows = facts.requirements(results)
    floorless = json.loads(json.dumps(results["serve_load"]))
    for block in floorless["results"]:
        block.pop("floor", None)
    unmeasured = json.loads(json.dumps(floorless))
    for target in unmeasured["targets"]:
        if "constant JSON" in target["target"]:
            target.update(value=None, met=None)
    floorless["targets"] = [
        t for t in floorless["targets"] if "constant JSON" not in t["target"]
    ]
    for data, expected in ((floorless, len(rows) - 1), (unmeasured, len(rows))):
        older = dict(results, serve_load=data)
        assert len(facts.requirements(older)) == expected
        text = benchmarks_summary.render_serving(older)
        assert "answers not measured" in text or "not measured" in text


def test_a_training_target_is_met_only_where_its_repeat_run_meets_it(results):
    """train_throughput_repeat.json (the same benchmark run again) stands beside
    train_throughput.json: each target both files hold shows both values, and
    counts as met only where both runs meet it; without a repeat, as before."""
    goal = "default_model_vs_plain_mlp_batch_1024"
    name = "training loop: " + goal.replace("_", " ")
    first = json.loads(json.dumps(results["train_throughput"]))
    first["targets"][goal].update(value=0.67, met=True)
    repeat = {"targets": {goal: {"value": 0.57, "goal": 0.6, "met": False}}}

    def row(**files):
        rows = facts.requirements(dict(results, train_throughput=first, **files))
        return next(r for r in rows if r["name"] == name)

    alone = row(train_throughput_repeat=None)
    assert alone["met"] and alone["value"] == "0.67"
    repeated = row(train_throughput_repeat=repeat)
    assert not repeated["met"]
    assert repeated["value"] == "0.67 (repeat run: 0.57)"
    assert "0.57" in repeated["why"]
    assert "train_throughput_repeat.json" in repeated["source"]
    repeat["targets"][goal].update(value=0.62, met=True)
    assert row(train_throughput_repeat=repeat)["met"]


def test_the_batch_rows_say_only_what_their_file_measured(results):
    """inference_paths.json's side-by-side ratio against the earlier path is a
    requirement row of its own (none from an older file without it), and the
    whole-process row says the in-process path meets the target only where the
    file says it does."""
    name = "batch predict against the earlier path"
    paths = json.loads(json.dumps(results["inference_paths"]))
    paths["vs_earlier_path"] = {"value": 1.19, "goal": 1.3, "met": False}

    def rows(data):
        return facts.requirements(dict(results, inference_paths=data))

    row = next(r for r in rows(paths) if r["name"].startswith(name))
    assert (row["value"], row["target"], row["met"]) == ("1.19x", ">= 1.3x", False)
    assert "matrix products" in row["why"]
    older = json.loads(json.dumps(paths))
    del older["vs_earlier_path"]
    assert not any(r["name"].startswith(name) for r in rows(older))
    for met in (False, True):
        paths["target"]["in_process_met"] = met
        whole = next(r for r in rows(paths) if r["name"].startswith("the same, whole"))
        assert ("the in-process path meets the target" in whole["why"]) == met
