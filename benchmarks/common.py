"""What every benchmark shares: where results go, the machine it ran on, and the
writer of its JSON + Markdown result pair. Package versions come from the
package's own provenance (`modelsphere.core.provenance.package_versions`)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List

from modelsphere.core.fileio import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parents[1]


def add_output_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """`--out` (the results folder) and `--name` (the result files' stem)."""
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default=name)


def machine() -> Dict[str, Any]:
    """The machine a benchmark ran on, with its load when the figures were taken
    (other work on these shared CPUs slows every timing)."""
    return {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gib": round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        ),
        "python": platform.python_version(),
        "load_average_1m": os.getloadavg()[0],
    }


def run_record(benchmark: str, load_start: float, label: str) -> Dict[str, Any]:
    """The fields every result file opens with: which benchmark, when, on which
    machine under which load, and which code and package versions it measured."""
    return {
        "benchmark": benchmark,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_1m": {"start": load_start, "end": os.getloadavg()[0]},
        "label": label,
        **code_and_versions(),
    }


def code_and_versions() -> Dict[str, Any]:
    """Package versions and the modelsphere code the steps ran (in a subprocess,
    as the steps import it: PYTHONPATH can point them at another checkout)."""
    code = (
        "import json, modelsphere; from pathlib import Path; "
        "from modelsphere.core.provenance import git_state, package_versions; "
        "where = Path(modelsphere.__file__).parent; "
        "print(json.dumps({'versions': package_versions(), "
        "'code': {'package': str(where), **git_state(where)}}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def record_header(payload: Dict[str, Any]) -> List[str]:
    """The Markdown lines under a result's title: when, on which machine under
    which load, and which code (from `run_record`'s fields)."""
    machine, load, code = (
        payload["machine"],
        payload["load_average_1m"],
        payload["code"],
    )
    return [
        f"{payload['date']}, {machine['processor']}, {machine['cpu_count']} CPUs, "
        f"{machine['memory_gib']} GiB, Python {machine['python']}, torch "
        f"{payload['versions']['torch']}; 1-minute load average "
        f"{load['start']:.1f} at the start, {load['end']:.1f} at the end.",
        "",
        f"Code: {payload['label'] or code['package']} (commit "
        f"{(code.get('commit') or 'unknown')[:10]}"
        f"{', with uncommitted changes' if code.get('dirty') else ''}).",
        "",
    ]


def synthetic_numeric_table(rows: int, numeric: int, work: Path) -> List[str]:
    """A synthetic table of `rows` x `numeric` numeric columns (binary target,
    nothing missing), its data under `work`."""
    return [
        "data=synthetic",
        f"data.synthetic.rows={rows}",
        f"data.synthetic.n_numeric={numeric}",
        "data.synthetic.n_categorical=0",
        "data.synthetic.missing_fraction=0",
        f"paths.data_dir={work / 'data'}",
    ]


def synthetic_numeric_overrides(args, work: Path) -> List[str]:
    """The synthetic numeric table of `args.rows` x `args.numeric` in Parquet row
    groups of `args.row_group_rows`, trained on the CPU."""
    return synthetic_numeric_table(args.rows, args.numeric, work) + [
        f"data.write_row_group_rows={args.row_group_rows}",
        "device=cpu",
    ]


def round_order(items: List[Any], round_index: int) -> List[Any]:
    """`items` in the order round `round_index` runs them: each round starts one
    item further on, so none always runs first (when the machine is freshest)
    while a slower spell of these shared CPUs reaches each alike."""
    start = round_index % len(items)
    return items[start:] + items[:start]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_results(
    out: Path, name: str, payload: Dict[str, Any], render: Callable[[Dict], str]
) -> None:
    """`out/name.json` and `out/name.md`, each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(out / f"{name}.md", render(payload))
