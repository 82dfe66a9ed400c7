"""One ONNX graph from raw feature columns to labels and probabilities.

The network's graph (engines.py) takes transformed features; this module wraps it
in the fitted feature transform before it and the scores after it, so one
`session.run` replaces the Python feature transform, the forward pass and the
score conversion. `export.py` writes it for runtimes with no Python of ours;
the predictor runs it for the API's records (`engine=onnx`).

Inputs, one [rows, 1] tensor per feature column, named as the column (the
convention of ONNX's converters for tabular models):
- a numeric column: double, NaN (or +-inf) for a missing value;
- a categorical column: string, the category's text as preprocessing types it
  (trimmed, integral numbers without ".0"), "" for a missing value.

Outputs: `label` (string or int64, as the target's classes) and `probabilities`
(float32 [rows, classes], in the order of the `modelsphere.classes` metadata) for
a classifier; `prediction` (float32, in the target's units) for a regression. A
row whose model inputs leave float32's range (a standard-scaled value beyond
+-3.4e38) gets NaN probabilities or prediction: the model cannot score it.

Inside, operation for operation as features/transform.py and models/outputs.py:
missing values filled, standard or quantile-normal scaling in double precision
(graph_builder.py), missing indicators, category codes by lookup with the
missing (0) and unseen (1) codes (ai.onnx.ml LabelEncoder), the network, then
sigmoid/softmax and the argmax label, or the target's inverse transform.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from modelsphere.core.errors import ModelSphereError
from modelsphere.core.extras import require_module
from modelsphere.data.cleaning import category_text
from modelsphere.data.schema import Schema
from modelsphere.features.target import NO_SMEARING, transform_of
from modelsphere.features.transform import (
    FIRST_LEVEL_CODE,
    MISSING_CODE,
    QUANTILE_CLIP,
    UNSEEN_CODE,
)
from modelsphere.inference.engines import ONNX_WEIGHTS_KEY, onnx_session
from modelsphere.inference.graph_builder import ML_DOMAIN, ML_OPSET, GraphBuilder
from modelsphere.models.outputs import PREDICTION_COLUMN, PROBABILITY_SUFFIX

NETWORK_PREFIX = "network/"  # the network's names inside the raw graph
FEATURES_PREFIX = "features/"
SCORES_PREFIX = "scores/"
LABEL_OUTPUT, PROBABILITIES_OUTPUT, PREDICTION_OUTPUT = (
    "label",
    "probabilities",
    "prediction",
)
MISSING_TEXT = ""  # a missing category value
COLUMN_TAG = "|"  # between a column's position and a category in the lookup
RAW_GRAPH_OPSET = 20  # StringConcat
CLASSES_KEY = "modelsphere.classes"
INPUTS_KEY = "modelsphere.inputs"
TASK_KEY = "modelsphere.task"


def output_names(task: str) -> List[str]:
    if task == "regression":
        return [PREDICTION_OUTPUT]
    return [LABEL_OUTPUT, PROBABILITIES_OUTPUT]


def _check_names(schema: Schema) -> None:
    reserved = set(output_names(schema.task))
    prefixes = (NETWORK_PREFIX, FEATURES_PREFIX, SCORES_PREFIX)
    clashes = [
        name
        for name in schema.features
        if name in reserved or name.startswith(prefixes)
    ]
    if clashes:
        raise ModelSphereError(
            f"feature column(s) {clashes} clash with names of the raw-columns ONNX "
            f"graph (its outputs {sorted(reserved)}, or names starting "
            f"{' / '.join(prefixes)}); rename them in the data to export this model"
        )


def _numeric_block(
    build: GraphBuilder, state: Dict[str, Any], network_input: str
) -> str:
    """The network's float32 numeric input from the numeric columns; returns
    a [rows] bool: the row's inputs left float32's range."""
    columns = state["numeric"]
    n = len(columns)
    x = build.op("Concat", *[c["name"] for c in columns], axis=1)
    missing = _not_finite(build, x)
    fill = build.const([c["fill_value"] for c in columns], np.float64, "fill")
    filled = build.op("Where", missing, fill, x)
    mean = [c["mean"] if c["scaling"] == "standard" else 0.0 for c in columns]
    std = [c["std"] if c["scaling"] == "standard" else 1.0 for c in columns]
    standard = build.op(
        "Div",
        build.op("Sub", filled, build.const(mean, np.float64, "mean")),
        build.const(std, np.float64, "std"),
    )
    blocks = [standard]
    quantile = [i for i, c in enumerate(columns) if c["scaling"] == "quantile_normal"]
    if quantile:
        blocks.append(_quantile_normal(build, filled, [columns[i] for i in quantile]))
    blocks.append(build.op("Cast", missing, to=TensorProto.DOUBLE))
    # Each column's value (standard block, or quantile block), then its indicator.
    order: List[int] = []
    for i, col in enumerate(columns):
        order.append(n + quantile.index(i) if i in quantile else i)
        if col["missing_indicator"]:
            order.append(n + len(quantile) + i)
    every = build.op("Concat", *blocks, axis=1)
    values = build.op("Gather", every, build.const(order, np.int64), axis=1)
    build.op("Cast", values, output=network_input, to=TensorProto.FLOAT)
    largest = build.op(
        "ReduceMax",
        build.op("Abs", network_input),
        build.const([1], np.int64),
        keepdims=0,
    )
    return build.op("IsInf", largest)


def _not_finite(build: GraphBuilder, x: str) -> str:
    """NaN or +-inf: x - x is NaN exactly there (two nodes, not three)."""
    return build.op("IsNaN", build.op("Sub", x, x))


def _quantile_normal(
    build: GraphBuilder, filled: str, columns: List[Dict[str, Any]]
) -> str:
    """transform._quantile_normal for every quantile column of `filled`; a column
    with repeated quantiles averages the upward and downward interpolations."""
    all_columns = build.const([c["_position"] for c in columns], np.int64)
    x = build.op("Gather", filled, all_columns, axis=1)
    knots = [np.asarray(c["quantiles"], dtype=np.float64) for c in columns]
    refs = [np.linspace(0.0, 1.0, len(q)) for q in knots]
    ties = np.array([not bool(np.all(np.diff(q) > 0)) for q in knots])
    if not ties.any():
        ranks = build.interp(x, knots, refs)
    else:  # both directions in one interpolation: columns, then mirrored ones
        both = build.interp(
            build.op("Concat", x, build.op("Neg", x), axis=1),
            knots + [-q[::-1] for q in knots],
            refs + [-r[::-1] for r in refs],
        )
        axis1 = build.const([1], np.int64)
        start, middle, end = (
            build.const([i * len(columns)], np.int64) for i in range(3)
        )
        up = build.op("Slice", both, start, middle, axis1)
        down = build.op("Slice", both, middle, end, axis1)
        averaged = build.op("Mul", build.const(0.5), build.op("Sub", up, down))
        ranks = build.op("Where", build.const(ties), averaged, up)
    clipped = build.op(
        "Clip", ranks, build.const(QUANTILE_CLIP), build.const(1.0 - QUANTILE_CLIP)
    )
    return build.normal_quantile(clipped)


def _code_block(build: GraphBuilder, state: Dict[str, Any], network_input: str):
    """The network's int64 code input: categorical columns, then discrete numeric
    columns (transform.FeatureTransform.transform's order)."""
    codes = []
    categorical = state["categorical"]
    if categorical:
        # One lookup for every column: each value tagged with its column's
        # position ("3|Yes"), the keys likewise.
        tags = [f"{position}{COLUMN_TAG}" for position in range(len(categorical))]
        keys, values = [], []
        for tag, col in zip(tags, categorical):
            keys += [tag + level for level in col["levels"]] + [tag + MISSING_TEXT]
            values += list(
                range(FIRST_LEVEL_CODE, FIRST_LEVEL_CODE + len(col["levels"]))
            )
            values.append(MISSING_CODE)
        text = build.op("Concat", *[col["name"] for col in categorical], axis=1)
        tagged = build.op("StringConcat", build.const([tags], object), text)
        codes.append(
            build.op(
                "LabelEncoder",
                tagged,
                domain=ML_DOMAIN,
                keys_strings=keys,
                values_int64s=values,
                default_int64=UNSEEN_CODE,
            )
        )
    for col in state.get("numeric_levels", []):
        x = col["name"]  # [rows, 1]
        levels = build.const([col["values"]], np.float64, "levels")  # [1, levels]
        equal = build.op("Cast", build.op("Equal", x, levels), to=TensorProto.INT32)
        seen = build.op(
            "Greater",
            build.op("ReduceMax", equal, build.const([1], np.int64)),
            build.const(0, np.int32),
        )
        position = build.op("ArgMax", equal, axis=1)  # [rows, 1]
        code = build.op(
            "Where",
            seen,
            build.op("Add", position, build.const(FIRST_LEVEL_CODE, np.int64)),
            build.const(UNSEEN_CODE, np.int64),
        )
        codes.append(
            build.op(
                "Where",
                _not_finite(build, x),
                build.const(MISSING_CODE, np.int64),
                code,
            )
        )
    build.op("Concat", *codes, output=network_input, axis=1)


def _score_block(
    build: GraphBuilder, schema: Schema, state: Dict[str, Any], output: str, bad
) -> None:
    """models/outputs.outputs_to_scores and the predictor's labels; rows the
    model cannot score (`bad`, or None) get NaN scores."""
    first = build.op("Gather", output, build.const(0, np.int64), axis=1)  # [rows]
    if schema.task == "regression":
        target = state["target"]
        z = build.op("Cast", first, to=TensorProto.DOUBLE)
        values = build.op(
            "Add",
            build.op("Mul", z, build.const(float(target["std"]))),
            build.const(float(target["mean"])),
        )
        if transform_of(target) == "log1p":
            held = build.op(
                "Clip",
                values,
                build.const(float(target["low"])),
                build.const(float(target["high"])),
            )
            smearing = float(target.get("smearing", NO_SMEARING))
            values = build.op(
                "Sub",
                build.op("Mul", build.op("Exp", held), build.const(smearing)),
                build.const(1.0),
            )
        prediction = build.op("Cast", values, to=TensorProto.FLOAT)
        if bad is not None:
            nan = build.const(np.nan, np.float32)
            prediction = build.op("Where", bad, nan, prediction)
        build.op("Identity", prediction, output=PREDICTION_OUTPUT)
        return
    if schema.task == "binary":
        p = build.op(
            "Unsqueeze", build.op("Sigmoid", first), build.const([1], np.int64)
        )
        one = build.const(1.0, np.float32)
        probabilities = build.op("Concat", build.op("Sub", one, p), p, axis=1)
    else:
        probabilities = build.op("Softmax", output, axis=1)
    index = build.op("ArgMax", probabilities, axis=1, keepdims=0)
    if schema.target_kind == "int":
        classes = build.const([int(c) for c in schema.classes], np.int64, "classes")
        label = build.op("Gather", classes, index, axis=0)
    else:
        label = build.op(
            "LabelEncoder",
            index,
            domain=ML_DOMAIN,
            keys_int64s=list(range(len(schema.classes))),
            values_strings=[str(c) for c in schema.classes],
            default_string="",
        )
    if bad is not None:
        nan = build.const(np.nan, np.float32)
        rows_bad = build.op("Unsqueeze", bad, build.const([1], np.int64))
        probabilities = build.op("Where", rows_bad, nan, probabilities)
    build.op("Identity", label, output=LABEL_OUTPUT)
    build.op("Identity", probabilities, output=PROBABILITIES_OUTPUT)


def _inputs(schema: Schema) -> List[onnx.ValueInfoProto]:
    kinds = {name: TensorProto.DOUBLE for name in schema.numeric}
    kinds.update({name: TensorProto.STRING for name in schema.categorical})
    return [
        helper.make_tensor_value_info(name, kinds[name], ["rows", 1])
        for name in schema.features
    ]


def _outputs(schema: Schema) -> List[onnx.ValueInfoProto]:
    if schema.task == "regression":
        return [
            helper.make_tensor_value_info(
                PREDICTION_OUTPUT, TensorProto.FLOAT, ["rows"]
            )
        ]
    label_type = (
        TensorProto.INT64 if schema.target_kind == "int" else TensorProto.STRING
    )
    return [
        helper.make_tensor_value_info(LABEL_OUTPUT, label_type, ["rows"]),
        helper.make_tensor_value_info(
            PROBABILITIES_OUTPUT, TensorProto.FLOAT, ["rows", len(schema.classes)]
        ),
    ]


def build_raw_graph(
    network: onnx.ModelProto, schema: Schema, state: Dict[str, Any]
) -> onnx.ModelProto:
    """`network` (the engine's graph: inputs `numeric` and/or `categorical`,
    output `output`) wrapped in the feature transform and the scores."""
    _check_names(schema)
    network = onnx.compose.add_prefix(network, NETWORK_PREFIX)
    graph = network.graph
    numeric_input = categorical_input = None
    for item in graph.input:
        if item.type.tensor_type.elem_type == TensorProto.FLOAT:
            numeric_input = item.name
        else:
            categorical_input = item.name
    features = GraphBuilder(FEATURES_PREFIX)
    bad = None
    if numeric_input is not None:
        numeric = [dict(c, _position=i) for i, c in enumerate(state["numeric"])]
        bad = _numeric_block(features, dict(state, numeric=numeric), numeric_input)
    if categorical_input is not None:
        _code_block(features, state, categorical_input)
    scores = GraphBuilder(SCORES_PREFIX)
    _score_block(scores, schema, state, graph.output[0].name, bad)
    merged = helper.make_graph(
        features.nodes + list(graph.node) + scores.nodes,
        "modelsphere_raw_columns",
        _inputs(schema),
        _outputs(schema),
        initializer=features.initializers
        + list(graph.initializer)
        + scores.initializers,
        value_info=list(graph.value_info),
    )
    opsets = [o for o in network.opset_import if o.domain not in ("", ML_DOMAIN)]
    default = [o.version for o in network.opset_import if o.domain == ""]
    opsets.append(helper.make_opsetid("", max(default + [RAW_GRAPH_OPSET])))
    opsets.append(helper.make_opsetid(ML_DOMAIN, ML_OPSET))
    model = helper.make_model(
        merged,
        opset_imports=opsets,
        functions=list(network.functions),
        producer_name="modelsphere",
    )
    model.ir_version = network.ir_version
    for prop in network.metadata_props:
        if prop.key != ONNX_WEIGHTS_KEY:  # the stamp of the engine's own cache
            model.metadata_props.add(key=prop.key, value=prop.value)
    inputs = {name: "numeric" for name in schema.numeric}
    inputs.update({name: "categorical" for name in schema.categorical})
    metadata = {
        TASK_KEY: schema.task,
        INPUTS_KEY: json.dumps({name: inputs[name] for name in schema.features}),
    }
    if schema.task != "regression":
        metadata[CLASSES_KEY] = json.dumps(list(schema.classes))
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model


def frame_feeds(cleaned: Any, schema: Schema) -> Dict[str, np.ndarray]:
    """The graph's inputs from a cleaned frame (`cleaning.clean_frame`)."""
    feeds = {
        name: cleaned[name].to_numpy(dtype=np.float64, na_value=np.nan)[:, None]
        for name in schema.numeric
    }
    for name in schema.categorical:
        text = cleaned[name].to_numpy(dtype=object, na_value=MISSING_TEXT)
        feeds[name] = text[:, None]
    return feeds


class RawGraphScorer:
    """The raw-columns graph in an ONNX Runtime session: records or cleaned
    columns in, the predictor's output columns out."""

    def __init__(self, model: onnx.ModelProto, schema: Schema, threads: int):
        ort = require_module("onnxruntime", "onnx", "engine=onnx")
        self.session = onnx_session(ort, model.SerializeToString(), threads)
        self.schema = schema
        self.classes = list(schema.classes or [])

    def record_feeds(
        self, records: Sequence[Mapping[str, Any]]
    ) -> Dict[str, np.ndarray]:
        """The graph's inputs from type-checked records (numbers or None in
        numeric fields, as the API's request models guarantee): one array per
        kind, each column a contiguous row of it."""
        feeds: Dict[str, np.ndarray] = {}
        numeric = self.schema.numeric
        if numeric:
            values = np.array(
                [[record.get(name) for record in records] for name in numeric],
                dtype=np.float64,
            )  # None: NaN
            feeds.update(zip(numeric, values[:, :, None]))
        categorical = self.schema.categorical
        if categorical:
            texts = [
                [category_text(record.get(name)) or MISSING_TEXT for record in records]
                for name in categorical
            ]
            array = np.empty((len(categorical), len(records), 1), dtype=object)
            array[:, :, 0] = texts
            feeds.update(zip(categorical, array))
        return feeds

    def __call__(
        self, records: Sequence[Mapping[str, Any]]
    ) -> Optional[Dict[str, np.ndarray]]:
        """`prediction` (+ `<class>_probability`) columns; None when a row's
        score is not finite (the caller's own path then says why)."""
        try:
            outputs = self.session.run(None, self.record_feeds(records))
        except UnicodeEncodeError:  # a lone surrogate: not text ONNX can hold
            return None  # the Python path scores it as an unseen level
        scores = outputs[-1]
        if not np.isfinite(scores).all():
            return None
        if self.schema.task == "regression":
            return {PREDICTION_COLUMN: scores.astype(np.float64)}
        out = {PREDICTION_COLUMN: outputs[0]}
        for position, label in enumerate(self.classes):
            out[f"{label}{PROBABILITY_SUFFIX}"] = scores[:, position].astype(np.float64)
        return out
