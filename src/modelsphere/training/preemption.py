"""SLURM pre-emption: save, requeue, and resume by itself.

A SLURM job asked to leave before its time limit (`sbatch --signal=USR1@120`,
or submitit's USR2, sent before the job is pre-empted or runs out of time)
gets the signal in every task. Training stops after the current batch as on
SIGTERM (training/interrupts.py), saves a checkpoint holding the epoch in
progress, and then rank 0:

1. writes `<outputs>/.requeue/slurm-<job id>.json`, naming the run dir;
2. requeues the job: through the handler that was installed before training
   (submitit's, which requeues its own job), or with `scontrol requeue <job id>`.

The requeued job runs the same command again. SLURM sets SLURM_RESTART_COUNT
in it; finding that and the job's file, training resumes the run dir named
there (`train.resume`), continuing exactly where the signal stopped it. The file
is removed once the run completes, so a later job step starts afresh.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Callable, Mapping, Optional

from modelsphere.core.errors import ModelSphereError
from modelsphere.core.fileio import atomic_write_json, read_json

log = logging.getLogger(__name__)

# SLURM's warning before pre-emption or the time limit: USR1 as sbatch users
# usually ask for it, USR2 as submitit (hydra/launcher=slurm*) asks for it.
PREEMPTION_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
REQUEUE_DIR = ".requeue"
SCONTROL = "scontrol"
SCONTROL_TIMEOUT_S = 60


def is_preemption(signum: Optional[int]) -> bool:
    return signum in PREEMPTION_SIGNALS


def slurm_job_id(environ: Mapping[str, str] = os.environ) -> Optional[str]:
    return environ.get("SLURM_JOB_ID") or None


def marker_path(outputs_dir: str | Path, job_id: str) -> Path:
    return Path(outputs_dir) / REQUEUE_DIR / f"slurm-{job_id}.json"


def requeued_run(
    outputs_dir: str | Path, environ: Mapping[str, str] = os.environ
) -> Optional[Path]:
    """The run dir a requeued SLURM job continues, or None for a fresh start."""
    job_id = slurm_job_id(environ)
    if job_id is None or int(environ.get("SLURM_RESTART_COUNT", "0") or 0) < 1:
        return None
    path = marker_path(outputs_dir, job_id)
    if not path.is_file():
        return None
    record = read_json(path, "SLURM requeue record")
    run_dir = Path(str(record.get("run_dir", ""))) if isinstance(record, dict) else None
    if run_dir is None or not run_dir.is_dir():
        raise ModelSphereError(
            f"{path} names the run dir {run_dir}, which does not exist: the "
            "requeued job cannot resume it; delete the file to start afresh"
        )
    log.info(
        "SLURM job %s was requeued (restart %s): resuming %s",
        job_id,
        environ.get("SLURM_RESTART_COUNT"),
        run_dir,
    )
    return run_dir


def record_requeue(outputs_dir: str | Path, run_dir: Path, job_id: str) -> Path:
    path = marker_path(outputs_dir, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"job_id": job_id, "run_dir": str(run_dir.resolve())})
    return path


def forget_requeue(
    outputs_dir: str | Path, environ: Mapping[str, str] = os.environ
) -> None:
    """The run completed: a later step of this job must not resume it."""
    job_id = slurm_job_id(environ)
    if job_id is not None:
        marker_path(outputs_dir, job_id).unlink(missing_ok=True)


def requeue(job_id: str, signum: int, previous: Callable | None) -> str:
    """Requeue the job and say how it went (one line for the log).

    A Python handler installed before training (submitit's) requeues its own
    job and exits; otherwise `scontrol requeue` does, where it can be found."""
    if callable(previous):
        log.info("handing the requeue of SLURM job %s to the job's own handler", job_id)
        try:
            previous(signum, None)  # submitit: requeues, then exits the process
        except Exception as exc:  # submitit: "Job not requeued because: ..."
            return f"SLURM job {job_id} was not requeued: {exc}"
        return f"SLURM job {job_id} requeued by the job's own handler"
    scontrol = shutil.which(SCONTROL)
    if scontrol is None:
        return f"SLURM job {job_id} was not requeued: {SCONTROL} is not on PATH"
    try:
        done = subprocess.run(
            [scontrol, "requeue", job_id],
            capture_output=True,
            text=True,
            timeout=SCONTROL_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"SLURM job {job_id} was not requeued: {SCONTROL} failed ({exc})"
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        why = reason[0] if reason else f"exit status {done.returncode}"
        return f"SLURM job {job_id} was not requeued: {SCONTROL} said {why}"
    return f"SLURM job {job_id} requeued"
