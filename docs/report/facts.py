"""The measured figures the report quotes, read from benchmarks/results/*.json.

Every figure is a `Figure`: a formatted value with the result file it came from,
or, when that file (or the field) is missing, a marked "not measured yet" cell.
Nothing here invents a number.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from markupsafe import escape

RESULT_NAMES = (
    "train_throughput",
    # the same benchmark run again for its targets' comparisons (`--name
    # train_throughput_repeat`): a target is met only where both runs meet it
    "train_throughput_repeat",
    "serve_load",
    "preprocess_scale",
    "quality",
    "storage_formats",
    "inference_paths",
    "throughput_cuda_bf16",
    "throughput_cuda_fp32",
    "throughput_gpu_host_cpu",
    "distributed_scale",
    "stream_scale",
)
# The targets of the scale-out result files the report lists (their other
# entries are figures without a target).
SCALE_TARGETS = {
    "distributed_scale": ("rows_per_process", "peak_rss_ratio", "stream_speed"),
    "stream_scale": ("peak_rss",),
}
NOT_MEASURED = "not measured yet"


@dataclass(frozen=True)
class Figure:
    """One quoted number (as text), or None when it was not measured."""

    text: Optional[str]
    source: str

    @property
    def measured(self) -> bool:
        return self.text is not None

    def __html__(self) -> str:
        if self.text is None:
            return f'<span class="missing">{NOT_MEASURED}</span>'
        return str(escape(self.text))

    def __str__(self) -> str:
        return self.text if self.text is not None else NOT_MEASURED


def load_results(directory: Path) -> Dict[str, Optional[Dict[str, Any]]]:
    """Each known result file's content, or None where it is missing or unreadable."""
    results: Dict[str, Optional[Dict[str, Any]]] = {}
    for name in RESULT_NAMES:
        path = Path(directory) / f"{name}.json"
        try:
            results[name] = json.loads(path.read_text())
        except (OSError, ValueError):
            results[name] = None
    return results


def figure(data, source: str, getter: Callable[[Any], Any], fmt: str) -> Figure:
    """`fmt` applied to `getter(data)`; a missing file or field gives NOT_MEASURED."""
    if data is None:
        return Figure(None, source)
    try:
        value = getter(data)
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
        return Figure(None, source)
    if value is None:
        return Figure(None, source)
    return Figure(fmt.format(value), source)


def training(results) -> Dict[str, Figure]:
    data, src = results["train_throughput"], "train_throughput.json"
    rows = lambda loop: lambda d: d["results"][loop]["rows_per_second"]  # noqa: E731
    out = {
        "ours": figure(data, src, rows("ours"), "{:,.0f} rows/s"),
        "bare": figure(data, src, rows("bare_randperm_loop"), "{:,.0f} rows/s"),
        "dataloader": figure(data, src, rows("per_row_dataloader"), "{:,.0f} rows/s"),
        "dropout": figure(data, src, rows("ours_with_dropout_0.1"), "{:,.0f} rows/s"),
        "vs_dataloader": figure(
            data, src, lambda d: d["ratios"]["ours_vs_per_row_dataloader"], "{:.2f}x"
        ),
        "vs_bare": figure(
            data, src, lambda d: d["ratios"]["ours_vs_bare_randperm_loop"], "{:.0%}"
        ),
        "setup": figure(
            data,
            src,
            lambda d: f"{d['setup']['rows']:,} rows x {d['setup']['numeric_features']}"
            f" numeric columns, hidden {d['setup']['hidden_sizes']}, batch "
            f"{d['setup']['batch_size']}, {d['machine']['cpu_count']} CPU cores",
            "{}",
        ),
    }
    out["batch"] = figure(data, src, lambda d: d["setup"]["batch_size"], "{}")
    out["cores"] = figure(data, src, lambda d: d["machine"]["cpu_count"], "{}")
    out["peak"] = figure(
        data, src, lambda d: d["matmul_peak"]["gflops"], "{:,.0f} GFLOP/s"
    )
    out["gflops_4096"] = figure(
        data,
        src,
        lambda d: d["results"]["ours_batch_4096"]["gflops"],
        "{:,.0f} GFLOP/s",
    )
    out["share_4096"] = figure(
        data,
        src,
        lambda d: d["results"]["ours_batch_4096"]["fraction_of_peak"],
        "{:.0%}",
    )
    out["rows_4096"] = figure(data, src, rows("ours_batch_4096"), "{:,.0f} rows/s")
    for batch in ("1", "4096"):
        out[f"infer_us_{batch}"] = figure(
            data,
            src,
            lambda d, b=batch: d["inference"][b]["microseconds_per_row"],
            "{:.2f} µs/row",
        )
    for name, label in (
        ("throughput_cuda_bf16", "cuda_bf16"),
        ("throughput_cuda_fp32", "cuda_fp32"),
    ):
        out[label] = figure(
            results[name], f"{name}.json", rows("ours"), "{:,.0f} rows/s"
        )
    out["cuda_vs_cpu"] = figure(
        results["throughput_cuda_bf16"],
        "throughput_cuda_bf16.json",
        lambda d: d["results"]["ours"]["rows_per_second"]
        / results["train_throughput"]["results"]["ours"]["rows_per_second"],
        "{:.1f}x",
    )
    return out


