"""Running a benchmark step as its own process, as a user runs it (wall seconds and
peak RSS from GNU time, or getrusage without it), and the app config of the
synthetic table the benchmarks compose."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from benchmarks.common import REPO

GNU_TIME = "/usr/bin/time"
RUSAGE_WRAPPER = (
    "import resource, subprocess, sys; "
    "code = subprocess.call(sys.argv[1:]); "
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
    "sys.stderr.write(f'Maximum resident set size (kbytes): {peak}\\n'); "
    "sys.exit(code)"
)


def raw_csv_command(overrides: List[str]) -> List[str]:
    """A fresh process that writes the raw CSV of the data config these overrides
    compose (the package's own sources) and prints its path."""
    code = (
        "import sys; from hydra import compose, initialize_config_dir; "
        "import modelsphere.training.config; "
        "from modelsphere.data.sources import materialise_raw_csv; "
        "initialize_config_dir(config_dir=sys.argv[1], version_base='1.3'); "
        "print(materialise_raw_csv(compose('config', overrides=sys.argv[2:]).data))"
    )
    return [sys.executable, "-c", code, str(REPO / "conf"), *overrides]


def predict_command(
    run_dir: Path, source: Path, output: Path, outputs_dir: Path, *options: str
) -> List[str]:
    """`python predict.py` on the CPU as a user runs it, run dirs under outputs_dir."""
    return [
        sys.executable,
        "predict.py",
        f"run_dir={run_dir}",
        f"input={source}",
        f"output={output}",
        "device=cpu",
        f"paths.outputs_dir={outputs_dir}",
        *options,
    ]


def compose_config(rows: int, work: Path, fmt: str = "parquet"):
    """The composed app config for `rows` rows of the synthetic table under `work`."""
    from hydra import compose, initialize_config_dir

    import modelsphere.training.config  # noqa: F401  (registers the config schema)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=data_overrides(rows, work, fmt))


def data_overrides(rows: int, work: Path, fmt: str) -> List[str]:
    return [
        "data=synthetic",
        f"data.synthetic.rows={rows}",
        f"data.format={fmt}",
        f"paths.data_dir={work / 'data'}",
        f"paths.outputs_dir={work / 'outputs'}",
    ]


def measured(command: List[str]) -> Dict[str, Any]:
    """Run `command` in the repo root: wall seconds, peak RSS and its output."""
    if Path(GNU_TIME).is_file():
        wrapped = [GNU_TIME, "-v", *command]
    else:
        wrapped = [sys.executable, "-c", RUSAGE_WRAPPER, *command]
    started = time.perf_counter()
    result = subprocess.run(wrapped, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}):\n"
            f"{(result.stdout + result.stderr)[-3000:]}"
        )
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    return {
        "process_seconds": seconds,
        "peak_rss_mib": int(peak.group(1)) / 1024,
        "stdout": result.stdout,
        "stderr": result.stderr,
    }
