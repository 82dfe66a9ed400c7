"""Does streaming cost quality? The default model trained twice on the same
splits and seeds, once holding the training split in memory (`train.loading=memory`)
and once streaming it through the shuffle buffer (`train.loading=stream`).

    python -m benchmarks.stream_quality                  # Telco + three benchmark sets
    python -m benchmarks.stream_quality --seeds 2 --datasets wa_churn

Both runs read the same processed splits, written in small row groups
(`--row-group-rows`) so that the streamed run's shuffle buffer (`--buffer-rows`)
holds a few row groups of a split of thousands of rows: its batches are drawn
from a window of the split, not from the whole of it, as on a table larger than
memory. Seed s sets the split and the training seed of both runs (as in
benchmarks/quality.py, whose data sets and configs this reuses). The target:
on every data set, the streamed runs' mean test metric within one std (over
seeds) of the in-memory runs' mean. Results go to
benchmarks/results/stream_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from benchmarks.common import add_output_arguments, record_header, run_record
from benchmarks.common import write_results
from benchmarks.quality import ALL_DATASETS, compose_run_config, fit_option
from benchmarks.quality import write_raw_csv
from benchmarks.quality_report import PRIMARY, summarise

LOADINGS = ("memory", "stream")
# wa_churn is the Telco table of data=telco_churn; one set of each other task.
DEFAULT_DATASETS = ("wa_churn", "credit_data", "cps1988", "hpc_data")
OPTION = "mlp"  # the default model


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--row-group-rows", type=int, default=256)
    parser.add_argument("--buffer-rows", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, default=None, help="smoke size")
    parser.add_argument("--work-dir", type=Path, default=None)
    add_output_arguments(parser, "stream_quality")
    parser.add_argument("--label", default="", help="what code this measures")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.datasets) - set(ALL_DATASETS))
    if unknown:
        parser.error(f"unknown data sets: {unknown}; known: {sorted(ALL_DATASETS)}")
    return args


def run_settings(args, loading: str) -> argparse.Namespace:
    """What benchmarks.quality.compose_run_config reads, with the loading's
    overrides for the default model."""
    settings = [
        f"data.write_row_group_rows={args.row_group_rows}",
        f"train.loading={loading}",
        f"train.shuffle_buffer_rows={args.buffer_rows}",
    ]
    return argparse.Namespace(
        threads=args.threads,
        max_epochs=args.max_epochs,
        quick=False,
        override=[f"{OPTION}:{setting}" for setting in settings],
    )


def run_dataset(name: str, args, work: Path) -> Dict[str, Any]:
    spec = ALL_DATASETS[name]
    csv, rows = write_raw_csv(name, spec, None, work / "raw")
    runs: Dict[str, List[Dict[str, Any]]] = {loading: [] for loading in LOADINGS}
    for seed in range(args.seeds):
        for loading in LOADINGS:
            cfg, _ = compose_run_config(
                OPTION, csv, spec, seed, run_settings(args, loading), work
            )
            run_dir = work / "outputs" / name / f"{loading}_seed{seed}"
            run = fit_option(cfg, run_dir)
            training = json.loads((run_dir / "metrics.json").read_text())["training"]
            run.update(seed=seed, loading=training["loading"])
            runs[loading].append(run)
            logging.getLogger("stream_quality").warning(
                "%s seed %d %s: %s %.4f",
                name,
                seed,
                loading,
                PRIMARY[spec.task],
                run["test"][PRIMARY[spec.task]],
            )
    return {
        "source": f"{spec.package}/{spec.item}",
        "task": spec.task,
        "rows": rows,
        "runs": runs,
        "summary": summarise(runs, spec.task),
    }


def targets(results: Dict[str, Any]) -> Dict[str, Any]:
    """Per data set: |streamed mean - in-memory mean| <= the in-memory std."""
    report = {}
    for name, entry in results.items():
        metric = PRIMARY[entry["task"]]
        memory = entry["summary"]["memory"][metric]
        streamed = entry["summary"]["stream"][metric]
        gap = streamed["mean"] - memory["mean"]
        report[name] = {
            "metric": metric,
            "gap": gap,
            "memory_std": memory["std"],
            "met": abs(gap) <= memory["std"],
        }
    return report


def render(payload: Dict[str, Any]) -> str:
    setup = payload["setup"]
    lines = [
        "# Streaming against holding the split in memory: test quality",
        "",
        *record_header(payload),
        f"The default model, {setup['seeds']} seeds (each sets the split and the "
        "training seed of both runs), "
        f"`data.write_row_group_rows={setup['row_group_rows']}`; the streamed run "
        f"with `train.loading=stream train.shuffle_buffer_rows={setup['buffer_rows']}`"
        ": its batches come from windows of a few row groups, not from the whole "
        "split.",
        "",
        "| data set | task | rows | metric | in memory | streamed | gap | "
        "target: gap <= in-memory std |",
        "|---|---|---:|---|---:|---:|---:|---|",
    ]
    for name, entry in payload["results"].items():
        check = payload["targets"][name]
        memory = entry["summary"]["memory"][check["metric"]]
        streamed = entry["summary"]["stream"][check["metric"]]
        lines.append(
            f"| {name} | {entry['task']} | {entry['rows']:,} | {check['metric']} | "
            f"{memory['mean']:.4f} ± {memory['std']:.4f} | "
            f"{streamed['mean']:.4f} ± {streamed['std']:.4f} | "
            f"{check['gap']:+.4f} | {'**met**' if check['met'] else '**NOT met**'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="stream-quality-"))
    results = {name: run_dataset(name, args, work) for name in args.datasets}
    payload = {
        **run_record("stream_quality", load_start, args.label),
        "setup": {
            "datasets": args.datasets,
            "seeds": args.seeds,
            "row_group_rows": args.row_group_rows,
            "buffer_rows": args.buffer_rows,
            "threads": args.threads,
            "max_epochs": args.max_epochs,
            "model": OPTION,
        },
        "results": results,
        "targets": targets(results),
    }
    write_results(args.out, args.name, payload, render)
    return payload


if __name__ == "__main__":
    main()
