"""A small ONNX graph builder and the two numeric pieces the raw-columns graph
needs that ONNX has no operator for: `np.interp` over sorted knots and the
normal quantile function.

Both are written so that, in double precision, they compute what the numpy /
PyTorch feature transform computes (features/transform.py), operation for
operation where that matters: the interpolation finds the same knot and applies
numpy's own formula; the quantile function is Wichura's AS241 (PPND16, Applied
Statistics 37:477, 1988), accurate to about 1e-16 relative, against Cephes'
`ndtri` in PyTorch.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np
from onnx import TensorProto, helper, numpy_helper

# ONNX's ML operators: LabelEncoder (version 2) and TreeEnsembleRegressor
# (version 3: double-precision thresholds)
ML_DOMAIN, ML_OPSET = "ai.onnx.ml", 3

# AS241 (PPND16): rational approximations, coefficients in ascending powers.
_CENTRAL_NUM = (
    3.3871328727963666080e0,
    1.3314166789178437745e2,
    1.9715909503065514427e3,
    1.3731693765509461125e4,
    4.5921953931549871457e4,
    6.7265770927008700853e4,
    3.3430575583588128105e4,
    2.5090809287301226727e3,
)
_CENTRAL_DEN = (
    1.0,
    4.2313330701600911252e1,
    6.8718700749205790830e2,
    5.3941960214247511077e3,
    2.1213794301586595867e4,
    3.9307895800092710610e4,
    2.8729085735721942674e4,
    5.2264952788528545610e3,
)
_NEAR_NUM = (
    1.42343711074968357734e0,
    4.63033784615654529590e0,
    5.76949722146069140550e0,
    3.64784832476320460504e0,
    1.27045825245236838258e0,
    2.41780725177450611770e-1,
    2.27238449892691845833e-2,
    7.74545014278341407640e-4,
)
_NEAR_DEN = (
    1.0,
    2.05319162663775882187e0,
    1.67638483018380384940e0,
    6.89767334985100004550e-1,
    1.48103976427480074590e-1,
    1.51986665636164571966e-2,
    5.47593808499534494600e-4,
    1.05075007164441684324e-9,
)
_FAR_NUM = (
    6.65790464350110377720e0,
    5.46378491116411436990e0,
    1.78482653991729133580e0,
    2.96560571828504891230e-1,
    2.65321895265761230930e-2,
    1.24266094738807843860e-3,
    2.71155556874348757815e-5,
    2.01033439929228813265e-7,
)
_FAR_DEN = (
    1.0,
    5.99832206555887937690e-1,
    1.36929880922735805310e-1,
    1.48753612908506148525e-2,
    7.86869131145613259100e-4,
    1.84631831751005468180e-5,
    1.42151175831644588870e-7,
    2.04426310338993978564e-15,
)
_CENTRAL_HALF_WIDTH, _CENTRAL_SHIFT = 0.425, 0.180625
_NEAR_SHIFT, _FAR_SHIFT, _NEAR_LIMIT = 1.6, 5.0, 5.0


class GraphBuilder:
    """Nodes and constants of one graph, each with a fresh name under `prefix`."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.initializers = prefix, [], []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value, dtype=None, hint: str = "const") -> str:
        array = np.asarray(value, dtype=dtype)
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(
        self,
        op_type: str,
        *inputs: str,
        domain: str = "",
        hint: str = "",
        output: str = "",
        **attrs,
    ) -> str:
        """One node with one output, named `output` (a graph input or output's
        fixed name) or a fresh name; the name is returned."""
        output = output or self._name(hint or op_type.lower())
        self.nodes.append(
            helper.make_node(
                op_type, list(inputs), [output], name=output, domain=domain, **attrs
            )
        )
        return output

    def normal_quantile(self, p: str) -> str:
        """The standard normal's quantile function of probabilities p in (0, 1)
        (double). AS241's rational function for the value's region (central,
        near tail, far tail) is evaluated as power sums with that region's
        coefficients: a dozen large operations rather than Horner's ~100 small
        ones, whose per-node cost dominates a single row."""
        q = self.op("Sub", p, self.const(0.5))
        smaller = self.op("Min", p, self.op("Sub", self.const(1.0), p))
        t = self.op("Sqrt", self.op("Neg", self.op("Log", smaller)))
        is_central = self.op(
            "LessOrEqual", self.op("Abs", q), self.const(_CENTRAL_HALF_WIDTH)
        )
        region = self.op(
            "Where",
            is_central,
            self.const(0, np.int64),
            self.op(
                "Where",
                self.op("LessOrEqual", t, self.const(_NEAR_LIMIT)),
                self.const(1, np.int64),
                self.const(2, np.int64),
            ),
        )
        central_r = self.op("Sub", self.const(_CENTRAL_SHIFT), self.op("Mul", q, q))
        tail_r = self.op(
            "Sub",
            t,
            self.op("Gather", self.const([0.0, _NEAR_SHIFT, _FAR_SHIFT]), region),
        )
        r = self.op("Where", is_central, central_r, tail_r)
        exponents = np.arange(len(_CENTRAL_NUM), dtype=np.float64)
        powers = self.op(
            "Pow",
            self.op("Unsqueeze", r, self.const([-1, -2], np.int64)),
            self.const(exponents),
        )  # [..., 1, power]
        coefficients = np.array(
            [
                [_CENTRAL_NUM, _CENTRAL_DEN],
                [_NEAR_NUM, _NEAR_DEN],
                [_FAR_NUM, _FAR_DEN],
            ]
        )  # [region, numerator/denominator, power]
        sums = self.op(
            "ReduceSum",
            self.op("Mul", powers, self.op("Gather", self.const(coefficients), region)),
            self.const([-1], np.int64),
            keepdims=0,
        )  # [..., numerator/denominator]
        ratio = self.op(
            "Div",
            self.op("Gather", sums, self.const(0, np.int64), axis=-1),
            self.op("Gather", sums, self.const(1, np.int64), axis=-1),
        )
        # central: q x ratio; tails: +-ratio, the sign of q (never 0 there)
        return self.op(
            "Mul", ratio, self.op("Where", is_central, q, self.op("Sign", q))
        )

    def count_at_most(self, x: str, knots: List[np.ndarray]) -> str:
        """How many of knots[c] are <= x[:, c] (numpy's searchsorted, side
        "right"), for every column c of x [rows, columns] (double), as float
        [rows, columns]: one balanced search tree per column in one
        ai.onnx.ml TreeEnsembleRegressor, about log2(knots) double-precision
        comparisons per value, where ONNX has no sorted search of its own."""
        attributes: Dict[str, list] = {name: [] for name in _TREE_LISTS}
        thresholds: List[float] = []
        leaf_counts: List[float] = []
        for column, column_knots in enumerate(knots):
            _search_tree(column, column_knots, attributes, thresholds, leaf_counts)
        return self.op(
            "TreeEnsembleRegressor",
            x,
            domain=ML_DOMAIN,
            n_targets=len(knots),
            aggregate_function="SUM",
            post_transform="NONE",
            nodes_values_as_tensor=numpy_helper.from_array(
                np.array(thresholds, np.float64), "thresholds"
            ),
            target_weights_as_tensor=numpy_helper.from_array(
                np.array(leaf_counts, np.float64), "counts"
            ),
            **attributes,
        )

    def interp(self, x: str, knots: List[np.ndarray], values: List[np.ndarray]) -> str:
        """np.interp(x[:, c], knots[c], values[c]) for every column c of x
        [rows, columns] (double, finite), knots non-decreasing: the last knot
        <= x is found, then numpy's formula slope * (x - knot) + value, with
        numpy's slopes (precomputed here, as numpy precomputes them); below the
        first knot, the first value; from the last knot on, the last value (its
        slope is 0)."""
        sizes = np.array([len(k) for k in knots], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        slopes = []
        for k, v in zip(knots, values):
            with np.errstate(divide="ignore", invalid="ignore"):  # tied knots
                slope = (v[1:] - v[:-1]) / (k[1:] - k[:-1])
            # a tied knot is never the last one <= x: its slope is never used
            slopes.append(np.append(np.where(np.isfinite(slope), slope, 0.0), 0.0))
        count = self.op(
            "Cast", self.count_at_most(x, knots), to=TensorProto.INT64
        )  # [rows, cols]
        # The knot's position in the flattened knots (x below the first knot:
        # one before the column's first, a value the last Where discards).
        at = self.op("Add", count, self.const(starts - 1))
        flat = {"knots": knots, "values": values, "slopes": slopes}
        knot, value, slope = (
            self.op("Gather", self.const(np.concatenate(arrays), hint=name), at)
            for name, arrays in flat.items()
        )
        between = self.op("Add", self.op("Mul", slope, self.op("Sub", x, knot)), value)
        below = self.op("Less", x, self.const([k[0] for k in knots]))
        return self.op("Where", below, self.const([v[0] for v in values]), between)


# TreeEnsembleRegressor's per-node and per-leaf attribute lists
_TREE_LISTS = (
    "nodes_treeids",
    "nodes_nodeids",
    "nodes_featureids",
    "nodes_modes",
    "nodes_truenodeids",
    "nodes_falsenodeids",
    "nodes_missing_value_tracks_true",
    "target_treeids",
    "target_nodeids",
    "target_ids",
)


def _search_tree(
    column: int,
    knots: np.ndarray,
    attributes: Dict[str, list],
    thresholds: List[float],
    leaf_counts: List[float],
) -> None:
    """Tree `column` of the ensemble: a binary search over the sorted knots
    whose leaf for x holds how many knots are <= x. Built breadth first without
    recursion; a node covers the answers lo..hi and asks x < knots[mid]."""
    pending = [(0, len(knots))]  # node i covers answers pending[i]
    position = 0
    while position < len(pending):
        lo, hi = pending[position]
        attributes["nodes_treeids"].append(column)
        attributes["nodes_nodeids"].append(position)
        attributes["nodes_featureids"].append(column)
        attributes["nodes_missing_value_tracks_true"].append(0)
        if lo == hi:
            attributes["nodes_modes"].append("LEAF")
            attributes["nodes_truenodeids"].append(0)
            attributes["nodes_falsenodeids"].append(0)
            thresholds.append(0.0)
            attributes["target_treeids"].append(column)
            attributes["target_nodeids"].append(position)
            attributes["target_ids"].append(column)
            leaf_counts.append(float(lo))
        else:
            mid = (lo + hi) // 2  # x < knots[mid]: answer in lo..mid
            attributes["nodes_modes"].append("BRANCH_LT")
            thresholds.append(float(knots[mid]))
            attributes["nodes_truenodeids"].append(len(pending))
            attributes["nodes_falsenodeids"].append(len(pending) + 1)
            pending += [(lo, mid), (mid + 1, hi)]
        position += 1
