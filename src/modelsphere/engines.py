"""Forward-pass engines: eager PyTorch or ONNX Runtime, same inputs, same outputs.

Both take the transformed feature arrays (float32 numeric, int64 categorical codes)
and return the raw model outputs as a float32 CPU tensor. The ONNX engine exports
the trained model at start-up with PyTorch's exporter and runs it with ONNX
Runtime, which costs far less per call than eager PyTorch for single rows; its
outputs match eager PyTorch to float32 rounding (tested).
"""

from __future__ import annotations

import io
import logging
import time
import warnings

import numpy as np
import torch
from torch import nn

from .devices import DeviceChoice, autocast
from .errors import ModelSphereError

log = logging.getLogger(__name__)

ENGINES = ("torch", "onnx")
EXPORT_EXAMPLE_ROWS = 2  # dynamic batch dimensions need an example of >= 2 rows


@torch.inference_mode()
def predict_outputs(
    model: nn.Module,
    numeric: torch.Tensor,
    categorical: torch.Tensor,
    batch_size: int,
    device: DeviceChoice,
) -> torch.Tensor:
    """Raw model outputs (logits or standardised values), float32, in batches."""
    model.eval()
    chunks = []
    for start in range(0, numeric.shape[0], batch_size):
        with autocast(device):
            out = model(
                numeric[start : start + batch_size],
                categorical[start : start + batch_size],
            )
        chunks.append(out.float())
    if not chunks:
        return torch.zeros((0, model.spec.n_outputs), device=numeric.device)
    return torch.cat(chunks)


class TorchEngine:
    name = "torch"

    def __init__(self, model: nn.Module, device: DeviceChoice, batch_size: int):
        self.model, self.device, self.batch_size = model, device, batch_size

    def __call__(self, numeric: np.ndarray, categorical: np.ndarray) -> torch.Tensor:
        outputs = predict_outputs(
            self.model,
            torch.from_numpy(numeric).to(self.device.device),
            torch.from_numpy(categorical).to(self.device.device),
            self.batch_size,
            self.device,
        )
        return outputs.cpu()


class _PresentInputs(nn.Module):
    """ONNX graphs cannot take zero-width inputs: feed only the blocks that exist."""

    def __init__(self, model: nn.Module, n_numeric: int, n_categorical: int):
        super().__init__()
        self.model, self.n_numeric, self.n_categorical = model, n_numeric, n_categorical

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        inputs = list(inputs)
        numeric = inputs.pop(0) if self.n_numeric else None
        categorical = inputs.pop(0) if self.n_categorical else None
        rows = (numeric if numeric is not None else categorical).shape[0]
        if numeric is None:
            numeric = torch.zeros(rows, 0)
        if categorical is None:
            categorical = torch.zeros(rows, 0, dtype=torch.long)
        return self.model(numeric, categorical)


class OnnxEngine:
    name = "onnx"

    def __init__(
        self, model: nn.Module, n_numeric: int, n_categorical: int, threads: int
    ):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a pinned dependency
            raise ModelSphereError("engine=onnx needs onnxruntime installed") from exc
        self.n_numeric, self.n_categorical = n_numeric, n_categorical
        started = time.perf_counter()
        proto = _export(_PresentInputs(model.cpu().eval(), n_numeric, n_categorical))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            proto, options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [item.name for item in self.session.get_inputs()]
        log.info("exported the model to ONNX in %.1fs", time.perf_counter() - started)

    def __call__(self, numeric: np.ndarray, categorical: np.ndarray) -> torch.Tensor:
        blocks = []
        if self.n_numeric:
            blocks.append(np.ascontiguousarray(numeric, dtype=np.float32))
        if self.n_categorical:
            blocks.append(np.ascontiguousarray(categorical, dtype=np.int64))
        feeds = dict(zip(self.input_names, blocks))
        return torch.from_numpy(self.session.run(None, feeds)[0])


def _export(module: _PresentInputs) -> bytes:
    rows = torch.export.Dim("rows")
    examples, names = [], []
    if module.n_numeric:
        examples.append(torch.zeros(EXPORT_EXAMPLE_ROWS, module.n_numeric))
        names.append("numeric")
    if module.n_categorical:
        examples.append(
            torch.zeros(EXPORT_EXAMPLE_ROWS, module.n_categorical, dtype=torch.long)
        )
        names.append("categorical")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            module,
            tuple(examples),
            input_names=names,
            output_names=["output"],
            # forward(*inputs) has one (varargs) parameter holding every input.
            dynamic_shapes=(tuple({0: rows} for _ in examples),),
            dynamo=True,
            verbose=False,
        )
    buffer = io.BytesIO()
    buffer.write(program.model_proto.SerializeToString())
    return buffer.getvalue()


def make_engine(
    kind: str,
    model: nn.Module,
    spec,
    device: DeviceChoice,
    batch_size: int,
    threads: int,
):
    if kind == "torch":
        return TorchEngine(model, device, batch_size)
    if kind == "onnx":
        if device.device.type != "cpu":
            raise ModelSphereError("engine=onnx runs on the CPU: use device=cpu")
        try:
            return OnnxEngine(model, spec.n_numeric, len(spec.cardinalities), threads)
        except Exception as exc:  # the exporter's errors have no common type
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning(
                "engine=onnx: the %s model could not be exported to ONNX (%s); "
                "falling back to engine=torch",
                spec.architecture,
                reason[:200],
            )
            return TorchEngine(model, device, batch_size)
    raise ModelSphereError(f"engine={kind!r} is not one of {', '.join(ENGINES)}")
