"""Crash-safe training: SIGKILL, SIGTERM, NaN loss, full disk, foreign checkpoints,
concurrent runs. Each guarantee of the fault-tolerance issue has a test here."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO, compose_config, csv_overrides, make_table
from helpers.interrupts import StopAfter
from modelsphere.core import fileio
from modelsphere.core.errors import ModelSphereError
from modelsphere.core.runs import METRICS_FILE
from modelsphere.training import epochs
from modelsphere.training import run as training
from modelsphere.training.checkpoint import CHECKPOINT_FILE, load_checkpoint
from modelsphere.training.interrupts import TrainingInterrupted
from modelsphere.training.run import run_training

TIMING = ("seconds", "rows_per_second")
# Enough batches per epoch that a signal usually lands mid-epoch.
LONG_RUN = [
    "train.max_epochs=12",
    "train.batch_size=8",
    "train.early_stopping_patience=null",
    "train.plot=false",
    "train.scheduler=cosine",
]
WAIT_SECONDS = 120


@pytest.fixture
def table(tmp_path) -> Path:
    path = tmp_path / "table.csv"
    make_table(rows=320).to_csv(path, index=False)
    return path


def overrides(table: Path, base: Path, *extra: str):
    return csv_overrides(table, base) + LONG_RUN + list(extra)


def reference_run(table: Path, base: Path, *extra: str) -> Path:
    run_dir = base / "outputs" / "train" / "reference"
    run_training(compose_config(overrides(table, base, *extra)), run_dir)
    return run_dir


def resume(table: Path, base: Path, run_dir: Path, *extra: str) -> None:
    cfg = compose_config(overrides(table, base, f"train.resume={run_dir}", *extra))
    run_training(cfg, base / "unused")


def history(run_dir: Path):
    rows = json.loads((run_dir / "metrics.json").read_text())["history"]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def assert_identical_runs(a: Path, b: Path) -> None:
    left, right = load_file(str(a / "model.safetensors")), load_file(
        str(b / "model.safetensors")
    )
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name
    assert history(a) == history(b)
    final = [json.loads((d / "metrics.json").read_text())["final"] for d in (a, b)]
    assert final[0] == final[1]


def train_command(table: Path, base: Path, run_dir: Path):
    return [sys.executable, str(REPO / "train.py"), *overrides(table, base)] + [
        f"hydra.run.dir={run_dir}"
    ]


def start_training(
    table: Path, base: Path, run_dir: Path, **env: str
) -> subprocess.Popen:
    return subprocess.Popen(
        train_command(table, base, run_dir),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
    )


def wait_for_checkpoint(process: subprocess.Popen, run_dir: Path, epochs: int = 1):
    """Until the checkpoint holds at least `epochs` finished epochs."""
    deadline = time.monotonic() + WAIT_SECONDS
    path = run_dir / CHECKPOINT_FILE
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        if path.exists():
            with contextlib.suppress(ModelSphereError):
                if load_checkpoint(run_dir)["epoch"] >= epochs:
                    return
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


# ----------------------------------------------------------------------------
# 1. SIGKILL at any point: a loadable checkpoint, and resume == uninterrupted


def test_sigkill_then_resume_equals_an_uninterrupted_run(table, tmp_path):
    reference = reference_run(table, tmp_path)
    killed = tmp_path / "outputs" / "train" / "killed"
    process = start_training(table, tmp_path, killed)
    wait_for_checkpoint(process, killed, epochs=2)
    time.sleep(0.01)  # land somewhere inside a later epoch
    process.kill()
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    payload = load_checkpoint(killed)  # loadable: written atomically
    assert 2 <= payload["epoch"] < 12
    # A kill inside a write may leave that write's temporary file (never a
    # half-written checkpoint); resuming removes it.
    resume(table, tmp_path, killed)
    assert not [p for p in killed.iterdir() if p.name.endswith(".tmp")]
    assert_identical_runs(reference, killed)


def test_resume_removes_the_temporary_file_of_a_killed_write(table, tmp_path):
    run_dir = tmp_path / "outputs" / "train" / "short"
    run_training(
        compose_config(overrides(table, tmp_path, "train.max_epochs=1")), run_dir
    )
    # Killed before its final summary: a run that has not finished resumes in place.
    (run_dir / METRICS_FILE).unlink()
    stale = run_dir / f".{CHECKPOINT_FILE}.x1y2z3.tmp"
    stale.write_bytes(b"half a checkpoint")
    cfg = compose_config(
        overrides(table, tmp_path, f"train.resume={run_dir}", "train.max_epochs=2")
    )
    run_training(cfg, tmp_path / "unused")
    assert not stale.exists()
    assert load_checkpoint(run_dir)["epoch"] == 2


# ----------------------------------------------------------------------------
# 2. SIGTERM / SIGINT: checkpoint, "interrupted" in metrics, exit 128+n, resume hint


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_marks_interrupted_and_says_how_to_resume(table, tmp_path, signum):
    reference = reference_run(table, tmp_path)
    run_dir = tmp_path / "outputs" / "train" / "stopped"
    process = start_training(table, tmp_path, run_dir)
    wait_for_checkpoint(process, run_dir, epochs=1)
    process.send_signal(signum)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 128 + signum, output
    assert f"Resume with: python train.py train.resume={run_dir}" in output
    assert "Traceback" not in output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    assert metrics["interrupted"]["signal"] == signal.Signals(signum).name
    assert not (run_dir / "model.json").exists()  # no artifact of a partial run
    resume(table, tmp_path, run_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert_identical_runs(reference, run_dir)


def fake_scontrol(base: Path) -> str:
    """A PATH whose `scontrol` records its arguments in base/scontrol.log."""
    bin_dir = base / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {base / "scontrol.log"}\n')
    script.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def test_slurm_preemption_requeues_and_the_requeued_job_resumes_exactly(
    table, tmp_path
):
    """SIGUSR1 (sbatch --signal=USR1@<s>) inside a SLURM job: a checkpoint of
    the epoch in progress, `scontrol requeue <job>`, and the requeued job,
    given the very same command, ends bitwise-identical to an uninterrupted run."""
    reference = reference_run(table, tmp_path)
    run_dir = tmp_path / "outputs" / "train" / "preempted"
    slurm = {"SLURM_JOB_ID": "99", "PATH": fake_scontrol(tmp_path)}
    process = start_training(table, tmp_path, run_dir, **slurm)
    wait_for_checkpoint(process, run_dir, epochs=1)
    process.send_signal(signal.SIGUSR1)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 128 + signal.SIGUSR1, output
    assert "SLURM job 99 requeued" in output and "Traceback" not in output
    assert (tmp_path / "scontrol.log").read_text() == "requeue 99\n"
    requeued = subprocess.run(
        train_command(table, tmp_path, run_dir),
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, SLURM_RESTART_COUNT="1", **slurm),
        timeout=WAIT_SECONDS,
    )
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    said = requeued.stdout + requeued.stderr  # a fresh start would end the same
    assert f"SLURM job 99 was requeued (restart 1): resuming {run_dir}" in said
    assert f"resuming {run_dir} from its last checkpoint" in said
    assert_identical_runs(reference, run_dir)
    # Outside a requeued job the same command starts a new run.
    assert not (tmp_path / "outputs" / ".requeue" / "slurm-99.json").exists()


def test_sigusr1_outside_slurm_saves_and_stops_like_sigterm(table, tmp_path):
    run_dir = tmp_path / "outputs" / "train" / "usr1"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    process = subprocess.Popen(
        train_command(table, tmp_path, run_dir),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(env, PYTHONUNBUFFERED="1"),
    )
    wait_for_checkpoint(process, run_dir, epochs=1)
    process.send_signal(signal.SIGUSR1)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 128 + signal.SIGUSR1, output
    assert f"Resume with: python train.py train.resume={run_dir}" in output
    assert "requeue" not in output


def test_a_handler_installed_before_training_does_the_requeue(
    table, tmp_path, monkeypatch
):
    """Under submitit (hydra/launcher=slurm*), its own USR2 handler requeues
    its job: training saves first, records the run dir, then hands over."""
    calls = []

    def submitit_like(signum, frame):
        calls.append(signum)
        raise SystemExit(-1)  # submitit exits once the job is requeued

    @contextlib.contextmanager
    def preempted_after_two_checks():
        request = StopAfter(2, signal.SIGUSR2)
        request.previous = {signal.SIGUSR2: submitit_like}
        yield request

    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setattr(training, "stop_requests", preempted_after_two_checks)
    run_dir = tmp_path / "outputs" / "train" / "submitit"
    with pytest.raises(SystemExit):
        run_training(compose_config(overrides(table, tmp_path)), run_dir)
    assert calls == [signal.SIGUSR2]
    assert load_checkpoint(run_dir)["partial"]["next_step"] == 2
    marker = tmp_path / "outputs" / ".requeue" / "slurm-7.json"
    assert json.loads(marker.read_text())["run_dir"] == str(run_dir.resolve())


# regression: the default's members, here with online bagging, which draws
# from the run's generator at every batch
@pytest.mark.parametrize(
    "task, extra",
    [("binary", ()), ("regression", ("model.member_sampling=online_bagging",))],
)
def test_mid_epoch_interrupt_resumes_at_the_next_batch(
    table, tmp_path, monkeypatch, task, extra
):
    """Deterministic: stop in epoch 3 at batch 8, resume, compare bitwise."""
    make_table(rows=320, task=task).to_csv(table, index=False)
    reference = reference_run(table, tmp_path, *extra)
    run_dir = tmp_path / "outputs" / "train" / "mid"
    steps_per_epoch = -(-224 // 8)  # 320 rows -> 224 train rows, batch 8
    calls = 2 * (steps_per_epoch + 1) + 7  # one check per batch + one per epoch end

    @contextlib.contextmanager
    def fake_stop_requests():
        yield StopAfter(calls)

    monkeypatch.setattr(training, "stop_requests", fake_stop_requests)
    with pytest.raises(TrainingInterrupted, match="epoch 3, batch 8") as raised:
        run_training(compose_config(overrides(table, tmp_path, *extra)), run_dir)
    assert raised.value.exit_code == 128 + signal.SIGTERM
    payload = load_checkpoint(run_dir)
    assert payload["epoch"] == 2
    assert payload["partial"]["epoch"] == 3 and payload["partial"]["next_step"] == 7
    monkeypatch.undo()
    resume(table, tmp_path, run_dir, *extra)
    assert_identical_runs(reference, run_dir)


# ----------------------------------------------------------------------------
# 3. Non-finite loss: a message naming epoch and batch; the last good checkpoint


def test_nan_loss_names_epoch_and_batch_and_keeps_the_good_checkpoint(
    table, tmp_path, monkeypatch
):
    real_loss = epochs.batch_loss
    calls = {"n": 0}
    steps_per_epoch = 28

    def poisoned(loss_fn, outputs, target):
        calls["n"] += 1
        loss = real_loss(loss_fn, outputs, target)
        # epoch 1: 28 batches + 1 val-loss call; then epoch 2, batch 5
        if calls["n"] == steps_per_epoch + 1 + 5:
            return loss * float("nan")
        return loss

    monkeypatch.setattr(epochs, "batch_loss", poisoned)
    run_dir = tmp_path / "outputs" / "train" / "nan"
    with pytest.raises(ModelSphereError, match=r"NaN/inf in epoch 2, batch 5"):
        run_training(compose_config(overrides(table, tmp_path)), run_dir)
    payload = load_checkpoint(run_dir)
    assert payload["epoch"] == 1 and payload["best_epoch"] == 1
    assert all(torch.isfinite(v).all() for v in payload["best_state"].values())
    assert not (run_dir / "model.json").exists()


# ----------------------------------------------------------------------------
# 4. Foreign checkpoints are refused without executing anything


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_in_a_checkpoint_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / CHECKPOINT_FILE, "wb") as handle:
        pickle.dump({"version": 1, "payload": Exploit(marker)}, handle)
    with pytest.raises(ModelSphereError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


def test_truncated_checkpoint_is_refused(table, tmp_path):
    run_dir = tmp_path / "outputs" / "train" / "short"
    cfg = compose_config(overrides(table, tmp_path, "train.max_epochs=1"))
    run_training(cfg, run_dir)
    path = run_dir / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelSphereError, match=str(path)):
        load_checkpoint(run_dir)


# ----------------------------------------------------------------------------
# 5. A full disk: a clear error, the previous checkpoint intact


def test_disk_full_keeps_the_previous_checkpoint(table, tmp_path, monkeypatch):
    run_dir = tmp_path / "outputs" / "train" / "full"
    real_replace = os.replace
    writes = {"n": 0}

    def replace(src, dst):
        if Path(dst).name == CHECKPOINT_FILE:
            writes["n"] += 1
            if writes["n"] == 3:  # the third epoch's checkpoint
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(ModelSphereError, match="no space left on device while writing"):
        run_training(compose_config(overrides(table, tmp_path)), run_dir)
    monkeypatch.undo()
    assert load_checkpoint(run_dir)["epoch"] == 2
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------
# 6. Two runs started in the same second: distinct dirs; latest is complete


def test_concurrent_runs_get_distinct_dirs_and_latest_is_complete(table, tmp_path):
    cmd = (
        [sys.executable, str(REPO / "train.py")]
        + csv_overrides(table, tmp_path)
        + [
            "train.max_epochs=2",
            "train.plot=false",
        ]
    )
    first = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    second = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    outputs = [process.communicate(timeout=180)[0] for process in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    runs = sorted((tmp_path / "outputs" / "train").iterdir())
    assert len(runs) == 2
    assert all((run / "model.json").is_file() for run in runs)
    latest = (tmp_path / "outputs" / "latest").resolve()
    assert latest in [run.resolve() for run in runs]
    assert (latest / "model.json").is_file()
