"""The training run: data -> features -> model -> epochs -> artifact.

`run_training` reads top to bottom as the story of a run; `_fit` is the epoch
loop (`training/epochs.py` holds one epoch). Training tensors live on the device
and every epoch walks a seeded random permutation in index slices (no per-row
DataLoader); AdamW
with a cosine schedule, gradient clipping, early stopping on a validation metric
with the best weights restored; AMP on CUDA only. A checkpoint is written after
every epoch, and mid-epoch on SIGINT/SIGTERM, so `train.resume` continues exactly;
a SLURM job warned of pre-emption also requeues itself and resumes by itself.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import DictConfig

from modelsphere.core.config import to_plain
from modelsphere.core.redaction import saved_config_yaml
from modelsphere.core.devices import DeviceChoice, configure_threads, select_device
from modelsphere.core.errors import ModelSphereError
from modelsphere.core.extras import optional_feature
from modelsphere.core.fileio import (
    atomic_write_json,
    atomic_write_text,
    remove_stale_temp_files,
)
from modelsphere.core.provenance import provenance
from modelsphere.core.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    CURVE_FILE,
    METRICS_FILE,
    update_latest,
)
from modelsphere.data.preprocessing import prepare_data
from modelsphere.data.splits import ProcessedData
from modelsphere.features.fit import fit_feature_state_from_split
from modelsphere.models.artifact import save_artifact
from modelsphere.training.checkpoint import LoopState, load_checkpoint, save_checkpoint
from modelsphere.training.config import validate_train_app
from modelsphere.training.distributed import (
    DistContext,
    barrier,
    check_replicas_agree,
    gather_counts,
    init_distributed,
    is_peer_failure,
    peer_failure,
    shutdown,
)
from modelsphere.training.epochs import (
    NO_BAD_BATCH,
    EpochProgress,
    evaluate_split,
    fit_smearing,
    run_epoch,
    stop_agreed,
)
from modelsphere.training.loading import load_data
from modelsphere.training.interrupts import (
    StopRequest,
    TrainingInterrupted,
    stop_requests,
)
from modelsphere.training.metrics import is_improvement
from modelsphere.training.preemption import (
    forget_requeue,
    is_preemption,
    record_requeue,
    requeue,
    requeued_run,
    slurm_job_id,
)
from modelsphere.training.resume import command_line_overrides, plan_resume
from modelsphere.training.summary import (
    data_record,
    metrics_summary,
    peak_rss_kib,
    short_metrics,
)
from modelsphere.training.stream_cache import remove_stream_cache
from modelsphere.training.trainer import Trainer, build_trainer
from modelsphere.tracking.loggers import open_loggers
from modelsphere.tracking.run_record import flat_params, logged_files, sweep_tags

log = logging.getLogger(__name__)


def run_preprocessing(cfg: Any, force: bool = True) -> ProcessedData:
    """data_preprocessing.py: validate the config, then (re)build the splits."""
    validate_train_app(cfg)
    return prepare_data(cfg.data, cfg.paths.data_dir, force=force)


def run_training(
    cfg: DictConfig, run_dir: str | Path, overrides: Optional[Sequence[str]] = None
) -> float:
    """Train a model as `cfg` says, write the run dir, return the best val metric.

    With `train.resume`, `overrides` (default: the command line's, under Hydra)
    decide what the resumed run may change (training/resume.py)."""
    run_dir = Path(run_dir)
    requeued = None if cfg.train.resume else requeued_run(cfg.paths.outputs_dir)
    if requeued is not None:  # a pre-empted SLURM job, run again
        cfg = copy.deepcopy(cfg)
        cfg.train.resume = str(requeued)
    resume = load_checkpoint(cfg.train.resume) if cfg.train.resume else None
    if resume is not None:
        if overrides is None:
            overrides = command_line_overrides()
        plan = plan_resume(
            cfg, Path(cfg.train.resume), run_dir, int(resume["epoch"]), overrides
        )
        cfg, run_dir = plan.cfg, plan.run_dir
    validate_train_app(cfg)
    device, context = _setup(cfg)
    try:
        return _train(cfg, run_dir, resume, device, context)
    except RuntimeError as exc:
        if not is_peer_failure(exc, context):
            raise
        raise peer_failure(
            exc, context, cfg.train.ddp_timeout_s, _resume_hint(run_dir, context)
        ) from None
    finally:
        shutdown(context)


def _resume_hint(run_dir: Path, context: DistContext) -> str:
    if not context.is_main:
        return "rank 0 keeps the run's checkpoints"
    if not (run_dir / CHECKPOINT_FILE).is_file():
        return "no epoch had finished, so no checkpoint was written"
    return (
        f"the last checkpoint written is kept in {run_dir}; resume with: "
        f"python train.py train.resume={run_dir}"
    )


def _train(cfg, run_dir: Path, resume, device: DeviceChoice, context) -> float:
    main = context.is_main  # only rank 0 writes (a single process is rank 0)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            for stale in remove_stale_temp_files(run_dir):
                log.info("resume: removed %s, left by a write that was killed", stale)
        atomic_write_text(run_dir / CONFIG_FILE, saved_config_yaml(cfg))
    with open_loggers(
        cfg.logger,
        run_dir,
        cfg.paths.outputs_dir,
        flat_params(to_plain(cfg)),
        sweep_tags(),
        active=main,
        ended=_how_it_ended,
    ) as loggers:
        return _train_and_report(cfg, run_dir, resume, device, context, loggers)


def _how_it_ended(error: BaseException) -> str:
    """A run stopped by a signal (resumable) or Ctrl-C is interrupted; one
    stopped by an error failed."""
    stopped = isinstance(error, TrainingInterrupted) or not isinstance(error, Exception)
    return "interrupted" if stopped else "failed"


def _train_and_report(cfg, run_dir, resume, device, context, loggers) -> float:
    main = context.is_main
    data = prepare_data(cfg.data, cfg.paths.data_dir)
    # Both passes stream the split files a row group at a time: the only
    # full-size copies in memory are the model-ready tensors (under DDP with
    # train.ddp_data=shards, this process's shard of them), and none at all when
    # the training split is streamed (training/streaming.py).
    feature_state = fit_feature_state_from_split(data, cfg.model.features, cfg.seed)
    loaded = load_data(cfg, run_dir, data, feature_state, device, context)
    tensors, streamed = loaded.splits, loaded.streamed
    trainer = build_trainer(
        cfg, feature_state, data.schema.task, loaded.train, device, context
    )
    del loaded
    loop = LoopState.fresh(cfg.seed)
    if resume is not None:
        loop = LoopState.restore(
            resume, trainer.model, trainer.optimizer, trainer.scheduler, trainer.scaler
        )
        if loop.partial is not None:
            loop.partial.resume_on(trainer.plan)

    started = time.perf_counter()
    with stop_requests() as stop:
        _fit(cfg, run_dir, trainer, tensors, feature_state, loop, stop, loggers)
    check_replicas_agree(trainer.model, context)
    where = device.device
    rows_held = gather_counts(trainer.plan.rows_held(), context, where)
    peak_kib = gather_counts(peak_rss_kib(), context, where)

    model = trainer.model
    if loop.best_state is not None:
        model.load_state_dict(loop.best_state)
    if data.schema.task == "regression":
        feature_state["target"] = fit_smearing(
            model,
            tensors["val"],
            feature_state,
            device,
            cfg.train.eval_batch_size,
            trainer.shards,
        )
    final = {
        split: evaluate_split(
            model,
            tensors[split],
            feature_state,
            data.schema.task,
            device,
            cfg.train.eval_batch_size,
            trainer.loss_fn,
            trainer.shards,
        )
        for split in ("val", "test")
    }
    barrier(context)  # every process is done reading its stream cache
    remove_stream_cache(run_dir)
    if main:
        summary = metrics_summary(
            loop,
            final,
            trainer.monitor,
            trainer.mode,
            time.perf_counter() - started,
            trainer.batch_size,
            device,
        )
        summary["training"]["processes"] = context.world_size
        summary["training"]["ddp_data"] = (
            cfg.train.ddp_data if context.enabled else "single process"
        )
        summary["training"]["rows_held_per_process"] = rows_held
        summary["training"]["loading"] = "stream" if streamed else "memory"
        summary["training"]["peak_rss_mib_per_process"] = [
            round(kib / 1024, 1) for kib in peak_kib
        ]
        atomic_write_json(run_dir / METRICS_FILE, summary)
        extra = {
            "metrics": summary["final"],
            "training": summary["training"],
            "data": data_record(data),
            "provenance": provenance(),
        }
        save_artifact(
            run_dir,
            model,
            trainer.spec,
            feature_state,
            data.schema,
            to_plain(cfg),
            extra,
        )
        if cfg.train.plot and loop.history and optional_feature("plots", "plots"):
            from modelsphere.training import plots  # needs the 'plots' extra

            plots.training_curve(
                loop.history, trainer.monitor, loop.best_epoch, run_dir / CURVE_FILE
            )
        loggers.finish(final, logged_files(run_dir), "completed")
        update_latest(cfg.paths.outputs_dir, run_dir)
        forget_requeue(cfg.paths.outputs_dir)
        log.info(
            "best val_%s %.4f at epoch %d; test %s; run dir %s",
            trainer.monitor,
            loop.best_value,
            loop.best_epoch,
            short_metrics(final["test"]),
            run_dir,
        )
    barrier(context)
    return float(loop.best_value)


def _fit(
    cfg, run_dir: Path, trainer: Trainer, tensors, feature_state, loop, stop, loggers
):
    """The epoch loop: train, validate, keep the best weights, checkpoint, log."""
    train, val_split = tensors["train"], tensors["val"]
    monitor = trainer.monitor
    for epoch in range(loop.epoch + 1, cfg.train.max_epochs + 1):
        if loop.stopped_early:
            break
        progress = loop.partial or EpochProgress.start(
            epoch, trainer.plan, loop.generator, trainer.device.device
        )
        loop.partial = None
        epoch_start = time.perf_counter()
        finished = run_epoch(
            trainer.train_model,
            train,
            trainer.plan,
            trainer.optimizer,
            trainer.scheduler,
            trainer.loss_fn,
            trainer.device,
            cfg.train.grad_clip_norm,
            trainer.scaler,
            progress,
            stop,
        )
        if not finished:
            loop.partial = progress
            _interrupt(cfg, run_dir, trainer, loop, stop, progress)
        seconds = time.perf_counter() - epoch_start
        if progress.bad_batch() != NO_BAD_BATCH:
            _stop_on_nonfinite(run_dir, epoch, progress.bad_batch(), loop.epoch)
        val = evaluate_split(
            trainer.model,
            val_split,
            feature_state,
            trainer.task,
            trainer.device,
            cfg.train.eval_batch_size,
            trainer.loss_fn,
            trainer.shards,
        )
        if math.isnan(val[monitor]):
            raise ModelSphereError(
                f"val_{monitor} is undefined in epoch {epoch} (NaN): the validation "
                f"split ({val['rows']} rows) may hold a single class; use a "
                "larger data.split.val_fraction or train.monitor=loss"
            )
        loop.record(
            epoch,
            progress.mean_loss(),
            val,
            trainer.optimizer,
            seconds,
            gather_counts(progress.rows, trainer.context, trainer.device.device),
        )
        improved = is_improvement(
            val[monitor], loop.best_value, trainer.mode, cfg.train.min_delta
        )
        if improved:
            loop.best_value, loop.best_epoch, loop.bad_epochs = val[monitor], epoch, 0
            loop.best_state = {
                k: v.detach().cpu().clone()
                for k, v in trainer.model.state_dict().items()
            }
        else:
            loop.bad_epochs += 1
        patience = cfg.train.early_stopping_patience
        loop.stopped_early = patience is not None and loop.bad_epochs >= patience
        loop.epoch = epoch
        _save(run_dir, trainer, loop)
        loggers.epoch(loop.history)
        log.info(
            "epoch %d/%d  loss %.4f  val_loss %.4f  val_%s %.4f%s  lr %.2e  "
            "%.0f rows/s",
            epoch,
            cfg.train.max_epochs,
            progress.mean_loss(),
            val["loss"],
            monitor,
            val[monitor],
            " *" if improved else "",
            loop.history[-1]["lr"],
            loop.history[-1]["rows_per_second"],
        )
        stopping = stop_agreed(stop, trainer.context, trainer.device.device)
        if stopping and epoch < cfg.train.max_epochs and not loop.stopped_early:
            _interrupt(cfg, run_dir, trainer, loop, stop, None)
    if loop.stopped_early:
        log.info(
            "early stopping: no val_%s improvement for %d epochs",
            monitor,
            loop.bad_epochs,
        )


def _save(run_dir: Path, trainer: Trainer, loop: LoopState) -> None:
    if not trainer.context.is_main:
        return
    save_checkpoint(
        run_dir,
        loop.payload(
            trainer.model, trainer.optimizer, trainer.scheduler, trainer.scaler
        ),
    )


def _interrupt(cfg, run_dir, trainer, loop, stop: StopRequest, progress) -> None:
    """Save where we are, mark the run interrupted, stop with how to resume."""
    _save(run_dir, trainer, loop)
    where = (
        f"epoch {progress.epoch}, batch {progress.next_step + 1}"
        if progress is not None
        else f"the end of epoch {loop.epoch}"
    )
    summary = metrics_summary(
        loop,
        {},
        trainer.monitor,
        trainer.mode,
        None,
        trainer.batch_size,
        trainer.device,
        status="interrupted",
    )
    summary["interrupted"] = {"signal": stop.name or "a peer rank's", "at": where}
    if trainer.context.is_main:
        atomic_write_json(run_dir / METRICS_FILE, summary)
    then = f"Resume with: python train.py train.resume={run_dir}"
    job_id = slurm_job_id()
    if is_preemption(stop.signum) and job_id and cfg.train.slurm_requeue:
        then = _requeue(cfg, run_dir, trainer.context, stop, job_id) + f". {then}"
    raise TrainingInterrupted(
        f"training interrupted by {stop.name or 'a signal'} at {where}; the "
        f"checkpoint is saved in {run_dir}. {then}",
        stop.signum or signal.SIGTERM,
    )


def _requeue(cfg, run_dir: Path, context: DistContext, stop, job_id: str) -> str:
    """Rank 0 records the run dir for the requeued job and requeues it; the
    others wait for that, so none leaves the job step before the requeue."""
    outcome = "rank 0 requeues the SLURM job"
    if context.is_main:
        record_requeue(cfg.paths.outputs_dir, run_dir, job_id)
        outcome = requeue(job_id, stop.signum, stop.previous_handler())
        log.warning("%s; it will resume %s by itself", outcome, run_dir)
    try:
        barrier(context)
    except RuntimeError as exc:  # rank 0 left with the job's own handler
        if not is_peer_failure(exc, context):
            raise
    return outcome


# ----------------------------------------------------------------------------
# Setup


def _setup(cfg: DictConfig) -> Tuple[DeviceChoice, DistContext]:
    device = select_device(cfg.device.name, cfg.device.amp, cfg.device.amp_dtype)
    context = init_distributed(device.device.type, cfg.train.ddp_timeout_s)
    if context.enabled and device.device.type == "cuda":
        index = context.local_rank % torch.cuda.device_count()  # a GPU per task
        device = replace(device, device=torch.device("cuda", index))
    log.info("device: %s (%s)", device.device, device.reason)
    configure_threads(cfg.device.num_threads)
    if cfg.device.deterministic:
        if device.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    return device, context


def _stop_on_nonfinite(run_dir, epoch, bad_batch, last_good_epoch) -> None:
    """Keep the last good checkpoint and stop with a message naming epoch and batch."""
    raise ModelSphereError(
        f"training loss became NaN/inf in epoch {epoch}, batch {bad_batch + 1}; the "
        f"checkpoint of epoch {last_good_epoch} is kept in {run_dir}. "
        "Lower train.lr, keep train.grad_clip_norm on, or check the data for extreme "
        "values."
    )
