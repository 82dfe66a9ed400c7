"""Sweeps: how each job of a multirun ended, and the leaderboard over them.

Every sweep job records how it ended in its dir as `job_status.json` (written by
`cli.entry_point`: completed, failed with its error, or interrupted). After a
multirun, the `Leaderboard` callback (registered in conf/hydra/default.yaml, so it
runs with any sweeper and launcher) reads each job's `.hydra/overrides.yaml`,
`metrics.json` and `job_status.json` and writes `summary.csv` and `summary.md` in
the sweep dir: the best job first by the monitored metric (max or min, as the
metric wants), failed jobs at the bottom with their error.

The leaderboard is also rewritten after each job, so it shows a long sweep's
progress and survives a sweep that stops early. `python -m modelsphere.sweeps
<sweep dir>` writes it again from the files, e.g. after Ctrl-C.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import re
import socket
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from modelsphere.core.errors import ModelSphereError
from modelsphere.core.fileio import atomic_write_json, atomic_write_text
from modelsphere.core.runs import JOB_STATUS_FILE, METRICS_FILE

log = logging.getLogger(__name__)

OVERRIDES_FILE = ".hydra/overrides.yaml"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
MAX_ERROR_CHARS = 300  # in summary.md; summary.csv keeps the whole message

# Leaderboard order: ranked jobs, then the rest by how they ended.
_GROUP = {"completed": 1, "interrupted": 2, "unknown": 3, "failed": 4}


def write_job_status(
    output_dir: str | Path, status: str, seconds: float, **fields: Any
) -> None:
    """Record how a sweep job ended; a failure to write is logged, never raised."""
    path = Path(output_dir) / JOB_STATUS_FILE
    payload = {
        "status": status,
        "seconds": seconds,
        "finished": datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "output_dir": str(output_dir),
    }
    payload.update(fields)
    try:
        atomic_write_json(path, payload)
    except (OSError, ModelSphereError, TypeError, ValueError) as exc:
        log.warning("could not write %s: %s", path, exc)


@dataclass
class JobRecord:
    """One sweep job, as its files describe it."""

    job: str  # the job dir, relative to the sweep dir
    status: str = "unknown"  # completed | failed | interrupted | unknown
    overrides: List[str] = field(default_factory=list)
    monitor: Optional[str] = None  # e.g. val_roc_auc
    mode: Optional[str] = None  # max | min
    best: Optional[float] = None
    best_epoch: Optional[int] = None
    epochs: Optional[int] = None
    val: Dict[str, float] = field(default_factory=dict)
    test: Dict[str, float] = field(default_factory=dict)
    train_seconds: Optional[float] = None
    wall_seconds: Optional[float] = None
    error: Optional[str] = None
    rank: Optional[int] = None


def _read(path: Path, load, problems: List[str]) -> Any:
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return load(handle)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        problems.append(f"cannot read {path.name}: {exc}")
        return None


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def read_job(job_dir: Path, sweep_dir: Path) -> JobRecord:
    """A job's record from its files; whatever is missing or unreadable stays empty."""
    record = JobRecord(job=str(job_dir.relative_to(sweep_dir)))
    problems: List[str] = []
    status = _read(job_dir / JOB_STATUS_FILE, json.load, problems)
    metrics = _read(job_dir / METRICS_FILE, json.load, problems)
    overrides = _read(job_dir / OVERRIDES_FILE, yaml.safe_load, problems)
    if not isinstance(status, dict):
        status = {}
    if overrides is None:
        overrides = status.get("overrides")
    record.overrides = [str(item) for item in overrides or []]
    if isinstance(metrics, dict) and isinstance(metrics.get("monitor"), dict):
        record.status = str(metrics.get("status", "completed"))
        record.monitor = metrics["monitor"].get("metric")
        record.mode = metrics["monitor"].get("mode")
        best = metrics.get("best") or {}
        record.best = _number(best.get(record.monitor))
        record.best_epoch = best.get("epoch")
        final = metrics.get("final") or {}
        for split in ("val", "test"):
            values = final.get(split) or {}
            setattr(
                record,
                split,
                {k: _number(v) for k, v in values.items() if k != "rows"},
            )
        training = metrics.get("training") or {}
        record.epochs = training.get("epochs_run")
        record.train_seconds = _number(training.get("seconds"))
    if status.get("status"):
        record.status = str(status["status"])
        record.error = status.get("error")
        record.wall_seconds = _number(status.get("seconds"))
    if record.status == "unknown" and not problems:
        problems.append(
            f"no {JOB_STATUS_FILE} or training {METRICS_FILE} yet: the job is still "
            "running, was killed, or is not a training run"
        )
    if problems and not record.error:
        record.error = "; ".join(problems)
    return record


