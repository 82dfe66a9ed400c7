"""CPU vs GPU end to end: train.py and predict.py as a user runs them, on the
same tables, each whole process timed (start-up, CUDA initialisation, transfers,
validation and test included), and the table size from which the GPU wins.

    python -m benchmarks.device_end_to_end                        # every device here
    python -m benchmarks.device_end_to_end --rows 20000 100000 --epochs 2   # smaller

In one run, for each table size (`--rows` rows x `--features` numeric columns,
binary target, the synthetic table): data_preprocessing.py once, then train.py
(the default model, `train=quick` with `train.max_epochs=--epochs`) on each
device variant: `device=cuda` (AMP: bf16 where the GPU has it), `device=cuda
device.amp=false`, and `device=cpu` (the variants this machine can run). Then
predict.py scores the largest table's raw CSV into Parquet with each device's
model on its device (engine torch).

The crossover: each variant's train.py seconds fitted as `start + per_row x rows
x epochs` through its smallest and largest table; the GPU variant wins end to
end from `(start_gpu - start_cpu) / (per_row_cpu - per_row_gpu)` rows x epochs
on, for this model at this width. The CPU side is this machine's CPU: another
machine's CPU moves the crossover, which is why the machine is recorded.
Results: benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from benchmarks.common import (
    add_output_arguments,
    record_header,
    run_record,
    synthetic_numeric_table,
    write_results,
)
from benchmarks.processes import measured, raw_csv_command

# device variant -> train.py / predict.py overrides
VARIANTS = {
    "cuda_amp": ["device=cuda"],
    "cuda_fp32": ["device=cuda", "device.amp=false"],
    "cpu": ["device=cpu"],
}
CPU = "cpu"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 1_000_000])
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=None,
        help="default: the CUDA variants when CUDA is available, and the CPU",
    )
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/device_e2e"))
    parser.add_argument("--label", default="")
    add_output_arguments(parser, "device_end_to_end")
    return parser.parse_args()


def variants_here(chosen: Optional[List[str]]) -> List[str]:
    if chosen:
        return chosen
    return list(VARIANTS) if torch.cuda.is_available() else [CPU]


def train(rows: int, variant: str, args, work: Path) -> Dict[str, Any]:
    outputs = work / "outputs" / f"{rows}_{variant}"
    command = [
        sys.executable,
        "train.py",
        "train=quick",
        f"train.max_epochs={args.epochs}",
        "train.plot=false",
        f"paths.outputs_dir={outputs}",
        *synthetic_numeric_table(rows, args.features, work),
        *VARIANTS[variant],
    ]
    step = measured(command)
    run_dir = max((outputs / "train").iterdir(), key=lambda path: path.stat().st_mtime)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = metrics["history"]
    result = {
        "process_seconds": step["process_seconds"],
        "peak_rss_mib": step["peak_rss_mib"],
        "device": metrics["training"].get("device"),
        "amp_dtype": metrics["training"].get("amp_dtype"),
        "batch_size": metrics["training"].get("batch_size"),
        "epochs": len(history),
        "rows_per_second_last_epoch": history[-1]["rows_per_second"],
        "test_roc_auc": metrics["final"]["test"]["roc_auc"],
        "run_dir": str(run_dir),
    }
    print(f"  train {rows:,} rows on {variant}: {short(result)}", flush=True)
    return result


def predict(source: Path, run_dir: str, variant: str, work: Path) -> Dict[str, Any]:
    output = work / f"scored_{variant}.parquet"
    command = [
        sys.executable,
        "predict.py",
        f"run_dir={run_dir}",
        f"input={source}",
        f"output={output}",
        "engine=torch",
        f"paths.outputs_dir={work / 'outputs' / 'predict'}",
        *VARIANTS[variant],
    ]
    step = measured(command)
    result = {
        "process_seconds": step["process_seconds"],
        "peak_rss_mib": step["peak_rss_mib"],
        "output_bytes": output.stat().st_size,
    }
    print(f"  predict on {variant}: {short(result)}", flush=True)
    output.unlink()
    return result


def short(result: Dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {v:,.3f}" if isinstance(v, float) else f"{k} {v}"
        for k, v in result.items()
        if k != "run_dir"
    )


def line_through(points: List[tuple]) -> Dict[str, float]:
    """start + per_row x work through the smallest and largest work."""
    (w0, t0), (w1, t1) = min(points), max(points)
    per_row = (t1 - t0) / (w1 - w0)
    return {"start_seconds": t0 - per_row * w0, "seconds_per_row_epoch": per_row}


def fitted(tables: Dict[str, Any], variant: str, epochs: int) -> Dict[str, float]:
    """The variant's train.py seconds against rows x epochs, as a line."""
    return line_through(
        [
            (int(rows) * epochs, table["train"][variant]["process_seconds"])
            for rows, table in tables.items()
        ]
    )