def _cell(data, engine: str, workers: int, rows: int, concurrency: int):
    for block in data["results"]:
        if block["engine"] == engine and block["workers"] == workers:
            for cell in block["cells"]:
                if cell["rows"] == rows and cell["concurrency"] == concurrency:
                    return cell
    raise KeyError((engine, workers, rows, concurrency))


def one_sided(cell) -> bool:
    """Whether most of a cell's runs left a worker without connections (the
    kernel spreads connections over workers; a few can all land on one)."""
    runs = cell.get("runs", [])
    lopsided = sum(0 in run.get("connections_per_worker", []) for run in runs)
    return lopsided > len(runs) // 2


def load_cell(key, engine="onnx", workers=1, rows=1, concurrency=1, spread=False):
    """A getter of one serve_load.json cell's `key` (p50/p99... are latencies).
    spread=True: a figure of several workers, so a cell that measured one of
    them (`one_sided`) counts as not measured."""

    def get(d):
        found = _cell(d, engine, workers, rows, concurrency)
        if spread and workers > 1 and one_sided(found):
            raise KeyError("connections not spread over the workers")
        return found["latency_ms"][key] if key.startswith("p") else found[key]

    return get


def serving(results) -> Dict[str, Figure]:
    data, src = results["serve_load"], "serve_load.json"
    cell = load_cell
    return {
        "p50_1": figure(data, src, cell("p50"), "{:.2f} ms"),
        "p99_1": figure(data, src, cell("p99"), "{:.2f} ms"),
        "rps_1": figure(data, src, cell("requests_per_second"), "{:,.0f} req/s"),
        "rps_c8": figure(
            data, src, cell("requests_per_second", concurrency=8), "{:,.0f} req/s"
        ),
        "p99_c8": figure(data, src, cell("p99", concurrency=8), "{:.2f} ms"),
        "rows_64": figure(
            data, src, cell("rows_per_second", rows=64, concurrency=8), "{:,.0f} rows/s"
        ),
        "rps_2w_c8": figure(
            data,
            src,
            cell("requests_per_second", workers=2, concurrency=8, spread=True),
            "{:,.0f} req/s",
        ),
        # 2 workers at 32 clients: 8 connections can all land on one worker.
        "rows_64_2w": figure(
            data,
            src,
            cell("rows_per_second", workers=2, rows=64, concurrency=32, spread=True),
            "{:,.0f} rows/s",
        ),
        "overhead_1": figure(
            data,
            src,
            lambda d: d["http_overhead"]["onnx,rows=1"]["http_overhead_ms"],
            "{:.2f} ms",
        ),
        "onnx_vs_torch": figure(
            data,
            src,
            lambda d: d["faster_engine"]["onnx_over_torch_geometric_mean"],
            "{:.2f}x",
        ),
        "forward_us_row_64": figure(
            data,
            src,
            lambda d: d["in_process"]["onnx"]["64"]["engine_forward_us_per_row"],
            "{:.1f} µs/row",
        ),
    }