def _natural(text: str) -> List[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def find_jobs(sweep_dir: Path) -> List[Path]:
    """Job dirs under a sweep dir: those holding Hydra's overrides or a job status."""
    found = {path.parent.parent for path in sweep_dir.glob(f"**/{OVERRIDES_FILE}")}
    found |= {path.parent for path in sweep_dir.glob(f"**/{JOB_STATUS_FILE}")}
    jobs = [path for path in found if ".submitit" not in path.parts]
    return sorted(jobs, key=lambda path: _natural(str(path.relative_to(sweep_dir))))


def main_monitor(records: Sequence[JobRecord]) -> Optional[str]:
    """The metric the sweep optimised: the one most of its finished jobs monitored."""
    monitors = Counter(r.monitor for r in records if r.best is not None)
    return monitors.most_common(1)[0][0] if monitors else None


def rank_jobs(records: Sequence[JobRecord]) -> List[JobRecord]:
    """Best first by the main monitored metric, in its direction; then the
    completed jobs without that metric, the interrupted, unknown and failed ones
    (job order within each group)."""
    monitor = main_monitor(records)

    def key(record: JobRecord):
        if record.status == "completed" and record.monitor == monitor:
            if record.best is not None:
                value = -record.best if record.mode == "max" else record.best
                return (0, value)
        return (_GROUP.get(record.status, 3), 0.0)

    ranked = sorted(records, key=key)  # stable: job order breaks ties
    for position, record in enumerate(ranked, start=1):
        record.rank = position if key(record)[0] == 0 else None
    return ranked


def _pairs(record: JobRecord) -> Dict[str, str]:
    """A job's overrides as {key: value} (`+key=value` keeps its `+`)."""
    return dict(item.partition("=")[::2] for item in record.overrides)


def swept_keys(records: Sequence[JobRecord]) -> List[str]:
    """Override keys whose value differs between jobs (or is not set in all)."""
    parsed = [_pairs(record) for record in records]
    keys = dict.fromkeys(key for pairs in parsed for key in pairs)
    return [key for key in keys if len({pairs.get(key) for pairs in parsed}) > 1]


def _metric_names(records: Sequence[JobRecord], split: str) -> List[str]:
    names: Dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(getattr(record, split)))
    return list(names)


def _rows(records: Sequence[JobRecord], keys: List[str]) -> List[Dict[str, Any]]:
    val_names, test_names = _metric_names(records, "val"), _metric_names(
        records, "test"
    )
    rows = []
    for record in records:
        pairs = _pairs(record)
        row: Dict[str, Any] = {"rank": record.rank, "job": record.job}
        row["status"] = record.status
        row.update({key: pairs.get(key) for key in keys})
        row.update(
            {
                "monitor": record.monitor,
                "mode": record.mode,
                "best": record.best,
                "best_epoch": record.best_epoch,
                "epochs": record.epochs,
            }
        )
        row.update({f"val_{name}": record.val.get(name) for name in val_names})
        row.update({f"test_{name}": record.test.get(name) for name in test_names})
        row["train_seconds"] = record.train_seconds
        row["wall_seconds"] = record.wall_seconds
        row["overrides"] = " ".join(record.overrides)
        row["error"] = record.error
        rows.append(row)
    return rows


