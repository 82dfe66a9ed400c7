"""The report's charts, drawn with matplotlib as SVG text (fonts kept as text).

Each `*_figure` function returns a matplotlib Figure (None when its result file
is missing) so tests can read its axes; each `*_chart` returns the SVG markup.
Every value axis starts at zero and is linear: a ratio of 2.4x must look like
one, and a bar's length must be its value.
"""

from __future__ import annotations

import io
from typing import Any, Dict, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from svgtext import inline_svg  # noqa: E402

COLOURS = {"parquet": "#3b7d4f", "csv": "#c0762b", "other": "#5b6b82"}
# One colour per table size in the storage ratios chart, light to dark.
SIZE_COLOURS = ("#9ab7d3", "#4f7fae", "#1f3552")
plt.rcParams.update(
    {
        "svg.fonttype": "none",
        "font.family": "DejaVu Sans",
        "font.size": 8,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "svg.hashsalt": "modelsphere",  # stable ids: same input, same SVG
    }
)


def _svg(fig) -> Optional[str]:
    if fig is None:
        return None
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return inline_svg(buffer.getvalue())


def short_count(rows: int) -> str:
    """100000 -> '100k', 10000000 -> '10M'."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if rows >= size and rows % size == 0:
            return f"{rows // size}{suffix}"
    return f"{rows:,}"


def _short_tick(value: float, _position=None) -> str:
    """Axis ticks as 0, 50k, 1.5M: no run of digits for the reader to count."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


SHORT_TICKS = FuncFormatter(_short_tick)


def _has(getter, result) -> bool:
    try:
        getter(result)
    except (KeyError, TypeError):
        return False
    return True


STORAGE_RATIOS = [
    ("file size", lambda r: r["file_bytes"]),
    ("full read\nto pandas", lambda r: r["reads"]["full"]["seconds"]),
    ("full read\nto Arrow", lambda r: r["reads"]["arrow_full"]["seconds"]),
    ("3-column\nread", lambda r: r["reads"]["three_columns"]["seconds"]),
]


def storage_figure(data: Optional[Dict[str, Any]]):
    """CSV / Parquet for each measure and table size, on a linear axis from 0
    with parity (1x) marked: above the line, CSV is bigger or slower."""
    if not data or not data.get("sizes"):
        return None
    sizes = data["sizes"]
    measures = [
        (label, getter)
        for label, getter in STORAGE_RATIOS
        if all(
            _has(getter, size["formats"][fmt])
            for size in sizes
            for fmt in ("parquet", "csv")
        )
    ]
    fig, ax = plt.subplots(figsize=(6.4, 2.5))
    width = 0.8 / len(sizes)
    for index, size in enumerate(sizes):
        formats = size["formats"]
        ratios = [
            getter(formats["csv"]) / getter(formats["parquet"])
            for _, getter in measures
        ]
        offset = (index - (len(sizes) - 1) / 2) * width
        positions = [m + offset for m in range(len(measures))]
        colour = SIZE_COLOURS[min(index, len(SIZE_COLOURS) - 1)]
        bars = ax.bar(
            positions,
            ratios,
            width,
            color=colour,
            label=f"{short_count(size['rows'])} rows",
        )
        ax.bar_label(bars, fmt="%.1f", fontsize=6.5, padding=1)
    ax.axhline(1.0, color="#333333", linewidth=0.8, linestyle="--", zorder=0)
    ax.set_xticks(range(len(measures)), [label for label, _ in measures])
    ax.set_ylabel("CSV / Parquet (x)")
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False, ncols=len(sizes), loc="upper left")
    fig.tight_layout()
    return fig


def storage_chart(data: Optional[Dict[str, Any]]) -> Optional[str]:
    return _svg(storage_figure(data))


OURS_LABEL = "our training loop (as shipped, or one setting changed)"
REFERENCE_LABEL = "reference loop (not what train.py runs)"


def training_figure(results: Dict[str, Any]):
    """Training-loop rows/s: our loop against the alternatives (and GPU if run)."""
    data = results.get("train_throughput")
    if not data:
        return None
    bars = [
        (name.replace("_", " "), result["rows_per_second"])
        for name, result in data["results"].items()
    ]
    for name in ("throughput_cuda_bf16", "throughput_cuda_fp32"):
        if results.get(name):
            label = "ours, CUDA " + name.rsplit("_", 1)[1]
            bars.append((label, results[name]["results"]["ours"]["rows_per_second"]))
    fig, ax = plt.subplots(figsize=(6.0, 0.3 * len(bars) + 1.1))
    names = [name for name, _ in bars]
    values = [value for _, value in bars]
    colours = [
        COLOURS["parquet"] if name.startswith("ours") else COLOURS["other"]
        for name in names
    ]
    ax.barh(names, values, color=colours)
    ax.invert_yaxis()
    ax.set_xlim(left=0, right=max(values) * 1.18)
    ax.xaxis.set_major_formatter(SHORT_TICKS)
    ax.set_xlabel("training rows/s (median epoch)")
    for index, value in enumerate(values):
        ax.text(value, index, f" {value:,.0f}", va="center", fontsize=7)
    ax.legend(
        handles=[
            Patch(color=COLOURS["parquet"], label=OURS_LABEL),
            Patch(color=COLOURS["other"], label=REFERENCE_LABEL),
        ],
        frameon=False,
        loc="upper center",
        bbox_to_anchor=(0.4, -0.22),
        ncols=1,
    )
    fig.tight_layout()
    return fig


def training_chart(results: Dict[str, Any]) -> Optional[str]:
    return _svg(training_figure(results))


def serving_figure(data: Optional[Dict[str, Any]]):
    """Single-row requests: requests/s and p99 latency against concurrency."""
    if not data or not data.get("results"):
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.2, 2.6))
    for block in data["results"]:
        cells = [cell for cell in block["cells"] if cell["rows"] == 1]
        concurrency = [cell["concurrency"] for cell in cells]
        label = f"{block['engine']}, {block['workers']} worker(s)"
        left.plot(
            concurrency, [c["requests_per_second"] for c in cells], "o-", label=label
        )
        right.plot(
            concurrency, [c["latency_ms"]["p99"] for c in cells], "o-", label=label
        )
    ticks = sorted({c["concurrency"] for b in data["results"] for c in b["cells"]})
    for ax, title in ((left, "requests/s"), (right, "p99 latency (ms)")):
        # Concurrency doubles and quadruples: a log2 axis spaces 1, 8, 32 evenly.
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(tick) for tick in ticks])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(SHORT_TICKS)
        ax.set_xlabel("concurrent clients (1-row requests)")
        ax.set_title(title)
    right.legend(frameon=False, fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def serving_chart(data: Optional[Dict[str, Any]]) -> Optional[str]:
    return _svg(serving_figure(data))