def batch(results) -> Dict[str, Figure]:
    data, src = results["preprocess_scale"], "preprocess_scale.json"

    def step(rows: int, name: str, key: str):
        return lambda d: d["results"][str(rows)][name][key]

    out = {}
    for rows, label in ((1_000_000, "1m"), (10_000_000, "10m")):
        out[f"predict_{label}"] = figure(
            data, src, step(rows, "predict", "rows_per_second"), "{:,.0f} rows/s"
        )
        out[f"predict_rss_{label}"] = figure(
            data, src, step(rows, "predict", "peak_rss_mib"), "{:,.0f} MiB"
        )
        out[f"preprocess_{label}"] = figure(
            data, src, step(rows, "preprocessing", "seconds"), "{:,.1f} s"
        )
        out[f"preprocess_rss_{label}"] = figure(
            data, src, step(rows, "preprocessing", "peak_rss_mib"), "{:,.0f} MiB"
        )
    return out


def inference_paths(results) -> Dict[str, Figure]:
    """inference_paths.json: predict.py on Telco rows against the API's figures."""
    data, src = results["inference_paths"], "inference_paths.json"
    batch = lambda key: lambda d: d["batch"]["parquet -> parquet"][key]  # noqa: E731
    return {
        "rows": figure(data, src, lambda d: d["setup"]["rows"], "{:,}"),
        "rows_per_second": figure(
            data, src, batch("rows_per_second"), "{:,.0f} rows/s"
        ),
        "in_process": figure(
            data, src, batch("in_process_rows_per_second"), "{:,.0f} rows/s"
        ),
        "us_per_row": figure(
            data,
            src,
            lambda d: 1e6
            / d["batch"]["parquet -> parquet"]["in_process_rows_per_second"],
            "{:.1f} µs/row",
        ),
        "model_share": figure(
            data,
            src,
            lambda d: d["batch_profile"]["stages"]["model forward"]
            / d["batch_profile"]["seconds"],
            "{:.0%}",
        ),
        "floor_rows": figure(
            data,
            src,
            lambda d: d["setup"]["rows"] / d["model_forward_floor"]["seconds"],
            "{:,.0f} rows/s",
        ),
        "startup_s": figure(data, src, lambda d: d["startup"]["seconds"], "{:.2f} s"),
        "in_process_torch": figure(
            data,
            src,
            lambda d: d["batch"]["parquet -> parquet, engine=torch, no prefetch"][
                "in_process_rows_per_second"
            ],
            "{:,.0f} rows/s",
        ),
        "large_rows": figure(data, src, lambda d: d["large"]["rows"], "{:,}"),
        "large_rows_per_second": figure(
            data, src, lambda d: d["large"]["rows_per_second"], "{:,.0f} rows/s"
        ),
        "export_s": figure(
            data,
            src,
            lambda d: d["first_run_seconds_with_onnx_export"],
            "{:.1f} s",
        ),
        "record_us": figure(
            data,
            src,
            lambda d: d["single_record_in_process"]["onnx"]["microseconds_per_record"],
            "{:.0f} µs",
        ),
    }


def _size(data, rows: int) -> Dict[str, Any]:
    for size in data["sizes"]:
        if size["rows"] == rows:
            return size
    raise KeyError(rows)


