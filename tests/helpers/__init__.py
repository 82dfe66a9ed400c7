"""What tests share: tiny tables, in-process config composition, CLI runs (in a
subprocess or in process), and waiting for the API. Imported as `helpers`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import List

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir

import modelsphere.inference.config  # noqa: F401  (registers the config schemas)
import modelsphere.serving.config  # noqa: F401
import modelsphere.training.config  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "conf"


def make_table(rows: int = 240, task: str = "binary", seed: int = 0) -> pd.DataFrame:
    """A small mixed-type table whose target depends on its features."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, rows).astype(float)
    income = np.round(rng.lognormal(10, 0.5, rows), 2)
    plan = rng.choice(["basic", "plus", "premium"], rows, p=[0.5, 0.3, 0.2])
    region = rng.choice(["north", "south", "east", "west"], rows)
    score = (age - 45) / 15 + (plan == "premium") * 1.5 - (region == "south") * 0.8
    score = score + rng.normal(0, 0.5, rows)
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i:05d}" for i in range(rows)],
            "age": age,
            "income": income,
            "plan": plan,
            "region": region,
        }
    )
    frame.loc[rng.random(rows) < 0.05, "income"] = np.nan
    frame.loc[rng.random(rows) < 0.05, "region"] = None
    if task == "binary":
        frame["label"] = np.where(score > 0, "yes", "no")
    elif task == "multiclass":
        frame["label"] = np.digitize(score, [-0.7, 0.7]).astype(int)
    else:
        frame["label"] = np.round(score * 10 + 50, 3)
    return frame


def csv_overrides(path: Path, tmp_path: Path, task: str | None = None) -> List[str]:
    """Overrides that point data=csv at `path` and keep every output in tmp_path."""
    overrides = [
        "data=csv",
        f"data.path={path}",
        "data.target=label",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.outputs_dir={tmp_path / 'outputs'}",
        "device=cpu",
        "model=mlp_small",
    ]
    if task:
        overrides.append(f"data.task={task}")
    return overrides


def compose_config(overrides: List[str], config_name: str = "config"):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def run_cli(script: str, *overrides: str, cwd: Path = REPO, timeout: int = 300):
    """Run an entry point as a user would; returns the CompletedProcess."""
    env = dict(os.environ, HYDRA_FULL_ERROR="0", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, str(REPO / script), *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------------------
# End-to-end helpers (tests/pipeline/test_e2e_*.py)


def train_tiny(
    base: Path, *overrides: str, task: str = "binary", run_name: str = "run"
) -> Path:
    """Train mlp_small in-process (2 epochs) on a make_table(task) CSV under `base`.

    Data and outputs stay under `base`; returns the run dir
    `<base>/outputs/train/<run_name>`. Later `overrides` win over the defaults.
    """
    from modelsphere.training.run import run_training

    csv = base / f"tiny_{task}.csv"
    if not csv.exists():
        make_table(task=task).to_csv(csv, index=False)
    cfg = compose_config(
        csv_overrides(csv, base, task) + ["train.max_epochs=2", *overrides]
    )
    run_dir = base / "outputs" / "train" / run_name
    run_training(cfg, run_dir)
    return run_dir


# ---------------------------------------------------------------------------
# In-process CLI runs (tests/pipeline/test_bad_input_matrix.py)


def run_cli_in_process(capfd, script: str, *overrides: str):
    """Run an entry point's Hydra main in this process, as `run_cli` runs it in a
    subprocess: `sys.argv` patched, the script executed as `__main__`, its exit
    status taken from `SystemExit` (0 on a normal return), its output read with
    `capfd`. Returns a CompletedProcess like `run_cli`.

    Hydra keeps global state between runs: the GlobalHydra singleton (cleared
    before and after, so `compose_config` works again) and the logging set-up it
    installs on each run (its handlers are closed and removed afterwards and the
    root logger's handlers and level restored, so nothing leaks into the next
    run). torch's thread count is restored as well.
    """
    import logging
    import runpy
    from unittest import mock

    import torch
    from hydra.core.global_hydra import GlobalHydra

    path = str(REPO / script)
    argv = [path, *overrides]
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_threads = torch.get_num_threads()
    capfd.readouterr()  # drop whatever was printed before this run
    GlobalHydra.instance().clear()
    returncode = 0
    try:
        with (
            mock.patch.object(sys, "argv", argv),
            mock.patch.dict(os.environ, {"HYDRA_FULL_ERROR": "0"}),
        ):
            runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        returncode = code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers[:]:
            if handler not in saved_handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in saved_handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(saved_level)
        torch.set_num_threads(saved_threads)
    captured = capfd.readouterr()
    return subprocess.CompletedProcess(argv, returncode, captured.out, captured.err)


# ----------------------------------------------------------------------------
# Waiting for the API to load its model

READY_TIMEOUT_SECONDS = 60


def wait_client_ready(client) -> None:
    """Poll an in-process TestClient until /v2/health/ready answers 200."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while client.get("/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline, client.get("/v2/health/ready").json()
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve_py(run_dir: Path, port: int, *overrides: str) -> subprocess.Popen:
    """serve.py for `run_dir` on 127.0.0.1:`port`, its output on one pipe."""
    return subprocess.Popen(
        [
            sys.executable,
            str(REPO / "serve.py"),
            f"run_dir={run_dir}",
            f"serve.port={port}",
            f"paths.outputs_dir={Path(run_dir).parents[1]}",
            *overrides,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def wait_server_ready(process: subprocess.Popen, base: str) -> None:
    """Poll a serve.py subprocess until /v2/health/ready answers 200; fail with
    its output if it exits first."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        try:
            with urllib.request.urlopen(f"{base}/v2/health/ready") as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "serve.py did not become ready"
        time.sleep(0.2)
