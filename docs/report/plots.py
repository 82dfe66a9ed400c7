"""The report's charts, drawn with matplotlib as SVG text (fonts kept as text).

Each function returns the SVG markup, or None when its result file is missing.
"""

from __future__ import annotations

import io
from typing import Any, Dict, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from svgtext import inline_svg  # noqa: E402

COLOURS = {"parquet": "#3b7d4f", "csv": "#c0762b", "other": "#5b6b82"}
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


def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return inline_svg(buffer.getvalue())


def storage_chart(data: Optional[Dict[str, Any]]) -> Optional[str]:
    """File size and full-read time per size, Parquet beside CSV."""
    if not data or not data.get("sizes"):
        return None
    sizes = data["sizes"]
    labels = [short_count(size["rows"]) for size in sizes]
    panels = [
        ("file size (MiB)", lambda r: r["file_bytes"] / 2**20),
        ("full read to pandas (s)", lambda r: r["reads"]["full"]["seconds"]),
        ("full read to Arrow (s)", lambda r: r["reads"]["arrow_full"]["seconds"]),
        ("3-column read (s)", lambda r: r["reads"]["three_columns"]["seconds"]),
    ]
    first = sizes[0]["formats"]["parquet"]
    panels = [panel for panel in panels if _has(panel[1], first)]
    fig, axes = plt.subplots(1, len(panels), figsize=(7.4, 2.3), squeeze=False)
    axes = axes[0]
    width = 0.38
    for ax, (title, value) in zip(axes, panels):
        for offset, fmt in ((-width / 2, "parquet"), (width / 2, "csv")):
            heights = [value(size["formats"][fmt]) for size in sizes]
            positions = [index + offset for index in range(len(sizes))]
            ax.bar(positions, heights, width, label=fmt, color=COLOURS[fmt])
        ax.set_title(title)
        ax.set_xticks(range(len(sizes)), labels)
        ax.set_xlabel("rows")
        ax.set_yscale("log")
    axes[0].legend(frameon=False)
    fig.tight_layout()
    return _svg(fig)


def short_count(rows: int) -> str:
    """100000 -> '100k', 10000000 -> '10M'."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if rows >= size and rows % size == 0:
            return f"{rows // size}{suffix}"
    return f"{rows:,}"


def _has(getter, result) -> bool:
    try:
        getter(result)
    except KeyError:
        return False
    return True


def training_chart(results: Dict[str, Any]) -> Optional[str]:
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
    fig, ax = plt.subplots(figsize=(6.0, 0.35 * len(bars) + 0.7))
    names = [name for name, _ in bars]
    values = [value for _, value in bars]
    colours = [
        COLOURS["parquet"] if name.startswith("ours") else COLOURS["other"]
        for name in names
    ]
    ax.barh(names, values, color=colours)
    ax.invert_yaxis()
    ax.set_xlabel("training rows/s (median epoch)")
    for index, value in enumerate(values):
        ax.text(value, index, f" {value:,.0f}", va="center")
    fig.tight_layout()
    return _svg(fig)


def serving_chart(data: Optional[Dict[str, Any]]) -> Optional[str]:
    """Single-row requests: requests/s and p99 latency against concurrency."""
    if not data or not data.get("results"):
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.2, 2.4))
    for block in data["results"]:
        cells = [cell for cell in block["cells"] if cell["rows"] == 1]
        concurrency = [cell["concurrency"] for cell in cells]
        label = f"{block['engine']}, {block['workers']} worker(s)"
        left.plot(concurrency, [c["requests_per_second"] for c in cells], "o-")
        right.plot(
            concurrency, [c["latency_ms"]["p99"] for c in cells], "o-", label=label
        )
    for ax, title in ((left, "requests/s"), (right, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ticks = sorted({c["concurrency"] for b in data["results"] for c in b["cells"]})
        ax.set_xticks(ticks, [str(tick) for tick in ticks])
        ax.minorticks_off()
        ax.set_xlabel("concurrent clients (1-row requests)")
        ax.set_title(title)
    right.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return _svg(fig)