def storage(results) -> Dict[str, Any]:
    data, src = results["storage_formats"], "storage_formats.json"
    out: Dict[str, Any] = {}
    for rows, label in ((100_000, "100k"), (1_000_000, "1m"), (10_000_000, "10m")):

        def fmt_get(fmt, *keys, rows=rows):
            def get(d):
                value = _size(d, rows)["formats"][fmt]
                for key in keys:
                    value = value[key]
                return value

            return get

        def ratio(key, rows=rows):
            return lambda d: _size(d, rows)["ratios_csv_over_parquet"][key]

        for fmt in ("parquet", "csv"):
            out[f"{fmt}_mib_{label}"] = figure(
                data,
                src,
                lambda d, g=fmt_get(fmt, "file_bytes"): g(d) / 2**20,
                "{:,.1f} MiB",
            )
            out[f"{fmt}_read_{label}"] = figure(
                data, src, fmt_get(fmt, "reads", "full", "seconds"), "{:.2f} s"
            )
            out[f"{fmt}_read3_{label}"] = figure(
                data,
                src,
                fmt_get(fmt, "reads", "three_columns", "seconds"),
                "{:.2f} s",
            )
            out[f"{fmt}_arrow_{label}"] = figure(
                data, src, fmt_get(fmt, "reads", "arrow_full", "seconds"), "{:.2f} s"
            )
            out[f"{fmt}_plain_{label}"] = figure(
                data,
                src,
                fmt_get(fmt, "reads", "plain_pandas_full", "seconds"),
                "{:.2f} s",
            )
            out[f"{fmt}_write_{label}"] = figure(
                data, src, fmt_get(fmt, "write_seconds"), "{:.2f} s"
            )
            out[f"{fmt}_rss_{label}"] = figure(
                data,
                src,
                fmt_get(fmt, "reads", "full", "peak_rss_mib"),
                "{:,.0f} MiB",
            )
        for key in (
            "file_bytes",
            "write_seconds",
            "full_seconds",
            "three_columns_seconds",
            "arrow_full_seconds",
            "plain_pandas_full_seconds",
            "full_peak_rss_mib",
            "three_columns_peak_rss_mib",
        ):
            out[f"ratio_{key}_{label}"] = figure(data, src, ratio(key), "{:.2f}x")
    out["csv_plain_types"] = figure(
        data,
        src,
        lambda d: ", ".join(
            f"{name}: {change}"
            for name, change in d["sizes"][0]["formats"]["csv"]["types_changed"][
                "plain"
            ].items()
        )
        or "none",
        "{}",
    )
    out["parquet_plain_types"] = figure(
        data,
        src,
        lambda d: ", ".join(
            d["sizes"][0]["formats"]["parquet"]["types_changed"]["plain"]
        )
        or "none",
        "{}",
    )
    out["table"] = figure(
        data, src, lambda d: d["setup"]["data"].split(": ", 1)[-1], "{}"
    )
    out["read_columns"] = figure(
        data,
        src,
        lambda d: f"{len(d['setup']['three_columns'])} columns "
        f"({', '.join(d['setup']['three_columns'])})",
        "{}",
    )
    out["read_share"] = figure(
        data,
        src,
        lambda d: f"{len(d['setup']['three_columns'])} of "
        f"{len(d['sizes'][0]['reference_dtypes'])}",
        "{}",
    )
    out["e2e"] = _end_to_end_rows(data)
    out["full_read_faster"] = _faster(data, 1_000_000, "full_seconds")
    out["arrow_read_faster"] = _faster(data, 1_000_000, "arrow_full_seconds")
    return out


def _faster(data, rows: int, key: str) -> Optional[str]:
    """Which format read faster (CSV / Parquet ratio), or None if not measured."""
    try:
        ratio = _size(data, rows)["ratios_csv_over_parquet"][key]
    except (KeyError, TypeError):
        return None
    return "parquet" if ratio > 1 else "csv"


def _end_to_end_rows(data) -> List[Dict[str, Any]]:
    if data is None:
        return []
    rows = []
    for run in data.get("end_to_end", []):
        for fmt, result in run["formats"].items():
            rows.append(
                {
                    "rows": f"{run['rows']:,}",
                    "runs": run["repeats"],
                    "format": fmt,
                    "preprocess": f"{result['preprocess_seconds']:.1f} s",
                    "train": f"{result['train_seconds']:.1f} s",
                    "total": f"{result['total_seconds']:.1f} s",
                    "mib": f"{result['processed_split_bytes'] / 2**20:,.2f}",
                    "ratio": f"{run['ratio_csv_over_parquet_total_seconds']:.2f}x",
                }
            )
    return rows


def quality(results) -> Dict[str, Any]:
    """quality.json: per data set, the primary test metric (mean ± std over
    seeds) of each model, and each model's mean rank; empty where not measured."""
    data = results["quality"]
    try:
        return _quality_table(data) if data is not None else {}
    except (KeyError, TypeError, ValueError, AttributeError):
        return {}