def crossovers(fits: Dict[str, Dict[str, float]]) -> Dict[str, Any]:
    """Rows x epochs from which each GPU variant's train.py ends first."""
    out: Dict[str, Any] = {}
    if CPU not in fits:
        return out
    cpu = fits[CPU]
    for variant, fit in fits.items():
        if variant == CPU:
            continue
        saving = cpu["seconds_per_row_epoch"] - fit["seconds_per_row_epoch"]
        extra_start = fit["start_seconds"] - cpu["start_seconds"]
        if saving <= 0:
            out[variant] = {"rows_x_epochs": None, "why": "never: no faster per row"}
        else:
            out[variant] = {"rows_x_epochs": max(0.0, extra_start / saving)}
    return out


def main() -> None:
    args = parse_args()
    variants = variants_here(args.variants)
    load_start = os.getloadavg()[0]
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    tables: Dict[str, Any] = {}
    for rows in sorted(args.rows):
        print(f"{rows:,} rows x {args.features} numeric columns", flush=True)
        overrides = synthetic_numeric_table(rows, args.features, work)
        raw = measured(raw_csv_command(overrides))["stdout"].strip().splitlines()[-1]
        prep = measured([sys.executable, "data_preprocessing.py", *overrides])
        tables[str(rows)] = {
            "raw_csv": raw,
            "preprocess_seconds": prep["process_seconds"],
            "train": {v: train(rows, v, args, work) for v in variants},
        }
    largest = tables[str(max(args.rows))]
    predictions = {
        variant: predict(Path(largest["raw_csv"]), run["run_dir"], variant, work)
        for variant, run in largest["train"].items()
    }
    fits = {}
    if len(set(args.rows)) >= 2:  # a line needs two table sizes
        fits = {variant: fitted(tables, variant, args.epochs) for variant in variants}
    payload = {
        **run_record("device_end_to_end", load_start, args.label),
        "devices": devices(),
        "setup": {
            "rows": sorted(args.rows),
            "numeric_features": args.features,
            "epochs": args.epochs,
            "variants": {v: VARIANTS[v] for v in variants},
            "train_command": "train.py train=quick train.max_epochs=EPOCHS "
            "train.plot=false data=synthetic ... DEVICE",
            "predict_command": "predict.py engine=torch input=<largest raw CSV> "
            "output=<Parquet> DEVICE",
        },
        "tables": tables,
        "predict": {"rows": max(args.rows), "variants": predictions},
        "fits": fits,
        "crossover": crossovers(fits),
    }
    write_results(args.out, args.name, payload, render_markdown)
    print(json.dumps({"fits": fits, "crossover": payload["crossover"]}, indent=2))


def devices() -> Dict[str, Any]:
    found: Dict[str, Any] = {"cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(0)
        found["cuda"] = torch.version.cuda
        found["bf16"] = torch.cuda.is_bf16_supported()
    return found


def render_markdown(payload) -> str:
    setup, found = payload["setup"], payload["devices"]
    gpu = found.get("gpu", "no GPU")
    lines = [
        "# CPU vs GPU end to end: train.py and predict.py as a user runs them",
        "",
        *record_header(payload),
        f"GPU: {gpu}" + (f", CUDA {found['cuda']}" if "cuda" in found else "") + ".",
        "",
        f"Synthetic tables of {setup['numeric_features']} numeric columns, the "
        f"default model, {setup['epochs']} epochs (`{setup['train_command']}`); "
        "each figure is one process's wall seconds, start-up, CUDA initialisation, "
        "transfers, validation and test included.",
        "",
        "| rows | device | train.py s | rows/s (last epoch) | batch | test AUC "
        "| peak RSS MiB |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for rows, table in payload["tables"].items():
        for variant, run in table["train"].items():
            lines.append(
                f"| {int(rows):,} | {variant} | {run['process_seconds']:.1f} "
                f"| {run['rows_per_second_last_epoch']:,.0f} | {run['batch_size']} "
                f"| {run['test_roc_auc']:.4f} | {run['peak_rss_mib']:,.0f} |"
            )
    scored = payload["predict"]
    lines += [
        "",
        f"predict.py on the {scored['rows']:,}-row raw CSV to Parquet "
        f"(`{setup['predict_command']}`):",
        "",
        "| device | predict.py s | peak RSS MiB |",
        "|---|---:|---:|",
    ]
    for variant, run in scored["variants"].items():
        lines.append(
            f"| {variant} | {run['process_seconds']:.1f} "
            f"| {run['peak_rss_mib']:,.0f} |"
        )
    if payload["fits"]:
        lines += [
            "",
            "## Where the GPU starts to win",
            "",
            "train.py seconds = start + per row x rows x epochs, through the "
            "smallest and largest table:",
            "",
            "| device | start s | us per row x epoch | GPU wins from rows x epochs |",
            "|---|---:|---:|---:|",
        ]
        for variant, fit in payload["fits"].items():
            cross = payload["crossover"].get(variant)
            wins = "-"
            if cross is not None:
                wins = (
                    f"{cross['rows_x_epochs']:,.0f}"
                    if cross["rows_x_epochs"] is not None
                    else cross["why"]
                )
            lines.append(
                f"| {variant} | {fit['start_seconds']:.1f} "
                f"| {fit['seconds_per_row_epoch'] * 1e6:.2f} | {wins} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
