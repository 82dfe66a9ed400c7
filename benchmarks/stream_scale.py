"""A training split several times larger than the memory budget, streamed.

    python -m benchmarks.stream_scale                    # 20M rows x 64 numeric columns
    python -m benchmarks.stream_scale --rows 200000 --budget-mib 8   # smoke size

The synthetic table (`data=synthetic`, numeric columns only, binary target) is
generated and preprocessed to Parquet splits, then `train.py` trains one epoch
with `train.loading=auto` and `train.memory_budget_mib=<budget>`: the training
split's tensors would take several times the budget, so training streams the
split's row groups through its shuffle buffer (training/streaming.py). Each step
runs as its own process under `/usr/bin/time -v` (peak RSS = "Maximum resident
set size"). Results go to benchmarks/results/stream_scale.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from benchmarks.common import REPO, add_output_arguments, record_header, run_record
from benchmarks.common import synthetic_numeric_overrides, write_results
from benchmarks.processes import measured

TARGET_PEAK_RSS_MIB = 2048  # the target for one streamed epoch at 20M rows
TENSORS_LOGGED = re.compile(r"its tensors would take ([\d,.]+) MiB")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--numeric", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--budget-mib", type=float, default=1024)
    parser.add_argument(
        "--row-group-rows", type=int, default=131_072, help="of the Parquet splits"
    )
    parser.add_argument("--buffer-rows", type=int, default=262_144)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    add_output_arguments(parser, "stream_scale")
    parser.add_argument("--label", default="", help="what code this measures")
    return parser.parse_args()


def overrides(args, work: Path) -> List[str]:
    return synthetic_numeric_overrides(args, work) + [
        f"paths.outputs_dir={work / 'outputs'}"
    ]


def train_settings(args) -> List[str]:
    return [
        "model.numeric_embedding=none",
        f"train.batch_size={args.batch_size}",
        "train.max_epochs=1",
        "train.plot=false",
        "train.loading=auto",
        f"train.memory_budget_mib={args.budget_mib:g}",
        f"train.shuffle_buffer_rows={args.buffer_rows}",
    ]


def main() -> None:
    args = parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="stream_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    python = [sys.executable]
    try:
        prepare = measured(
            python + [str(REPO / "data_preprocessing.py"), *overrides(args, work)]
        )
        trained = measured(
            python
            + [str(REPO / "train.py"), *overrides(args, work), *train_settings(args)]
        )
        (run_dir,) = list((work / "outputs" / "train").iterdir())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        data_bytes = sum(
            path.stat().st_size for path in (work / "data").rglob("*.parquet")
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    logged = TENSORS_LOGGED.search(trained["stdout"] + trained["stderr"])
    tensors_mib = float(logged.group(1).replace(",", "")) if logged else None
    epoch = metrics["history"][-1]
    payload = {
        **run_record("stream_scale", load_before[0], args.label),
        "setup": {
            "rows": args.rows,
            "numeric_columns": args.numeric,
            "batch_size": args.batch_size,
            "memory_budget_mib": args.budget_mib,
            "model": "the MLP without numeric embeddings (model.numeric_embedding="
            "none)",
        },
        "results": {
            "preprocessing": {
                "seconds": prepare["process_seconds"],
                "peak_rss_mib": prepare["peak_rss_mib"],
                "parquet_splits_mib": data_bytes / 2**20,
            },
            "training": {
                "loading": metrics["training"]["loading"],
                "train_rows": epoch["rows_per_process"][0],
                "tensors_mib_in_memory": tensors_mib,
                "epoch_seconds": epoch["seconds"],
                "rows_per_second": epoch["rows_per_second"],
                "process_seconds": trained["process_seconds"],
                "peak_rss_mib": trained["peak_rss_mib"],
                "test_roc_auc": metrics["final"]["test"]["roc_auc"],
            },
        },
    }
    peak = trained["peak_rss_mib"]
    payload["targets"] = {
        "peak_rss": {
            "goal": f"one streamed epoch at peak RSS < {TARGET_PEAK_RSS_MIB} MiB",
            "measured": round(peak, 1),
            "met": peak < TARGET_PEAK_RSS_MIB
            and metrics["training"]["loading"] == "stream",
        }
    }
    write_results(args.out, args.name, payload, render_markdown)
    print(json.dumps(payload["targets"], indent=2))


def render_markdown(payload: Dict[str, Any]) -> str:
    setup = payload["setup"]
    prep, train = payload["results"]["preprocessing"], payload["results"]["training"]
    tensors = train["tensors_mib_in_memory"]
    lines = [
        "# A training split larger than the memory budget, streamed",
        "",
        *record_header(payload),
        f"{setup['rows']:,} synthetic rows x {setup['numeric_columns']} numeric "
        f"columns (binary target), {setup['model']}, batch {setup['batch_size']}, "
        f"one epoch on the CPU with `train.loading=auto "
        f"train.memory_budget_mib={setup['memory_budget_mib']:g}`. Each step is its "
        "own process under `/usr/bin/time -v`.",
        "",
        "| step | seconds | rows/s | peak RSS (MiB) |",
        "|---|---:|---:|---:|",
        f"| preprocessing (CSV → Parquet splits, {prep['parquet_splits_mib']:,.0f} "
        f"MiB) | {prep['seconds']:.0f} | — | {prep['peak_rss_mib']:,.0f} |",
        f"| training, one epoch of {train['train_rows']:,} rows "
        f"({train['loading']}) | {train['process_seconds']:.0f} "
        f"| {train['rows_per_second']:,.0f} | {train['peak_rss_mib']:,.0f} |",
        "",
        (
            f"In memory, the training split's tensors would take {tensors:,.0f} MiB: "
            f"{tensors / setup['memory_budget_mib']:.1f}x the budget. "
            if tensors
            else ""
        )
        + f"Test ROC AUC after the epoch: {train['test_roc_auc']:.4f}.",
        "",
    ]
    for goal in payload["targets"].values():
        verdict = "met" if goal["met"] else "NOT met"
        lines.append(f"- {goal['goal']}: {goal['measured']} MiB (**{verdict}**)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
