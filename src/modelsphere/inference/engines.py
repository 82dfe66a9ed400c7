"""Forward-pass engines: eager PyTorch or ONNX Runtime, same inputs, same outputs.

Both take the transformed feature arrays (float32 numeric, int64 categorical codes)
and return the raw model outputs as a float32 CPU tensor. The ONNX engine runs the
trained model with ONNX Runtime, which costs far less per call than eager PyTorch
for single rows and about half as much per row in large batches; its outputs match
eager PyTorch to float32 rounding (tested).

Exporting takes seconds (PyTorch's dynamo exporter), so the exported graph is
cached beside the weights as `model.onnx`, stamped with the weights' SHA-256. A
cached graph is used only if its stamp matches the artifact's weights and its
outputs match eager PyTorch on a seeded probe batch; otherwise it is exported again.
The cache is best effort: a read-only run dir just means exporting every start.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from modelsphere.core.devices import DeviceChoice
from modelsphere.core.errors import ModelSphereError
from modelsphere.core.extras import optional_feature, require_extra, require_module
from modelsphere.core.fileio import atomic_write_bytes
from modelsphere.core.runs import ONNX_FILE
from modelsphere.models.outputs import predict_outputs

log = logging.getLogger(__name__)

ENGINES = ("torch", "onnx")
EXPORT_EXAMPLE_ROWS = 2  # dynamic batch dimensions need an example of >= 2 rows
ONNX_WEIGHTS_KEY = "modelsphere.weights_sha256"
PROBE_ROWS = 64  # rows of the seeded batch a cached graph must reproduce
PROBE_SEED = 0
PROBE_TOLERANCE = 1e-4  # absolute and relative, on raw outputs (float32 rounding)


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
        self,
        model: nn.Module,
        cardinalities: Sequence[int],
        n_numeric: int,
        threads: int,
        cache_path: Optional[Path] = None,
        weights_sha256: Optional[str] = None,
        batch_size: Optional[int] = None,
    ):
        """`batch_size`: rows per session run (None: all rows in one run)."""
        self._ort = require_module("onnxruntime", "onnx", "engine=onnx")
        self.n_numeric, self.n_categorical = n_numeric, len(cardinalities)
        self.threads, self.batch_size = threads, batch_size
        module = _PresentInputs(model.cpu().eval(), n_numeric, self.n_categorical)
        probe = _probe_inputs(n_numeric, cardinalities)
        with torch.inference_mode():
            expected = module(*[torch.from_numpy(block) for block in probe]).numpy()
        # The graph's bytes are kept: the predictor wraps them in the feature
        # transform and the scores (raw_graph.py).
        self.graph: bytes = b""
        self.session = self._cached_session(cache_path, weights_sha256, probe, expected)
        if self.session is None:
            started = time.perf_counter()
            proto = _export(module, weights_sha256)
            self.session, self.graph = self._session(proto), proto
            problem = _disagreement(self.session, probe, expected)
            if problem:  # pragma: no cover - an exporter bug, not a user error
                raise ModelSphereError(f"the ONNX export {problem}")
            log.info(
                "exported the model to ONNX in %.1fs", time.perf_counter() - started
            )
            if weights_sha256 is not None:  # an unstamped graph is never reused
                _store(cache_path, proto)
        self.input_names = [item.name for item in self.session.get_inputs()]

    def _session(self, proto: bytes):
        return onnx_session(self._ort, proto, self.threads)

    def _cached_session(self, path, weights_sha256, probe, expected):
        """The cached graph's session, or None (absent, stale or not matching)."""
        if path is None or weights_sha256 is None or not path.is_file():
            return None
        try:
            graph = path.read_bytes()
            session = self._session(graph)
        except Exception as exc:  # ONNX Runtime's errors have no common type
            log.info("%s is not a usable ONNX graph (%s): exporting again", path, exc)
            return None
        stamp = session.get_modelmeta().custom_metadata_map.get(ONNX_WEIGHTS_KEY)
        if stamp != weights_sha256:
            log.info("%s was exported from other weights: exporting again", path)
            return None
        problem = _disagreement(session, probe, expected)
        if problem:
            log.warning("%s %s: exporting again", path, problem)
            return None
        log.info("loaded the ONNX graph cached in %s", path)
        self.graph = graph
        return session

    def __call__(self, numeric: np.ndarray, categorical: np.ndarray) -> torch.Tensor:
        """Outputs of the rows, `batch_size` rows per session run: a run's
        activations then stay in the CPU's caches (on 65,536 Telco rows, one
        thread, 2,048-row runs take ~0.7x the time of one run of them all)."""
        blocks = []
        if self.n_numeric:
            blocks.append(np.ascontiguousarray(numeric, dtype=np.float32))
        if self.n_categorical:
            blocks.append(np.ascontiguousarray(categorical, dtype=np.int64))
        rows = len(blocks[0])
        step = self.batch_size or rows or 1
        outputs = [
            self.session.run(
                None,
                {
                    name: block[start : start + step]
                    for name, block in zip(self.input_names, blocks)
                },
            )[0]
            for start in range(0, rows, step) or [0]  # no rows: one empty run
        ]
        if len(outputs) == 1:
            return torch.from_numpy(outputs[0])
        return torch.from_numpy(np.concatenate(outputs))


