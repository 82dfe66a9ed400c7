"""`logger=tensorboard`: TensorBoard event files, written as the run trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping
from modelsphere.tracking.run_record import epoch_scalars, final_scalars
from modelsphere.core.extras import optional_feature, require_module

IMAGE_SUFFIX = ".png"


def scalar_tag(name: str) -> str:
    """`val_roc_auc` -> `val/roc_auc`, `train_loss` -> `train/loss`: TensorBoard
    groups the curves of a split together."""
    for split in ("train", "val", "best_val", "test"):
        if name.startswith(split + "_"):
            return f"{split}/{name[len(split) + 1:]}"
    return name


class TensorBoardLogger:
    """Scalars per epoch (step = epoch), the config as text, and at the end the
    final metrics and the run's plots."""

    name = "tensorboard"

    def __init__(self, log_dir: Path, params: Mapping[str, Any], images: bool):
        require_module("tensorboard", "tracking", "logger.tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.images, self.last_epoch = images, 0
        table = "\n".join(f"| {key} | {value} |" for key, value in params.items())
        self.writer.add_text("config", "| setting | value |\n|---|---|\n" + table)
        self.writer.flush()

    def epoch(self, history: List[Dict[str, Any]]) -> None:
        row = history[-1]
        self.last_epoch = int(row["epoch"])
        for name, value in epoch_scalars(row).items():
            self.writer.add_scalar(scalar_tag(name), value, self.last_epoch)
        self.writer.flush()  # a live view, epoch by epoch

    def finish(
        self, final: Mapping[str, Mapping[str, float]], files: List[Path], status: str
    ) -> None:
        for name, value in final_scalars(final).items():
            self.writer.add_scalar(scalar_tag(name), value, self.last_epoch)
        images = [path for path in files if path.suffix == IMAGE_SUFFIX]
        if self.images and images and optional_feature("plots", "plots"):
            from matplotlib.image import imread

            for path in images:
                image = imread(path)[..., :3]  # RGB of RGBA, floats in [0, 1]
                self.writer.add_image(
                    path.stem, image, self.last_epoch, dataformats="HWC"
                )
        self.writer.add_text("status", status, self.last_epoch)
        self.writer.close()