def _quality_table(data) -> Dict[str, Any]:
    targets = data.get("targets", {})
    per_dataset = targets.get("per_dataset", {})
    models: List[str] = []
    rows = []
    for name, result in data["results"].items():
        summary = result["summary"]
        default = "rmse" if result["task"] == "regression" else "roc_auc"
        metric = per_dataset.get(name, {}).get("metric", default)
        for model in summary:
            if model not in models:
                models.append(model)
        cells = {
            model: _mean_std(
                summary[model][metric]["mean"], summary[model][metric]["std"]
            )
            for model in summary
            if metric in summary[model]
        }
        rows.append(
            {
                "dataset": name,
                "task": result["task"],
                "rows": f"{result['rows']:,}",
                "metric": metric,
                "cells": cells,
            }
        )
    ranks = {
        model: f"{rank:.2f}" for model, rank in targets.get("mean_rank", {}).items()
    }
    setup = data.get("setup", {})
    return {
        "models": models,
        "rows": rows,
        "ranks": ranks,
        "seeds": setup.get("seeds"),
        "overrides": setup.get("override") or [],
    }


# Digits kept in a mean ± std: down to the std's third significant digit (the
# mean's fourth when there is no spread), never more than MAX_QUALITY_DECIMALS
# (ROC AUC to 1e-4).
MAX_QUALITY_DECIMALS = 4


def _decimals(scale: float, significant: int) -> int:
    if not math.isfinite(scale) or scale == 0:
        return MAX_QUALITY_DECIMALS
    digits = significant - 1 - math.floor(math.log10(abs(scale)))
    return min(MAX_QUALITY_DECIMALS, max(0, digits))


def _mean_std(mean: float, std: float) -> Dict[str, str]:
    """23219.5242 ± 1740.7169 -> '23,220' '± 1,741'; 0.85407 ± 0.01253 -> 4 decimals."""
    spread = math.isfinite(std) and std > 0
    decimals = _decimals(std, 3) if spread else _decimals(mean, 4)
    return {"mean": f"{mean:,.{decimals}f}", "std": f"± {std:,.{decimals}f}"}


def _first(value):
    """A load reading: the 1-minute figure of os.getloadavg()'s triple."""
    return value[0] if isinstance(value, list) else value


def load_start_end(data) -> Optional[tuple]:
    """The 1-minute load a result file recorded at its start and its end, or
    None where it kept no such pair. The one reader of these fields."""
    for load in (data.get("load_average_1m"), data.get("load_average")):
        if isinstance(load, dict) and load.get("start") is not None:
            if load.get("end") is not None:
                return _first(load["start"]), _first(load["end"])
    return None


def load_one_reading(data) -> Optional[float]:
    """The single 1-minute load a result file kept in its machine block."""
    single = data.get("machine", {}).get("load_average_1m")
    return single if isinstance(single, (int, float)) else None


def _load_span(data) -> Optional[str]:
    """Appendix B's load column: '0.5 -> 1.4' (start and end of the run), or
    one reading where the file kept only one."""
    span, single = load_start_end(data), load_one_reading(data)
    if span is not None:
        return f"{span[0]:.1f} -> {span[1]:.1f}"
    return None if single is None else f"{single:.1f} (one reading)"


def provenance(results) -> List[Dict[str, str]]:
    """Which result file each section quotes, when and where it was measured."""
    rows = []
    for name in RESULT_NAMES:
        data = results[name]
        if data is None:
            rows.append(
                {"name": f"{name}.json", "date": None, "machine": None, "load": None}
            )
            continue
        machine = data.get("machine", {})
        rows.append(
            {
                "name": f"{name}.json",
                "date": data.get("date", "?"),
                "load": _load_span(data),
                "machine": f"{machine.get('processor', '?')}, "
                f"{machine.get('cpu_count', '?')} CPUs, device "
                f"{machine.get('device', 'cpu')}",
            }
        )
    return rows


# Decision 1's budget (a choice, not a measurement): a training run the measured
# CPU loop finishes within this many seconds stays on the CPU.
CPU_TRAINING_BUDGET_S = 600


