"""SLURM pre-emption bookkeeping: which run a requeued job resumes, and how
the requeue itself reports back (training/preemption.py)."""

from __future__ import annotations

import os
import signal

import pytest

from modelsphere.core.errors import ModelSphereError
from modelsphere.training.preemption import (
    forget_requeue,
    record_requeue,
    requeue,
    requeued_run,
)

REQUEUED = {"SLURM_JOB_ID": "31", "SLURM_RESTART_COUNT": "1"}


def test_only_a_requeued_job_with_a_record_resumes(tmp_path):
    run_dir = tmp_path / "train" / "run"
    run_dir.mkdir(parents=True)
    assert requeued_run(tmp_path, REQUEUED) is None  # nothing recorded
    record_requeue(tmp_path, run_dir, "31")
    assert requeued_run(tmp_path, REQUEUED) == run_dir.resolve()
    assert requeued_run(tmp_path, {"SLURM_JOB_ID": "31"}) is None  # first start
    assert requeued_run(tmp_path, dict(REQUEUED, SLURM_JOB_ID="32")) is None
    assert requeued_run(tmp_path, {}) is None
    forget_requeue(tmp_path, REQUEUED)
    assert requeued_run(tmp_path, REQUEUED) is None


def test_a_record_naming_a_missing_run_dir_is_refused_by_name(tmp_path):
    run_dir = tmp_path / "gone"
    run_dir.mkdir()
    marker = record_requeue(tmp_path, run_dir, "31")
    run_dir.rmdir()
    with pytest.raises(ModelSphereError, match="does not exist") as raised:
        requeued_run(tmp_path, REQUEUED)
    assert str(marker) in str(raised.value)


def scontrol(tmp_path, monkeypatch, body: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_a_refused_requeue_says_what_scontrol_said(tmp_path, monkeypatch):
    scontrol(
        tmp_path, monkeypatch, 'echo "Requested operation is disabled" >&2; exit 1'
    )
    outcome = requeue("31", signal.SIGUSR1, None)
    assert outcome == (
        "SLURM job 31 was not requeued: scontrol said Requested operation is disabled"
    )


def test_a_requeue_without_scontrol_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert requeue("31", signal.SIGUSR1, None).endswith("scontrol is not on PATH")


def test_a_handler_that_declines_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", os.defpath)

    def declines(signum, frame):
        raise RuntimeError("Job not requeued because: timed-out too many times.")

    outcome = requeue("31", signal.SIGUSR2, declines)
    assert outcome == (
        "SLURM job 31 was not requeued: Job not requeued because: timed-out too "
        "many times."
    )
