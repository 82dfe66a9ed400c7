"""The raw-columns ONNX graph (inference/raw_graph.py): raw feature columns in,
labels and probabilities (or the prediction) out, equal to the predictor, on
ordinary and hostile rows; the API's records scored by one run of it; written by
export.py only after it agreed with the predictor."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest

from helpers import make_table, run_cli_in_process
from modelsphere.core.devices import select_device
from modelsphere.core.errors import ModelSphereError, RowError
from modelsphere.inference import raw_export
from modelsphere.inference.predictor import Predictor
from modelsphere.inference.raw_graph import build_raw_graph

CPU = select_device("cpu", False, "auto")
TOLERANCE = 1e-5
# task of each recipe (tests/helpers/trained_runs.py): string, int and value
# targets; quantile and standard scaling; discrete numeric columns
RECIPES = {
    "binary": "binary",
    "multiclass": "multiclass",
    "regression": "regression",
    "binary_standard": "binary",
    "binary_levels": "binary",
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained_runs):
    base = tmp_path_factory.mktemp("raw_graph")
    return {recipe: trained_runs.copy(recipe, base) for recipe in RECIPES}


def hostile_rows(task: str) -> pd.DataFrame:
    """Ordinary rows, then unseen levels, empty strings, NaN, +-inf and values far
    outside the train range, in every feature column."""
    frame = make_table(rows=48, task=task, seed=3).drop(columns=["label"])
    frame["plan"] = frame["plan"].astype(object)
    frame["region"] = frame["region"].astype(object)
    hostile = [
        {"plan": "never-seen", "region": "", "age": np.nan, "income": np.inf},
        {"plan": "", "region": "BASIC", "age": -np.inf, "income": np.nan},
        {"plan": None, "region": None, "age": 1e30, "income": -1e30},
        {"plan": "premium", "region": "south", "age": -1e30, "income": 1e12},
        {"plan": "basic", "region": "north", "age": 18.0, "income": 0.0},
        {"plan": "plus", "region": "zzz", "age": 79.0, "income": -5.0},
    ]
    for position, values in enumerate(hostile):
        for column, value in values.items():
            frame.at[position, column] = value
    return frame


def contract_feeds(frame: pd.DataFrame, predictor: Predictor):
    """The graph's inputs as a user's runtime would build them from the columns
    (the documented contract, not this project's code): [rows, 1] doubles with
    NaN/inf as they come, category text with "" for a missing value."""
    feeds = {}
    for name in predictor.schema.numeric:
        feeds[name] = frame[name].astype(float).to_numpy()[:, None]
    for name in predictor.schema.categorical:
        text = ["" if pd.isna(value) else str(value) for value in frame[name]]
        feeds[name] = np.array(text, dtype=object)[:, None]
    return feeds


def bare_session(predictor: Predictor):
    graph = predictor.raw_graph().SerializeToString()
    return ort.InferenceSession(graph, providers=["CPUExecutionProvider"])


def assert_same_scores(outputs, expected: pd.DataFrame, predictor: Predictor):
    if predictor.task == "regression":
        np.testing.assert_allclose(
            outputs[0], expected["prediction"], rtol=TOLERANCE, atol=0
        )
        return
    labels, probabilities = outputs
    assert list(labels) == list(expected["prediction"])
    columns = [f"{label}_probability" for label in predictor.classes]
    np.testing.assert_allclose(
        probabilities, expected[columns].to_numpy(), rtol=0, atol=TOLERANCE
    )


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_bare_session_scores_raw_columns_as_the_predictor_does(runs, recipe):
    predictor = Predictor.from_run_dir(runs[recipe], CPU, 64, engine="onnx")
    frame = hostile_rows(RECIPES[recipe])
    expected = predictor.predict_frame(frame)
    outputs = bare_session(predictor).run(None, contract_feeds(frame, predictor))
    assert_same_scores(outputs, expected, predictor)


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_graphs_model_inputs_are_the_feature_transforms(runs, recipe):
    """Inside the graph, the network's inputs equal the Python transform's arrays:
    category and discrete-value codes exactly (the reserved missing and unseen
    codes included), numeric inputs to float32 rounding."""
    predictor = Predictor.from_run_dir(runs[recipe], CPU, 64, engine="onnx")
    model = predictor.raw_graph()
    inputs = [
        node.output[0]
        for node in model.graph.node
        if node.output[0] in ("network/numeric", "network/categorical")
    ]
    for name in inputs:
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    frame = hostile_rows(RECIPES[recipe])
    got = dict(
        zip(
            [item.name for item in session.get_outputs()],
            session.run(None, contract_feeds(frame, predictor)),
        )
    )
    arrays = predictor.transform.transform(predictor.prepare(frame, "rows"), len(frame))
    np.testing.assert_array_equal(got["network/categorical"], arrays.categorical)
    np.testing.assert_allclose(
        got["network/numeric"], arrays.numeric, rtol=1e-6, atol=1e-6
    )


def constant_network(width: int, codes: int, outputs: int) -> onnx.ModelProto:
    """A stand-in for the network whose outputs are 0 whatever its inputs."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node(
            "Cast", ["categorical"], ["float_codes"], to=TensorProto.FLOAT
        ),
        helper.make_node("ReduceSum", ["float_codes", "axis"], ["sums"], keepdims=1),
        helper.make_node("Mul", ["sums", "zero"], ["column"]),
        helper.make_node("Tile", ["column", "repeats"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "constant",
        [
            helper.make_tensor_value_info(
                "numeric", TensorProto.FLOAT, ["rows", width]
            ),
            helper.make_tensor_value_info(
                "categorical", TensorProto.INT64, ["rows", codes]
            ),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["rows", outputs])],
        initializer=[
            onnx.numpy_helper.from_array(np.array([1], np.int64), "axis"),
            onnx.numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            onnx.numpy_helper.from_array(np.array([1, outputs], np.int64), "repeats"),
        ],
    )
    return onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 20)]
    )