def crossovers(results) -> Dict[str, Figure]:
    """Where each decision's other option starts to win, as numbers."""
    train, paths, serve = (
        results["train_throughput"],
        results["inference_paths"],
        results["serve_load"],
    )

    def batch_beats_requests(d):
        p50_s = _cell(serve, "onnx", 1, 1, 1)["latency_ms"]["p50"] / 1000
        row_s = 1 / d["batch"]["parquet -> parquet"]["in_process_rows_per_second"]
        if p50_s <= row_s:  # a request no dearer than a batch row: no crossover
            return None
        return d["startup"]["seconds"] / (p50_s - row_s)

    return {
        "cpu_row_epochs": figure(
            train,
            "train_throughput.json",
            lambda d: d["results"]["ours"]["rows_per_second"]
            * CPU_TRAINING_BUDGET_S
            / 1e6,
            "{:,.0f} million",
        ),
        "width": figure(
            train,
            "train_throughput.json",
            lambda d: d["setup"]["hidden_sizes"],
            "{}",
        ),
        "cpu_budget_minutes": Figure(
            f"{CPU_TRAINING_BUDGET_S // 60}", "facts.CPU_TRAINING_BUDGET_S"
        ),
        "batch_records": figure(
            paths if serve is not None else None,
            "inference_paths.json, serve_load.json",
            batch_beats_requests,
            "{:,.0f}",
        ),
        "parquet_size": figure(
            results["storage_formats"],
            "storage_formats.json",
            lambda d: _size(d, 100_000)["ratios_csv_over_parquet"]["file_bytes"],
            "{:.1f}x",
        ),
    }


def scale_out(results) -> Dict[str, Figure]:
    """Several processes and tables larger than memory: distributed_scale.json
    and stream_scale.json."""
    data, src = results["distributed_scale"], "distributed_scale.json"
    one, two = "1 process x 2 threads", "2 processes x 1 thread, shards"

    def rows_per_second(run):
        return lambda d: d["results"][run]["rows_per_second"]

    def peak(run, part="memory"):
        return lambda d: max(d[part]["results"][run]["peak_rss_mib_per_process"])

    streamed = results["stream_scale"]
    return {
        "rows": figure(data, src, lambda d: d["setup"]["rows"], "{:,}"),
        "one": figure(data, src, rows_per_second(one), "{:,.0f} rows/s"),
        "two": figure(data, src, rows_per_second(two), "{:,.0f} rows/s"),
        "memory_rows": figure(
            data, src, lambda d: d["memory"]["setup"]["rows"], "{:,}"
        ),
        "peak_one": figure(data, src, peak(one), "{:,.0f} MiB"),
        "peak_two": figure(data, src, peak(two), "{:,.0f} MiB"),
        # from the memory runs themselves: an older file, whose ratio was taken
        # on the small table, reads "not measured" beside its missing peaks
        "peak_ratio": figure(
            data, src, lambda d: peak(two)(d) / peak(one)(d), "{:.2f}x"
        ),
        "libraries": figure(
            data, src, lambda d: d["libraries_peak_rss_mib"], "{:,.0f} MiB"
        ),
        "stream_speed": figure(
            data, src, lambda d: d["targets"]["stream_speed"]["measured"], "{:.2f}x"
        ),
        "stream_rows": figure(
            streamed, "stream_scale.json", lambda d: d["setup"]["rows"], "{:,}"
        ),
        "stream_peak": figure(
            streamed,
            "stream_scale.json",
            lambda d: d["targets"]["peak_rss"]["measured"],
            "{:,.0f} MiB",
        ),
    }


def _measured_text(measured) -> str:
    """A target's measured value as the report prints it: a per-process count
    ({"held": [350000, 350000]}) as "held 350,000 / 350,000"."""
    if isinstance(measured, dict):
        return "; ".join(
            f"{key} " + " / ".join(f"{value:,}" for value in values)
            for key, values in measured.items()
        )
    return f"{measured}"


def _requirement(name, target, value, met, source, why="") -> Dict[str, Any]:
    return {
        "name": name,
        "target": target,
        "value": value,
        "met": met,
        "source": source,
        "why": "" if met else why,
    }


def _missed_earlier_path_reason(paths: Dict[str, Any]) -> str:
    """Why the default batch path is not further ahead of the earlier one: the
    share of its run the network's products need at the matmul peak."""
    floor = paths.get("model_forward_floor", {}).get("seconds")
    if floor is None:
        return ""
    default = paths["batch"]["parquet -> parquet"]["in_process_seconds"]
    return (
        f"the network's matrix products alone need {floor:.2f} s of the "
        f"default's {default:.2f} s at the float32 matmul peak "
        "train_throughput.json measured"
    )