def onnx_session(ort, proto: bytes, threads: int):
    """An ONNX Runtime session on the CPU with `threads` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])


def _disagreement(session, probe: List[np.ndarray], expected: np.ndarray) -> str:
    """'' if the graph reproduces eager PyTorch on the probe batch, else why not."""
    names = [item.name for item in session.get_inputs()]
    got = session.run(None, dict(zip(names, probe)))[0]
    if got.shape == expected.shape and np.allclose(
        got, expected, rtol=PROBE_TOLERANCE, atol=PROBE_TOLERANCE
    ):
        return ""
    return "does not reproduce the PyTorch model's outputs on the probe batch"


def _probe_inputs(n_numeric: int, cardinalities: Sequence[int]) -> List[np.ndarray]:
    """A seeded batch in the graph's input order; each categorical column cycles
    through its codes (all of them, up to PROBE_ROWS levels)."""
    rng = np.random.default_rng(PROBE_SEED)
    blocks = []
    if n_numeric:
        blocks.append(rng.standard_normal((PROBE_ROWS, n_numeric), dtype=np.float32))
    if len(cardinalities):
        codes = [np.arange(PROBE_ROWS) % card for card in cardinalities]
        blocks.append(np.stack(codes, axis=1).astype(np.int64))
    return blocks


def _store(path: Optional[Path], proto: bytes) -> None:
    if path is None:
        return
    try:
        atomic_write_bytes(path, proto)
        log.info("cached the ONNX graph in %s", path)
    except (ModelSphereError, OSError) as exc:
        log.info("could not cache the ONNX graph (%s); it is exported each start", exc)


def _export(module: _PresentInputs, weights_sha256: Optional[str]) -> bytes:
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
        for name in ("torch.onnx", "onnx_ir", "onnxscript"):
            logging.getLogger(name).setLevel(logging.ERROR)
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
    proto = program.model_proto
    if weights_sha256 is not None:
        proto.metadata_props.add(key=ONNX_WEIGHTS_KEY, value=weights_sha256)
    buffer = io.BytesIO()
    buffer.write(proto.SerializeToString())
    return buffer.getvalue()


def resolve_engine(kind: str, device: DeviceChoice) -> str:
    """`auto`: ONNX Runtime on the CPU (about half eager PyTorch's cost per row)
    when the 'onnx' extra is installed, eager PyTorch otherwise."""
    if kind != "auto":
        return kind
    if device.device.type != "cpu":
        return "torch"
    return (
        "onnx"
        if optional_feature("onnx", "ONNX Runtime engine (engine=auto: eager PyTorch)")
        else "torch"
    )


def make_engine(
    kind: str,
    model: nn.Module,
    spec,
    device: DeviceChoice,
    batch_size: int,
    threads: int,
    run_dir: Optional[Path] = None,
    weights_sha256: Optional[str] = None,
):
    """`run_dir` + `weights_sha256`: where the ONNX engine caches its export."""
    if kind == "torch":
        return TorchEngine(model, device, batch_size)
    if kind == "onnx":
        if device.device.type != "cpu":
            raise ModelSphereError("engine=onnx runs on the CPU: use device=cpu")
        require_extra("onnx", "engine=onnx")
        try:
            return OnnxEngine(
                model,
                spec.cardinalities,
                spec.n_numeric,
                threads,
                None if run_dir is None else Path(run_dir) / ONNX_FILE,
                weights_sha256,
                batch_size,
            )
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
