"""Training-loop throughput: our loop against a bare loop and a per-row DataLoader.

    python benchmarks/train_throughput.py                  # 1M rows x 64 numeric
    python benchmarks/train_throughput.py --rows 20000 --repeats 1   # smoke size

The loops train the same TabularMLP (hidden [256, 256], no dropout unless named)
with AdamW at the same batch size on the same generated table, side by side in one
process; each figure is the median of `--repeats` epochs after one warm-up epoch.
Results go to benchmarks/results/train_throughput.{json,md} with the machine noted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from modelsphere.devices import make_grad_scaler, select_device
from modelsphere.model import ModelSpec, build_model
from modelsphere.provenance import package_versions
from modelsphere.epochs import SplitTensors, train_one_epoch
from modelsphere.optimization import make_loss, make_optimizer, make_scheduler

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-amp", action="store_true", help="float32 on CUDA too")
    parser.add_argument("--skip-dataloader", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="train_throughput")
    return parser.parse_args()


def make_data(rows: int, features: int, device: torch.device) -> SplitTensors:
    generator = torch.Generator().manual_seed(0)
    numeric = torch.randn(rows, features, generator=generator)
    weights = torch.randn(features, generator=generator)
    target = (numeric @ weights + torch.randn(rows, generator=generator) > 0).long()
    categorical = torch.zeros(rows, 0, dtype=torch.long)
    return SplitTensors(numeric.to(device), categorical.to(device), target.to(device))


def fresh_model(args, device, dropout: float = 0.0):
    torch.manual_seed(0)
    spec = ModelSpec(args.features, [], [], list(args.hidden), 1, "relu", dropout)
    model = build_model(spec).to(device)
    return model, make_optimizer(model, 1e-3, 1e-4)


def timed(epoch_fn, repeats: int) -> list:
    epoch_fn()  # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        epoch_fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def ours(args, data, choice, dropout: float = 0.0):
    """train_one_epoch as train.py runs it: clipping, cosine schedule, NaN check."""
    model, optimizer = fresh_model(args, choice.device, dropout)
    train_cfg = argparse.Namespace(max_epochs=1000, warmup_epochs=0, scheduler="cosine")
    steps = -(-len(data) // args.batch_size)
    scheduler = make_scheduler(optimizer, train_cfg, steps)
    loss_fn = make_loss("binary", data.target, "none")
    generator = torch.Generator().manual_seed(0)
    scaler = make_grad_scaler(choice)

    def epoch():
        train_one_epoch(
            model,
            data,
            args.batch_size,
            optimizer,
            scheduler,
            loss_fn,
            choice,
            1.0,
            generator,
            scaler,
        )

    return epoch


def bare(args, data, choice):
    """The reference: randperm + index slices, forward, backward, step; nothing else."""
    model, optimizer = fresh_model(args, choice.device)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def epoch():
        model.train()
        order = torch.randperm(len(data)).to(choice.device)
        for start in range(0, len(data), args.batch_size):
            index = order[start : start + args.batch_size]
            loss = loss_fn(
                model(data.numeric[index], data.categorical[index])[:, 0],
                data.target[index].float(),
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return epoch


def per_row_dataloader(args, data, choice):
    """The common tutorial loop: a DataLoader that fetches and collates row by row."""
    model, optimizer = fresh_model(args, choice.device)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    dataset = TensorDataset(data.numeric.cpu(), data.target.cpu())
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
    empty = torch.zeros(args.batch_size, 0, dtype=torch.long, device=choice.device)

    def epoch():
        model.train()
        for numeric, target in loader:
            numeric, target = numeric.to(choice.device), target.to(choice.device)
            loss = loss_fn(model(numeric, empty[: len(numeric)])[:, 0], target.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return epoch


def main() -> None:
    args = parse_args()
    choice = select_device(args.device, amp=not args.no_amp)
    data = make_data(args.rows, args.features, choice.device)
    loops = {
        "ours": ours,
        "bare_randperm_loop": bare,
        # The default `mlp` preset adds dropout 0.1; its cost shows here.
        "ours_with_dropout_0.1": lambda *a: ours(*a, dropout=0.1),
    }
    if not args.skip_dataloader:
        loops["per_row_dataloader"] = per_row_dataloader
    results = {}
    for name, build in loops.items():
        times = timed(build(args, data, choice), args.repeats)
        median = statistics.median(times)
        results[name] = {
            "epoch_seconds": times,
            "median_seconds": median,
            "rows_per_second": args.rows / median,
        }
        print(
            f"{name:22s} {args.rows / median:12,.0f} rows/s  (median of {len(times)})"
        )
    ours_rate = results["ours"]["rows_per_second"]
    ratios = {
        f"ours_vs_{k}": ours_rate / v["rows_per_second"]
        for k, v in results.items()
        if k != "ours"
    }
    payload = {
        "benchmark": "train_throughput",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(choice.device),
            "amp": str(choice.amp_dtype),
        },
        "versions": package_versions(),
        "setup": {
            "rows": args.rows,
            "numeric_features": args.features,
            "hidden_sizes": args.hidden,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
        },
        "results": results,
        "ratios": ratios,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(render_markdown(payload))
    print(json.dumps(ratios, indent=2))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render_markdown(payload) -> str:
    setup, machine = payload["setup"], payload["machine"]
    lines = [
        "# Training-loop throughput",
        "",
        f"{payload['date']}, {machine['processor']}, {machine['platform']}, "
        f"{machine['cpu_count']} CPUs, "
        f"torch threads {machine['torch_threads']}, device {machine['device']}, "
        f"torch {payload['versions']['torch']}.",
        "",
        f"{setup['rows']:,} rows x {setup['numeric_features']} numeric columns, hidden "
        f"{setup['hidden_sizes']}, batch {setup['batch_size']}, AdamW; median of "
        f"{setup['repeats']} epochs after a warm-up epoch, all loops in one process.",
        "",
        "| loop | rows/s | median epoch (s) |",
        "|---|---:|---:|",
    ]
    for name, result in payload["results"].items():
        lines.append(
            f"| {name} | {result['rows_per_second']:,.0f} "
            f"| {result['median_seconds']:.2f} |"
        )
    lines += [
        "",
        "Ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in payload["ratios"].items()),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