def _missed_training_reason(name: str, data: Dict[str, Any]) -> str:
    """Why a training-loop target was missed, from the same result file."""
    models = data.get("models", {})
    if name.startswith("default_model") and {"mlp", "mlp_plain"} <= set(models):
        default, plain = models["mlp"], models["mlp_plain"]
        flops = _flops_at_1024(default) / _flops_at_1024(plain)
        parameters = default["parameters"] / plain["parameters"]
        return (
            f"the default does {flops:.1f}x the plain MLP's arithmetic per row, "
            "its first layer as gathers of two rows per value rather than matrix "
            f"products, and updates {parameters:.1f}x its parameters every step: "
            "the cost is the model's, not the loop's"
        )
    return ""


def _flops_at_1024(model: Dict[str, Any]) -> float:
    """A model option's training FLOPs per row at batch 1024 (files before
    per-batch counts hold one count)."""
    batch = model["batches"].get("1024", {})
    return batch.get("train_flops_per_row", model["train_flops_per_row"])


def _missed_floor_reason(target: Dict[str, Any], serve: Dict[str, Any]) -> str:
    """Why single-row requests miss their share of the constant-JSON route's
    rate, from the same result file: what batching took off the event loop, and
    the request's own parsing and validation that stays on it."""
    if "constant JSON" not in target["target"] or target["value"] is None:
        return ""
    config = next(
        (c for c in serve["results"] if c["engine"] == "onnx" and c["workers"] == 1),
        {},
    )
    timing = serve.get("in_process", {}).get("onnx", {}).get("1")
    if "floor" not in config or timing is None:
        return ""
    floor_ms = 1e3 / config["floor"]["requests_per_second"]
    validate_ms = timing["validate_request_ms"]
    reason = (
        f"the constant route costs the event loop {floor_ms:.3f} ms per request "
        f"in all; a single-record request adds, on the same loop, its body's "
        f"parsing and validation ({validate_ms:.3f} ms in process) and its "
        "answer's serialisation"
    )
    comparison = serve.get("batching_comparison") or {}
    unbatched = comparison.get("floor_share", {}).get("unbatched")
    if unbatched is not None:
        reason += (
            ", while the model runs beside it on the scoring thread, on every "
            f"request queued meanwhile ({unbatched:.2f}x with "
            "serve.batching=false, same run)"
        )
    return reason


def _missed_batch_reason(paths: Dict[str, Any]) -> str:
    """Why predict.py missed its in-process rate, from the same result file: the
    model's own arithmetic at this machine's matmul peak, and the forward stage
    as profiled."""
    floor = paths.get("model_forward_floor", {})
    if "seconds" not in floor:
        return ""
    rows = paths["setup"]["rows"]
    goal = paths["target"]["predict_parquet_rows_per_second_at_least"]
    forward = paths["batch_profile"]["stages"]["model forward"]
    return (
        f"the model's matrix products alone need {floor['seconds']:.2f} s for "
        f"{rows:,} rows at the matmul peak train_throughput.json measured "
        f"({floor['matmul_peak_gflops']:.0f} GFLOP/s), leaving "
        f"{rows / goal - floor['seconds']:.2f} s of the target's {rows / goal:.2f} s "
        f"for reading, typing and writing; the profiled forward pass took "
        f"{forward:.2f} s"
    )


def requirements(results) -> List[Dict[str, Any]]:
    """The targets the result files recorded, each with its measured value and
    whether it was met (the report states the missed ones as missed); none from
    a file that lacks them."""
    try:
        return _requirements(results)
    except (KeyError, TypeError, ValueError):  # an older or partial result file
        return []


