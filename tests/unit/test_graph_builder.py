"""The two numeric pieces of the raw-columns graph (inference/graph_builder.py)
against what the feature transform computes: np.interp, bit for bit, and the
normal quantile function against PyTorch's ndtri."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from modelsphere.inference.graph_builder import ML_DOMAIN, ML_OPSET, GraphBuilder


def run_graph(build, x: np.ndarray) -> np.ndarray:
    """The builder's nodes as a graph from `x` (double [rows, columns])."""
    graph = helper.make_graph(
        build.nodes,
        "under_test",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["rows", x.shape[1]])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
        initializer=build.initializers,
    )
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid(ML_DOMAIN, ML_OPSET)]
    model = helper.make_model(graph, opset_imports=opsets)
    session = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"x": x})[0]


def knot_sets(rng):
    """Knot counts odd, even and powers of two around a search tree's levels;
    ties (an integer column, a column of one repeated value)."""
    return [
        np.sort(rng.standard_normal(1000)),
        np.sort(rng.integers(0, 72, 1000)).astype(float),
        np.array([0.0, 0.0, 1.0, 1.0, 1.0, 2.0]),
        np.sort(rng.standard_normal(31)),
        np.sort(rng.standard_normal(32)),
        np.sort(rng.standard_normal(33)),
        np.array([5.0, 5.0]),
    ]


@pytest.mark.parametrize("mirrored", [False, True])
def test_interp_is_numpys_bit_for_bit(mirrored):
    """Between knots, on knots (tied ones too), below the first and from the last
    on; `mirrored`: the downward pass of tied quantiles (-x over -knots[::-1])."""
    rng = np.random.default_rng(0)
    knots = knot_sets(rng)
    levels = [np.linspace(0.0, 1.0, len(k)) for k in knots]
    if mirrored:
        knots = [-k[::-1] for k in knots]
        levels = [-v[::-1] for v in levels]
    rows = 4000
    x = np.empty((rows, len(knots)))
    for column, k in enumerate(knots):
        spread = rng.uniform(k[0] - 1.0, k[-1] + 1.0, rows // 2)
        x[:, column] = np.concatenate([spread, rng.choice(k, rows - rows // 2)])
    x[:2] = [[-1e300], [1e300]]
    build = GraphBuilder("interp/")
    build.op("Identity", build.interp("x", knots, levels), output="y")
    expected = np.stack(
        [np.interp(x[:, c], k, v) for c, (k, v) in enumerate(zip(knots, levels))],
        axis=1,
    )
    np.testing.assert_array_equal(run_graph(build, x), expected)


def test_normal_quantile_matches_pytorchs_ndtri():
    """Over the clipped range the transform uses, in all three of AS241's regions:
    to 1e-14, and identical once cast to the model's float32."""
    central = np.linspace(1e-7, 1.0 - 1e-7, 20_000)
    tails = np.geomspace(1e-7, 0.5, 10_000)
    p = np.concatenate([central, tails, 1.0 - tails]).reshape(-1, 4)
    build = GraphBuilder("ndtri/")
    build.op("Identity", build.normal_quantile("x"), output="y")
    got = run_graph(build, p)
    expected = torch.special.ndtri(torch.from_numpy(p)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-14)
    np.testing.assert_array_equal(got.astype(np.float32), expected.astype(np.float32))