def _csv(rows: List[Dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def _cell(value: Any, short_numbers: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    text = " ".join(str(value).split())
    if short_numbers and len(text) > 8 and re.fullmatch(r"[-+.\deE]+", text):
        try:
            text = f"{float(text):.4g}"  # a sampled 0.0012520653814999472
        except ValueError:
            pass
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return text.replace("|", "\\|")


def _markdown(sweep_dir: Path, records, rows, keys: List[str]) -> str:
    monitor = main_monitor(records)
    counts = Counter(record.status for record in records)
    told = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    lines = ["# Sweep leaderboard", "", f"`{sweep_dir}`: {len(records)} jobs ({told})."]
    if monitor:
        mode = next(r.mode for r in records if r.monitor == monitor)
        lines.append(f"Sorted by {monitor} ({mode}), best first; failed jobs last.")
    common = [
        item
        for item in records[0].overrides
        if item.partition("=")[0] not in keys
        and all(item in record.overrides for record in records)
    ]
    if common:
        lines.append("Common overrides: `" + " ".join(common) + "`.")
    columns = [c for c in rows[0] if c not in ("overrides", "monitor", "mode")]
    headers = [
        f"`{c}`" if c in keys else f"best {monitor}" if c == "best" and monitor else c
        for c in columns
    ]
    lines += ["", "| " + " | ".join(headers) + " |"]
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        cells = [_cell(row[c], short_numbers=c in keys) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(sweep_dir: str | Path, announce: bool = True) -> List[JobRecord]:
    """Write summary.csv and summary.md for the jobs under `sweep_dir`; returns the
    ranked records (empty, and nothing written, when no job is found). `announce`
    logs where it is and the best job."""
    sweep_dir = Path(sweep_dir)
    records = rank_jobs([read_job(path, sweep_dir) for path in find_jobs(sweep_dir)])
    if not records:
        log.warning("no sweep jobs found in %s: no leaderboard written", sweep_dir)
        return records
    keys = swept_keys(records)
    rows = _rows(records, keys)
    atomic_write_text(sweep_dir / SUMMARY_CSV, _csv(rows))
    atomic_write_text(sweep_dir / SUMMARY_MD, _markdown(sweep_dir, records, rows, keys))
    if not announce:
        return records
    failed = [record.job for record in records if record.status != "completed"]
    log.info(
        "sweep leaderboard of %d jobs: %s%s",
        len(records),
        sweep_dir / SUMMARY_MD,
        f" ({len(failed)} did not complete: job {', '.join(failed)})" if failed else "",
    )
    best = records[0]
    if best.rank == 1:
        pairs = _pairs(best)
        log.info(
            "best: job %s, %s %.4f with %s",
            best.job,
            best.monitor,
            best.best,
            " ".join(f"{key}={pairs[key]}" for key in keys if key in pairs) or "-",
        )
    return records


class Leaderboard(Callback):
    """Hydra callback: the leaderboard of a multirun, whatever sweeper or launcher.

    Rewritten after every job (so a long sweep shows its progress, and a sweep
    that stops early keeps what it had) and once more at the end, when it is
    announced in the log. `job_names`: the entry points whose sweeps get one
    (Hydra's job name is the script's name); empty or null for all.
    """

    def __init__(self, job_names: Optional[Sequence[str]] = ("train",)) -> None:
        self.job_names = list(job_names) if job_names else []

    def _update(self, config: DictConfig, announce: bool) -> None:
        try:
            if self.job_names and config.hydra.job.name not in self.job_names:
                return
            write_leaderboard(config.hydra.sweep.dir, announce=announce)
        except Exception as exc:  # never fail a sweep over its summary
            log.warning("could not write the sweep leaderboard: %s", exc, exc_info=True)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            self._update(config, announce=False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._update(config, announce=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelsphere.sweeps",
        description="Write summary.csv and summary.md for a sweep dir.",
    )
    parser.add_argument("sweep_dir", type=Path, help="e.g. outputs/multirun/<sweep>")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    if not args.sweep_dir.is_dir():
        log.error("error: %s is not a directory", args.sweep_dir)
        return 2
    return 0 if write_leaderboard(args.sweep_dir) else 1


if __name__ == "__main__":
    raise SystemExit(main())