def _requirements(results) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    serve = results["serve_load"]
    for target in (serve or {}).get("targets", []):
        if target["config"].startswith("onnx, 1 worker"):
            rows.append(
                _requirement(
                    "real-time latency and errors (the service's default engine)",
                    target["target"],
                    (
                        "not measured"
                        if target["value"] is None
                        else f"{target['value']:,}"
                    ),
                    target["met"],
                    "serve_load.json",
                    _missed_floor_reason(target, serve),
                )
            )
    paths = results["inference_paths"]
    if paths is not None:
        goal = paths["target"]["predict_parquet_rows_per_second_at_least"]
        rows.append(
            _requirement(
                "batch throughput, 1M rows Parquet -> Parquet, in process",
                f">= {goal:,} rows/s",
                f"{paths['target']['in_process_value']:,.0f} rows/s",
                paths["target"]["in_process_met"],
                "inference_paths.json",
                _missed_batch_reason(paths),
            )
        )
        rows.append(
            _requirement(
                "the same, whole process (start-up included)",
                f">= {goal:,} rows/s",
                f"{paths['target']['value']:,.0f} rows/s",
                paths["target"]["met"],
                "inference_paths.json",
                f"{paths['startup']['seconds']:.2f} s of start-up (interpreter, "
                "torch, pandas, Hydra) before the first row: a 1M-row file is too "
                "small to amortise it"
                + (
                    "; the in-process path meets the target"
                    if paths["target"]["in_process_met"]
                    else ""
                ),
            )
        )
        earlier = paths.get("vs_earlier_path")
        if earlier:
            rows.append(
                _requirement(
                    "batch predict against the earlier path (eager PyTorch, one "
                    "stage after the other), in process, in the same rounds",
                    f">= {earlier['goal']:g}x",
                    f"{earlier['value']:.2f}x",
                    earlier["met"],
                    "inference_paths.json",
                    _missed_earlier_path_reason(paths),
                )
            )
    scale = results["preprocess_scale"]
    if scale is not None:
        target = scale["target"]
        rows.append(
            _requirement(
                "memory: preprocessing and prediction at 10M rows",
                f"peak RSS < {target['peak_rss_mib_below']:,} MiB",
                f"{max(target['max_peak_rss_mib'].values()):,.0f} MiB",
                target["met"],
                "preprocess_scale.json",
            )
        )
    for name, keys in SCALE_TARGETS.items():
        measured = ((results[name] or {}).get("targets")) or {}
        for key in (key for key in keys if key in measured):
            target = measured[key]
            rows.append(
                _requirement(
                    "scaling out: " + key.replace("_", " "),
                    target["goal"],
                    _measured_text(target["measured"]),
                    target["met"],
                    f"{name}.json",
                )
            )
    train = results["train_throughput"]
    repeats = (results.get("train_throughput_repeat") or {}).get("targets") or {}
    for name, target in ((train or {}).get("targets") or {}).items():
        row = _requirement(
            "training loop: " + name.replace("_", " "),
            f">= {target['goal']:g}",
            f"{target['value']:.2f}",
            target["met"],
            "train_throughput.json",
            _missed_training_reason(name, train),
        )
        repeat = repeats.get(name)
        if repeat is not None and repeat.get("goal") == target["goal"]:
            row = _with_repeat(row, repeat, _missed_training_reason(name, train))
        rows.append(row)
    return rows


def _with_repeat(
    row: Dict[str, Any], repeat: Dict[str, Any], reason: str
) -> Dict[str, Any]:
    """A training target's row with its repeat run's value beside it: met only
    where both runs meet it. `reason`: why the target costs what it does, kept
    whichever run missed."""
    value = f"{row['value']} (repeat run: {repeat['value']:.2f})"
    met = bool(row["met"]) and bool(repeat["met"])
    measured = f"a repeat of the same comparison measured {repeat['value']:.2f}"
    return _requirement(
        row["name"],
        row["target"],
        value,
        met,
        "train_throughput.json, train_throughput_repeat.json",
        f"{measured}; {reason}" if reason else measured,
    )


def all_facts(results) -> Dict[str, Any]:
    return {
        "training": training(results),
        "serving": serving(results),
        "batch": batch(results),
        "paths": inference_paths(results),
        "storage": storage(results),
        "scale": scale_out(results),
        "quality": quality(results),
        "provenance": provenance(results),
        "gpu_measured": results["throughput_cuda_bf16"] is not None,
        "crossovers": crossovers(results),
        # The default data set (conf/data/telco_churn.yaml: modeldata/wa_churn).
        "telco_rows": figure(
            results["quality"],
            "quality.json",
            lambda d: (
                d["results"]["wa_churn"]["rows"]
                if d["setup"]["max_rows"] is None  # not a subsample
                else None
            ),
            "{:,}",
        ),
        "requirements": requirements(results),
    }