@pytest.mark.parametrize("recipe", ["binary", "multiclass", "regression"])
def test_rows_beyond_float32_get_nan_scores_whatever_the_network_makes_of_them(
    runs, recipe
):
    """Standard scaling of 1e300 leaves float32: the graph marks the row NaN even
    where the network's output would look finite (here: always 0)."""
    predictor = Predictor.from_run_dir(runs[recipe], CPU, 64)
    state = copy.deepcopy(predictor.feature_state)
    for column in state["numeric"]:
        column.update(scaling="standard", mean=0.0, std=1.0)
    n_outputs = 1 if predictor.task != "multiclass" else len(predictor.classes)
    network = constant_network(
        predictor.artifact.spec.n_numeric,
        len(predictor.artifact.spec.cardinalities),
        n_outputs,
    )
    model = build_raw_graph(network, predictor.schema, state)
    session = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    frame = make_table(rows=3, task=RECIPES[recipe], seed=1).drop(columns=["label"])
    frame["income"] = [1.0, 1e300, 2.0]
    scores = session.run(None, contract_feeds(frame, predictor))[-1]
    rows = scores.reshape(len(frame), -1)
    assert np.isnan(rows[1]).all()
    assert np.isfinite(rows[[0, 2]]).all()


def records_of(frame: pd.DataFrame):
    """The API's type-checked records: numbers or None, text or None."""
    return [
        {
            name: None if isinstance(value, float) and np.isnan(value) else value
            for name, value in row.items()
        }
        for row in frame.to_dict("records")
    ]


@pytest.mark.parametrize("recipe", RECIPES)
def test_records_are_scored_by_one_run_of_the_graph(runs, recipe, monkeypatch):
    predictor = Predictor.from_run_dir(runs[recipe], CPU, 64, engine="onnx")
    frame = hostile_rows(RECIPES[recipe])
    expected = predictor.predict_frame(frame)
    predictor.warm_up()  # builds the graph, as the API does before serving

    def not_called(*args, **kwargs):
        raise AssertionError("the per-column Python path ran")

    monkeypatch.setattr(predictor.transform, "transform", not_called)
    monkeypatch.setattr(predictor, "engine", not_called)
    out = predictor.predict_records(records_of(frame))
    for column in predictor.output_columns():
        if column == "prediction" and predictor.task != "regression":
            assert list(out[column]) == list(expected[column])
        else:
            np.testing.assert_allclose(
                out[column], expected[column], rtol=TOLERANCE, atol=TOLERANCE
            )


def test_a_category_text_onnx_cannot_hold_is_scored_as_unseen(runs):
    """A lone surrogate (JSON allows the escape; the API's request models let it
    through in category fields) cannot become an ONNX string: the record falls
    back to the Python path, which scores it as an unseen level, as before."""
    predictor = Predictor.from_run_dir(runs["binary"], CPU, 64, engine="onnx")
    record = records_of(hostile_rows("binary").iloc[[10]])[0]
    surrogate = predictor.predict_records([dict(record, plan="\ud800")])
    unseen = predictor.predict_records([dict(record, plan="never-seen")])
    assert list(surrogate["prediction"]) == list(unseen["prediction"])
    np.testing.assert_allclose(surrogate["yes_probability"], unseen["yes_probability"])


def test_export_refuses_to_overwrite_the_engines_network_graph(runs, tmp_path, capfd):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["binary"], run_dir)
    Predictor.from_run_dir(run_dir, CPU, 64, engine="onnx")  # caches model.onnx
    cached = (run_dir / "model.onnx").read_bytes()
    result = run_cli_in_process(
        capfd,
        "export.py",
        f"run_dir={run_dir}",
        f"output={run_dir / 'model.onnx'}",
        f"paths.outputs_dir={tmp_path / 'outputs'}",
    )
    said = result.stdout + result.stderr
    assert result.returncode == 2 and "network graph" in said
    assert "Traceback" not in said
    assert (run_dir / "model.onnx").read_bytes() == cached


