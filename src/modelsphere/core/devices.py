"""Device selection: the one place that decides CPU or CUDA, and AMP."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Optional

import torch

from modelsphere.core.errors import ModelSphereError

log = logging.getLogger(__name__)

DEVICE_NAMES = ("auto", "cpu", "cuda")
AMP_DTYPES = ("auto", "bfloat16", "float16")


@dataclass(frozen=True)
class DeviceChoice:
    """Where tensors live and how the forward pass is cast."""

    device: torch.device
    reason: str
    amp_dtype: Optional[torch.dtype] = None  # None: full float32

    @property
    def amp_enabled(self) -> bool:
        return self.amp_dtype is not None

    @property
    def needs_grad_scaler(self) -> bool:
        return self.amp_dtype == torch.float16


def select_device(
    name: str,
    amp: bool = True,
    amp_dtype: str = "auto",
    cuda_available: Optional[bool] = None,
    bf16_supported: Optional[bool] = None,
) -> DeviceChoice:
    """Resolve `device.name` to a device; AMP is used on CUDA only.

    `cuda_available` and `bf16_supported` default to what torch reports; tests pass
    them to exercise every branch on a CPU-only machine.
    """
    if name not in DEVICE_NAMES:
        raise ModelSphereError(
            f"unknown device {name!r}: choose one of {', '.join(DEVICE_NAMES)}"
        )
    if amp_dtype not in AMP_DTYPES:
        raise ModelSphereError(
            f"device.amp_dtype={amp_dtype!r} is not one of {', '.join(AMP_DTYPES)}"
        )
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if name == "cuda" and not cuda_available:
        raise ModelSphereError(
            "device=cuda was requested but CUDA is not available on this machine "
            f"(torch {torch.__version__}, built with CUDA: "
            f"{torch.version.cuda or 'no'}); use device=cpu or device=auto, or "
            "install a CUDA build of torch (see README)"
        )
    if name == "cpu":
        return DeviceChoice(torch.device("cpu"), "device=cpu was requested")
    if name == "auto" and not cuda_available:
        return DeviceChoice(
            torch.device("cpu"), "device=auto: CUDA is not available, using the CPU"
        )
    reason = (
        "device=cuda was requested"
        if name == "cuda"
        else "device=auto: CUDA is available"
    )
    dtype = None
    if amp:
        if bf16_supported is None:
            bf16_supported = torch.cuda.is_bf16_supported()
        dtype = _resolve_amp_dtype(amp_dtype, bf16_supported)
        reason += f", mixed precision {str(dtype).replace('torch.', '')}"
    return DeviceChoice(torch.device("cuda"), reason, dtype)


def _resolve_amp_dtype(amp_dtype: str, bf16_supported: bool) -> torch.dtype:
    if amp_dtype == "float16":
        return torch.float16
    if amp_dtype == "bfloat16":
        if not bf16_supported:
            raise ModelSphereError(
                "device.amp_dtype=bfloat16 but this GPU does not support bfloat16; "
                "use device.amp_dtype=float16 or auto"
            )
        return torch.bfloat16
    return torch.bfloat16 if bf16_supported else torch.float16


def autocast(choice: DeviceChoice):
    """The forward-pass context: autocast when AMP is on, else a no-op."""
    if not choice.amp_enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=choice.device.type, dtype=choice.amp_dtype)


def make_grad_scaler(choice: DeviceChoice) -> Optional[torch.amp.GradScaler]:
    """float16 AMP needs loss scaling; bfloat16 and float32 do not."""
    if not choice.needs_grad_scaler:
        return None
    return torch.amp.GradScaler(choice.device.type)


def configure_threads(num_threads: Optional[int]) -> None:
    """Set torch's intra-op threads when configured (None keeps torch's default)."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)
