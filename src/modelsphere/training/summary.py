"""What a training run reports: the metrics.json summary, the record of the data
it trained on, each process's peak memory, and the short form of the test
metrics for the log."""

from __future__ import annotations

import sys
from typing import Any, Dict

from modelsphere.data.splits import SPLITS, ProcessedData


def metrics_summary(
    loop, final, monitor, mode, seconds, batch_size, device, status="completed"
) -> Dict[str, Any]:
    return {
        "status": status,
        "monitor": {"metric": f"val_{monitor}", "mode": mode},
        "best": {"epoch": loop.best_epoch, f"val_{monitor}": loop.best_value},
        "final": final,
        "training": {
            "epochs_run": loop.epoch,
            "stopped_early": loop.stopped_early,
            "best_epoch": loop.best_epoch,
            "batch_size": batch_size,
            "device": str(device.device),
            "amp_dtype": (
                str(device.amp_dtype).replace("torch.", "")
                if device.amp_enabled
                else None
            ),
            "seconds": seconds,
        },
        "history": loop.history,
    }


def peak_rss_kib() -> int:
    """This process's peak resident memory so far, in KiB (0 where the platform
    does not report it)."""
    try:
        import resource
    except ImportError:  # not on this platform (Windows)
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS


def data_record(data: ProcessedData) -> Dict[str, Any]:
    """Which data trained this model: enough to check evaluation uses the same."""
    return {
        "processed_dir": str(data.directory.resolve()),
        "format": data.format,
        "raw_sha256": data.manifest["raw"]["sha256"],
        "config_sha256": data.manifest["config_sha256"],
        "split_sha256": {split: data.split_sha256(split) for split in SPLITS},
        "rows": data.manifest["rows"],
    }


def short_metrics(metrics: Dict[str, float]) -> str:
    return ", ".join(
        f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("rows", "loss")
    )