def test_a_large_request_is_scored_by_the_python_transform(runs, monkeypatch):
    """Above RECORDS_GRAPH_MAX_ROWS records the Python transform + network graph
    is faster (benchmarks/results/raw_graph.md): it scores them, same outputs."""
    from modelsphere.inference.predictor import RECORDS_GRAPH_MAX_ROWS

    predictor = Predictor.from_run_dir(runs["binary"], CPU, 64, engine="onnx")
    frame = make_table(rows=RECORDS_GRAPH_MAX_ROWS + 1, seed=5).drop(columns="label")
    expected = predictor.predict_frame(frame)
    predictor.warm_up()

    def not_called(records):
        raise AssertionError("the graph scored a large request")

    monkeypatch.setattr(predictor, "raw_scorer", not_called)
    out = predictor.predict_records(records_of(frame))
    assert list(out["prediction"]) == list(expected["prediction"])
    np.testing.assert_allclose(out["yes_probability"], expected["yes_probability"])


def test_a_row_the_model_cannot_score_is_nan_in_the_graph_and_refused_by_name(runs):
    predictor = Predictor.from_run_dir(runs["binary_standard"], CPU, 64, engine="onnx")
    frame = hostile_rows("binary").head(3)
    frame.at[1, "income"] = 1e300  # standard-scaled: beyond float32
    _, probabilities = bare_session(predictor).run(
        None, contract_feeds(frame, predictor)
    )
    assert np.isnan(probabilities[1]).all()
    assert np.isfinite(probabilities[[0, 2]]).all()
    with pytest.raises(RowError, match="income") as caught:
        predictor.predict_records(records_of(frame))
    assert caught.value.positions == [1]


def test_export_writes_a_graph_any_onnx_runtime_can_serve(runs, tmp_path, capfd):
    output = tmp_path / "churn.onnx"
    result = run_cli_in_process(
        capfd,
        "export.py",
        f"run_dir={runs['multiclass']}",
        f"output={output}",
        f"paths.outputs_dir={tmp_path / 'outputs'}",
    )
    assert result.returncode == 0, result.stderr
    model = onnx.load(str(output))
    predictor = Predictor.from_run_dir(runs["multiclass"], CPU, 64)
    assert [item.name for item in model.graph.input] == predictor.schema.features
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert json.loads(metadata["modelsphere.classes"]) == predictor.classes
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    frame = hostile_rows("multiclass")
    outputs = session.run(None, contract_feeds(frame, predictor))
    assert_same_scores(outputs, predictor.predict_frame(frame), predictor)
    summary = next((tmp_path / "outputs").rglob(raw_export.EXPORT_SUMMARY_FILE))
    assert json.loads(summary.read_text())["check"]["rows"] > 0


def test_export_writes_nothing_when_the_graph_disagrees(runs, tmp_path, monkeypatch):
    """A graph built from other fitted quantiles is caught by the check; the file
    already at the output is left as it was."""
    built = Predictor.raw_graph

    def shifted(self):
        state = copy.deepcopy(self.feature_state)
        for column in state["numeric"]:
            column["quantiles"] = [value + 5.0 for value in column["quantiles"]]
        network = onnx.load_model_from_string(self.engine.graph)
        built(self)  # the real build still runs
        return build_raw_graph(network, self.schema, state)

    monkeypatch.setattr(Predictor, "raw_graph", shifted)
    output = tmp_path / "kept.onnx"
    output.write_bytes(b"an earlier export")
    cfg = _export_config(runs["binary"], output, tmp_path)
    with pytest.raises(ModelSphereError, match="disagrees with the predictor"):
        raw_export.run_export(cfg, tmp_path / "job")
    assert output.read_bytes() == b"an earlier export"


def test_export_refuses_an_output_that_is_not_onnx(runs, tmp_path, capfd):
    result = run_cli_in_process(
        capfd,
        "export.py",
        f"run_dir={runs['binary']}",
        f"output={tmp_path / 'model.csv'}",
        f"paths.outputs_dir={tmp_path / 'outputs'}",
    )
    said = result.stdout + result.stderr
    assert result.returncode == 2
    assert "model.csv" in said and ".onnx" in said
    assert "Traceback" not in said
    assert not (tmp_path / "model.csv").exists()


def _export_config(run_dir, output, tmp_path):
    from helpers import compose_config

    return compose_config(
        [
            f"run_dir={run_dir}",
            f"output={output}",
            f"paths.outputs_dir={tmp_path / 'outputs'}",
        ],
        config_name="export",
    )


def test_the_records_graph_is_built_once_and_only_for_records(runs, monkeypatch):
    """predict.py scores in bulk with the Python transform: it never pays for the
    graph; the API's warm-up builds it once."""
    from modelsphere.inference import raw_graph

    builds = []
    real_build = raw_graph.build_raw_graph

    def counted(*args):
        builds.append(1)
        return real_build(*args)

    monkeypatch.setattr(raw_graph, "build_raw_graph", counted)
    predictor = Predictor.from_run_dir(runs["binary"], CPU, 64, engine="onnx")
    predictor.predict_frame(hostile_rows("binary"))
    assert builds == []
    predictor.warm_up()
    predictor.predict_records(records_of(hostile_rows("binary")))
    assert builds == [1]
