"""The hostile-input matrix of docs/bad_inputs.md: one parametrised test per surface
(data_preprocessing.py, predict.py, the API), one case per row of the table.

CLI rows run the real entry point (its Hydra main, `sys.argv` patched) in this
process with `helpers.run_cli_in_process`; `test_in_process_runs_match_real_cli`
runs three of them as subprocesses too and compares. A refused input must give
exit code 2, exactly one ERROR line naming the file (and the column and row where
there is one), no traceback and no output left behind; an accepted one must give
the documented result. API rows post to the app in-process (TestClient) and must
get the documented 4xx (never a 5xx) with a JSON body whose `detail` names the
field, or a full answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hydra.core.global_hydra import GlobalHydra

from helpers import (
    compose_config,
    csv_overrides,
    make_table,
    run_cli,
    run_cli_in_process,
    wait_client_ready,
)
from modelsphere.core.devices import select_device
from modelsphere.inference.batch_predict import predict_file
from modelsphere.inference.predictor import Predictor
from modelsphere.serving.app import ServeSettings, create_app
from modelsphere.training.run import run_training

USAGE_ERROR = 2
MAX_BODY_BYTES = 1 << 20  # ServeSettings' default, as serve.max_body_bytes
LONG = 10_000  # characters in the "10,000-character strings" rows
PROBABILITIES = ["no_probability", "yes_probability"]
OUTPUT_COLUMNS = ["customer_id", "prediction", *PROBABILITIES]
TIMESTAMP = re.compile(r"^\[\d\d:\d\d:\d\d\]")
SPLIT_NAMES = ("train", "val", "test")


# ----------------------------------------------------------------------------
# Hostile files: each builder returns the bytes of a CSV


def labelled(rows: int = 120) -> pd.DataFrame:
    return make_table(rows=rows)


def unlabelled(rows: int = 120) -> pd.DataFrame:
    return make_table(rows=rows, seed=5).drop(columns="label")


def csv(frame: pd.DataFrame, **options) -> bytes:
    return frame.to_csv(index=False, **options).encode("utf-8")


def with_value(frame: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    frame = frame.astype({column: object})
    frame.loc[row, column] = value
    return frame


def latin1(frame: pd.DataFrame, row: int) -> bytes:
    """The CSV in Latin-1 with a non-ASCII level at 0-based `row` (byte 0xE9)."""
    return (
        with_value(frame, row, "plan", "caf\u00e9")
        .to_csv(index=False)
        .encode("latin-1")
    )


def bom(frame: pd.DataFrame) -> bytes:
    return b"\xef\xbb\xbf" + csv(frame)


def duplicate_age(frame: pd.DataFrame) -> bytes:
    return csv(frame.assign(age_again=frame["age"])).replace(b"age_again", b"age", 1)


def naninf(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype({"income": object})
    frame.loc[3, "income"], frame.loc[4, "income"] = "inf", "-inf"
    frame.loc[5, "income"] = "NaN"
    return frame


def huge_cardinality(rows: int = 3000) -> pd.DataFrame:
    """2,000 distinct `zip` levels (repeated, so not an identifier)."""
    frame = make_table(rows=rows)
    frame.insert(5, "zip", [f"z{i % 2000:04d}" for i in range(rows)])
    return frame


# ----------------------------------------------------------------------------
# How a CLI run is judged


@dataclass(frozen=True)
class Row:
    """One row of the matrix for one CLI: the input and what the user gets."""

    id: str
    build: Callable[[], bytes]
    error: Tuple[str, ...] = ()  # fragments of the one ERROR line; {file}: input
    forbidden: Tuple[str, ...] = ()  # must not be in the ERROR line
    logged: Tuple[str, ...] = ()  # accepted: lines the user is told
    check: Optional[Callable[..., None]] = None  # accepted: more checks
    overrides: Tuple[str, ...] = ()
    suffix: str = ".csv"

    @property
    def refused(self) -> bool:
        return bool(self.error)


def params(rows: List[Row]):
    return [pytest.param(row, id=row.id) for row in rows]


def error_lines(result) -> List[str]:
    text = result.stdout + result.stderr
    return [line for line in text.splitlines() if "[ERROR]" in line]


def assert_outcome(result, row: Row, source: Path) -> None:
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text[-4000:]
    errors = error_lines(result)
    if not row.refused:
        assert result.returncode == 0, text[-4000:]
        assert not errors, errors
        for fragment in row.logged:
            assert fragment in text, (fragment, text[-4000:])
        return
    assert result.returncode == USAGE_ERROR, text[-4000:]
    assert len(errors) == 1, text[-4000:]
    line = errors[0]
    assert len(line) < 1000, line[:300]  # one readable line, even for huge values
    for fragment in row.error:
        assert fragment.format(file=source) in line, (fragment, line)
    for fragment in row.forbidden:
        assert fragment not in line, (fragment, line)


def write_input(folder: Path, row: Row) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (row.id.replace("/", "-") + row.suffix)
    path.write_bytes(row.build())
    return path


# ----------------------------------------------------------------------------
# data_preprocessing.py


def processed(base: Path, stem: str) -> Path:
    return base / "data" / "processed" / stem


def schema_of(base: Path, stem: str) -> Dict[str, Any]:
    return json.loads((processed(base, stem) / "schema.json").read_text())


def all_rows(base: Path, stem: str) -> pd.DataFrame:
    folder = processed(base, stem)
    return pd.concat(
        [pd.read_parquet(folder / f"{split}.parquet") for split in SPLIT_NAMES],
        ignore_index=True,
    )


def bom_schema(base: Path, stem: str) -> None:
    schema = schema_of(base, stem)
    assert schema["columns"][0] == "customer_id"
    assert schema["id_column"] == "customer_id"
    assert len(all_rows(base, stem)) == 120


def notes_ignored(base: Path, stem: str) -> None:
    schema = schema_of(base, stem)
    assert schema["ignored"] == {"notes": "all values missing"}
    assert "notes" not in schema["numeric"] + schema["categorical"]


def age_stays_numeric(base: Path, stem: str) -> None:
    schema = schema_of(base, stem)
    assert "age" in schema["numeric"]
    rows = all_rows(base, stem).set_index("customer_id")
    assert np.isnan(rows.loc["C00007", "age"])  # the text became a missing value


def age_becomes_categorical(base: Path, stem: str) -> None:
    schema = schema_of(base, stem)
    assert schema["numeric"] == ["income"]
    assert schema["categorical"] == ["age", "plan", "region"]


def zip_is_categorical(base: Path, stem: str) -> None:
    assert "zip" in schema_of(base, stem)["categorical"]


def income_missing(base: Path, stem: str) -> None:
    rows = all_rows(base, stem).set_index("customer_id")
    assert rows.loc[["C00003", "C00004", "C00005"], "income"].isna().all()
    assert np.isfinite(rows["income"].dropna()).all()


def roles_by_name(base: Path, stem: str) -> None:
    schema = schema_of(base, stem)
    assert sorted(schema["numeric"]) == ["age", "income"]
    assert sorted(schema["categorical"]) == ["plan", "region"]
    expected = labelled().set_index("customer_id")
    rows = all_rows(base, stem).set_index("customer_id").loc[expected.index]
    np.testing.assert_array_equal(rows["age"], expected["age"])
    assert (rows["label"] == expected["label"]).all()


def long_level_kept(base: Path, stem: str) -> None:
    rows = all_rows(base, stem).set_index("customer_id")
    assert rows.loc["C00003", "plan"] == "x" * LONG


def long_text_missing(base: Path, stem: str) -> None:
    rows = all_rows(base, stem).set_index("customer_id")
    assert np.isnan(rows.loc["C00003", "age"])


def missing_labels_dropped(base: Path, stem: str) -> None:
    assert len(all_rows(base, stem)) == 120 - 8


PREPROCESSING_ROWS = [
    Row("empty-file", lambda: b"", error=("{file}", "is empty (0 bytes)")),
    Row(
        "header-only",
        lambda: csv(labelled().head(0)),
        error=("{file}", "has a header but no data rows"),
    ),
    Row(
        "wrong-delimiter",
        lambda: csv(labelled(), sep=";"),
        error=("{file}", "'label' not found", "is data.delimiter right?"),
    ),
    Row(
        "wrong-delimiter/ragged-row",
        lambda: csv(labelled()) + b"1,2\n",
        error=("{file}", "Expected 6 columns, got 2", "is data.delimiter right?"),
    ),
    Row(
        "wrong-encoding",
        lambda: latin1(labelled(), 5),
        error=("{file}", "is not valid utf8 text", "data.encoding=latin-1"),
    ),
    Row(
        # Past the first 8 KiB the header check has passed and pyarrow reports
        # the bad byte: the message must still say what to do.
        "wrong-encoding-late",
        lambda: latin1(labelled(600), 500),
        error=("{file}", "UTF8", "data.encoding"),
    ),
    Row(
        "byte-order-mark",
        lambda: bom(labelled()),
        check=bom_schema,
        logged=("id='customer_id'",),
    ),
    Row(
        "duplicate-column-names",
        lambda: duplicate_age(labelled()),
        error=("{file}", "duplicate column names ['age']"),
    ),
    Row(
        "missing-target",
        lambda: csv(labelled().drop(columns="label")),
        error=("{file}", "target column 'label' not found", "'customer_id'"),
    ),
    Row(
        "missing-target-values",
        lambda: csv(with_value(labelled(), slice(3, 10), "label", None)),
        check=missing_labels_dropped,
        logged=("dropped 8 row(s) with a missing target 'label'",),
    ),
    Row(
        "one-class-target",
        lambda: csv(labelled().assign(label="yes")),
        error=("target column 'label'", "single class ['yes']"),
    ),
    Row(
        "all-missing-column",
        lambda: csv(labelled().assign(notes=np.nan)),
        check=notes_ignored,
        logged=("column 'notes' ignored: all values missing",),
    ),
    Row(
        "text-in-numeric-column",
        lambda: csv(with_value(labelled(), 7, "age", "forty")),
        check=age_stays_numeric,
        logged=("age: text in a numeric column (1 value(s) treated as missing)",),
    ),
    Row(
        # Past 5% of the values (data.numeric_threshold) the column is text.
        "text-in-numeric-column/many-rows",
        lambda: csv(with_value(labelled(), slice(0, 9), "age", "forty")),
        check=age_becomes_categorical,
        logged=("1 numeric, 3 categorical",),
    ),
    Row(
        "huge-cardinality",
        lambda: csv(huge_cardinality()),
        check=zip_is_categorical,
        logged=("3 categorical",),
    ),
    Row(
        "nan-inf-in-features",
        lambda: csv(naninf(labelled())),
        check=income_missing,
        logged=("income: infinite values (2 value(s) treated as missing)",),
    ),
    Row(
        "shuffled-columns",
        lambda: csv(
            labelled()[["label", "region", "customer_id", "income", "plan", "age"]]
        ),
        check=roles_by_name,
    ),
    Row(
        "10k-character-string",
        lambda: csv(with_value(labelled(), 3, "plan", "x" * LONG)),
        check=long_level_kept,
    ),
    Row(
        "10k-character-string/numeric-column",
        lambda: csv(with_value(labelled(), 3, "age", "x" * LONG)),
        check=long_text_missing,
        logged=("age: text in a numeric column (1 value(s) treated as missing)",),
    ),
]


@pytest.mark.parametrize("row", params(PREPROCESSING_ROWS))
def test_data_preprocessing_matrix(row: Row, tmp_path, capfd):
    source = write_input(tmp_path / "raw", row)
    result = run_cli_in_process(
        capfd,
        "data_preprocessing.py",
        *csv_overrides(source, tmp_path),
        *row.overrides,
    )
    assert_outcome(result, row, source)
    stem = source.stem
    if row.refused:
        folder = tmp_path / "data" / "processed"
        left = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
        assert set(left) <= {".locks"}, left  # no split, staging or old folder
    else:
        for name in ("train.parquet", "val.parquet", "test.parquet", "schema.json"):
            assert (processed(tmp_path, stem) / name).is_file(), name
        if row.check is not None:
            row.check(tmp_path, stem)


def test_huge_cardinality_is_capped_by_max_category_levels(tmp_path):
    """The levels kept for the model: the most frequent max_category_levels."""
    source = tmp_path / "zips.csv"
    source.write_bytes(csv(huge_cardinality()))
    cfg = compose_config(
        csv_overrides(source, tmp_path)
        + [
            "train.max_epochs=1",
            "train.plot=false",
            "model.features.max_category_levels=25",
        ]
    )
    run_dir = tmp_path / "outputs" / "train" / "zips"
    run_training(cfg, run_dir)
    meta = json.loads((run_dir / "model.json").read_text())
    levels = {c["name"]: c["levels"] for c in meta["feature_state"]["categorical"]}
    assert len(levels["zip"]) == 25
    assert set(levels["plan"]) == {"basic", "plus", "premium"}


# ----------------------------------------------------------------------------
# predict.py


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, trained_runs) -> Path:
    base = tmp_path_factory.mktemp("matrix_model")
    return trained_runs.copy("binary_one_epoch", base)


@pytest.fixture(scope="module")
def baseline(run_dir, tmp_path_factory) -> pd.DataFrame:
    """predict.py's output for the clean input the predict rows start from."""
    folder = tmp_path_factory.mktemp("baseline")
    source = folder / "clean.csv"
    source.write_bytes(csv(unlabelled()))
    predictor = Predictor.from_run_dir(run_dir, select_device("cpu", amp=False), 8192)
    predict_file(predictor, source, folder / "scored.parquet", chunk_rows=65536)
    return pd.read_parquet(folder / "scored.parquet")


def assert_scored(scored: pd.DataFrame, rows: int = 120) -> None:
    assert list(scored.columns) == OUTPUT_COLUMNS
    assert len(scored) == rows
    probabilities = scored[PROBABILITIES].to_numpy()
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert scored["customer_id"].tolist() == unlabelled()["customer_id"].tolist()


def same_as_baseline(scored: pd.DataFrame, baseline: pd.DataFrame, run_dir) -> None:
    pd.testing.assert_frame_equal(scored, baseline)


def same_except_row_5(scored: pd.DataFrame, baseline: pd.DataFrame, run_dir) -> None:
    """Decoded as Latin-1, only row 5 (its `plan` is now an unseen level) differs."""
    assert_scored(scored)
    others = scored.index != 5
    pd.testing.assert_frame_equal(scored[others], baseline[others])


def scored_only(scored: pd.DataFrame, baseline: pd.DataFrame, run_dir) -> None:
    assert_scored(scored)


def unseen_share_one_code(scored: pd.DataFrame, baseline: pd.DataFrame, run_dir):
    """Two different unseen levels score as a third one would: every unseen level
    maps to the reserved code."""
    assert_scored(scored)
    predictor = Predictor.from_run_dir(run_dir, select_device("cpu", amp=False), 64)
    other = unlabelled().head(6).assign(plan="never-seen").astype(str)
    expected = predictor.predict_frame(other)
    # predict.py scores with ONNX Runtime, `expected` with PyTorch: equal to float
    # rounding, while a different level moves them by ~1e-3.
    np.testing.assert_allclose(
        scored[PROBABILITIES].to_numpy()[:6],
        expected[PROBABILITIES].to_numpy(),
        rtol=0,
        atol=1e-6,
    )
    assert not np.allclose(scored[PROBABILITIES][:6], baseline[PROBABILITIES][:6])


def unseen_levels(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[0:2, "plan"] = "platinum"
    frame.loc[3:5, "plan"] = "gold"
    return frame


def all_distinct_plans(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(plan=[f"plan-{i}" for i in range(len(frame))])


PREDICT_ROWS = [
    Row("empty-file", lambda: b"", error=("{file}", "is empty (0 bytes)")),
    Row(
        "header-only",
        lambda: csv(unlabelled().head(0)),
        error=("{file}", "has no data rows to score"),
    ),
    Row(
        "wrong-delimiter",
        lambda: csv(unlabelled(), sep=";"),
        error=(
            "{file}",
            "lacks 4 column(s) the model needs",
            "'age'",
            "is delimiter right?",
        ),
    ),
    Row(
        # predict.py's option is `encoding`, not the data group's `data.encoding`:
        # the message must name the setting this CLI accepts.
        "wrong-encoding",
        lambda: latin1(unlabelled(), 5),
        error=("{file}", "is not valid utf8 text", "set encoding (e.g. encoding="),
        forbidden=("data.encoding",),
    ),
    Row(
        "wrong-encoding-late",
        lambda: latin1(unlabelled(600), 500),
        error=("{file}", "invalid UTF8", "set encoding (e.g. encoding="),
        forbidden=("data.encoding",),
    ),
    Row(
        "latin-1-with-encoding-option",
        lambda: latin1(unlabelled(), 5),
        check=same_except_row_5,
        overrides=("encoding=latin-1",),
    ),
    Row(
        "semicolons-with-delimiter-option",
        lambda: csv(unlabelled(), sep=";"),
        check=same_as_baseline,
        overrides=("delimiter=';'",),
    ),
    Row("byte-order-mark", lambda: bom(unlabelled()), check=same_as_baseline),
    Row(
        "duplicate-column-names",
        lambda: duplicate_age(unlabelled()),
        error=("{file}", "duplicate column names ['age']"),
    ),
    Row(
        "missing-feature-column",
        lambda: csv(unlabelled().drop(columns="age")),
        error=("{file}", "lacks 1 column(s) the model needs: ['age']"),
    ),
    Row(
        "wrong-file-type",
        lambda: csv(unlabelled()),
        error=("{file}", "unsupported file type '.txt'", "use .csv or .parquet"),
        suffix=".txt",
    ),
    Row(
        "missing-target",  # the usual case: scoring needs no target
        lambda: csv(unlabelled()),
        check=same_as_baseline,
    ),
    Row(
        "all-missing-column",
        lambda: csv(unlabelled().assign(income=np.nan)),
        check=scored_only,
        logged=("every value of ['income'] is missing (in rows 1-120)",),
    ),
    Row(
        # The bad value is in the second chunk (chunk_rows=50): the first chunk had
        # been written to the temporary file, which must be gone.
        "text-in-numeric-column",
        lambda: csv(with_value(unlabelled(), 99, "age", "forty")),
        error=("{file}", "column 'age' must be numeric", "row 100", "'forty'"),
        overrides=("chunk_rows=50",),
    ),
    Row(
        "huge-cardinality",
        lambda: csv(all_distinct_plans(unlabelled())),
        check=scored_only,
    ),
    Row(
        "unseen-categories",
        lambda: csv(unseen_levels(unlabelled())),
        check=unseen_share_one_code,
    ),
    Row(
        "nan-inf-in-features",
        lambda: csv(naninf(unlabelled())),
        check=scored_only,
        logged=("income: infinite values (2 value(s) treated as missing)",),
    ),
    Row(
        "extra-columns",
        lambda: csv(
            unlabelled().assign(notes="call back", signup_year=2020, label="maybe")
        ),
        check=same_as_baseline,
        logged=(
            "ignoring 2 column(s) the model does not use: ['notes', 'signup_year']",
            "the target column 'label' is ignored",
        ),
    ),
    Row(
        "shuffled-columns",
        lambda: csv(unlabelled()[["region", "income", "customer_id", "plan", "age"]]),
        check=same_as_baseline,
    ),
    Row(
        "10k-character-string",
        lambda: csv(with_value(unlabelled(), 3, "plan", "x" * LONG)),
        check=scored_only,
    ),
    Row(
        "10k-character-string/numeric-column",
        lambda: csv(with_value(unlabelled(), 3, "age", "x" * LONG)),
        error=("{file}", "column 'age' must be numeric", "row 4", "'" + "x" * 80 + "'"),
    ),
]


def predict_overrides(run_dir: Path, source: Path, output: Path, base: Path):
    return [
        f"run_dir={run_dir}",
        f"input={source}",
        f"output={output}",
        f"paths.outputs_dir={base / 'outputs'}",
        "device=cpu",
    ]


@pytest.mark.parametrize("row", params(PREDICT_ROWS))
def test_predict_matrix(row: Row, run_dir, baseline, tmp_path, capfd):
    source = write_input(tmp_path / "in", row)
    output = tmp_path / "out" / "scored.parquet"
    result = run_cli_in_process(
        capfd,
        "predict.py",
        *predict_overrides(run_dir, source, output, tmp_path),
        *row.overrides,
    )
    assert_outcome(result, row, source)
    if row.refused:
        assert not output.exists()
        left = list(output.parent.iterdir()) if output.parent.exists() else []
        assert not left, left  # no temporary file either
    else:
        assert [p.name for p in output.parent.iterdir()] == [output.name]
        row.check(pd.read_parquet(output), baseline, run_dir)


# ----------------------------------------------------------------------------
# The in-process harness against the real CLI


PARITY = [
    ("data_preprocessing.py", PREPROCESSING_ROWS, "empty-file"),
    ("predict.py", PREDICT_ROWS, "text-in-numeric-column"),
    ("predict.py", PREDICT_ROWS, "extra-columns"),
]


def without_time(lines: List[str]) -> List[str]:
    return [TIMESTAMP.sub("", line) for line in lines]


@pytest.mark.parametrize(
    "script, rows, row_id", PARITY, ids=[f"{s}:{r}" for s, _, r in PARITY]
)
def test_in_process_runs_match_real_cli(script, rows, row_id, run_dir, tmp_path, capfd):
    row = next(row for row in rows if row.id == row_id)
    results = []
    for how in ("in_process", "subprocess"):
        base = tmp_path / how
        source = write_input(base / "in", row)
        if script == "predict.py":
            output = base / "out" / "scored.parquet"
            overrides = predict_overrides(run_dir, source, output, base)
        else:
            overrides = csv_overrides(source, base)
        overrides = [*overrides, *row.overrides]
        if how == "in_process":
            result = run_cli_in_process(capfd, script, *overrides)
        else:
            result = run_cli(script, *overrides)
        assert_outcome(result, row, source)
        results.append((result, base))
    (inner, inner_base), (outer, outer_base) = results
    assert inner.returncode == outer.returncode
    assert without_time(error_lines(inner)) == [
        line.replace(str(outer_base), str(inner_base))
        for line in without_time(error_lines(outer))
    ]
    for fragment in row.logged:
        assert fragment in inner.stdout and fragment in outer.stdout
    if script == "predict.py" and not row.refused:
        pd.testing.assert_frame_equal(
            pd.read_parquet(inner_base / "out" / "scored.parquet"),
            pd.read_parquet(outer_base / "out" / "scored.parquet"),
        )


def test_in_process_runs_leave_no_hydra_or_logging_state(tmp_path, capfd):
    """After a run, compose works again (GlobalHydra cleared), the root logger
    has its handlers back, and the next run's output and log file hold only its
    own lines (no handler of the previous run left writing)."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    first = write_input(tmp_path / "first", PREPROCESSING_ROWS[0])
    second = write_input(tmp_path / "second", PREPROCESSING_ROWS[0])
    one = run_cli_in_process(
        capfd, "data_preprocessing.py", *csv_overrides(first, tmp_path / "first")
    )
    assert not GlobalHydra.instance().is_initialized()
    assert root.handlers == handlers
    compose_config(["data=csv", "data.path=x.csv", "data.target=y"])
    two = run_cli_in_process(
        capfd, "data_preprocessing.py", *csv_overrides(second, tmp_path / "second")
    )
    assert not GlobalHydra.instance().is_initialized()
    assert root.handlers == handlers
    assert len(error_lines(one)) == len(error_lines(two)) == 1
    assert str(first) in error_lines(one)[0] and str(second) in error_lines(two)[0]
    assert str(first) not in two.stdout
    logs = {
        name: next((tmp_path / name / "outputs").rglob("data_preprocessing.log"))
        for name in ("first", "second")
    }
    assert str(second) not in logs["first"].read_text()
    assert str(second) in logs["second"].read_text()


# ----------------------------------------------------------------------------
# The API


@pytest.fixture(scope="module")
def client(run_dir):
    app = create_app(ServeSettings(run_dir=str(run_dir), engine="torch"))
    with TestClient(app) as client:
        wait_client_ready(client)
        yield client


def records(rows: int = 3) -> List[Dict[str, Any]]:
    return json.loads(unlabelled(rows).to_json(orient="records"))


def oip_inputs(recs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    numeric = {"age", "income"}
    return [
        {
            "name": name,
            "shape": [len(recs)],
            "datatype": "FP64" if name in numeric else "BYTES",
            "data": [record[name] for record in recs],
        }
        for name in ("age", "income", "plan", "region")
    ]


JSON = {"content-type": "application/json"}
PREDICT = "/predict"
INFER = "/v2/models/tiny_binary/infer"


def body(payload: Any, encoding: str = "utf-8") -> bytes:
    return json.dumps(payload, ensure_ascii=False, allow_nan=True).encode(encoding)


def edit(row: int, **fields) -> Dict[str, Any]:
    recs = records()
    recs[row].update(fields)
    return {"records": recs}


def streamed(extra: int) -> Callable[[], Any]:
    """A chunked body (no Content-Length) MAX_BODY_BYTES + `extra` bytes long."""

    def chunks():
        yield b'{"records": ['
        left = MAX_BODY_BYTES + extra
        while left > 0:
            size = min(left, 1 << 16)
            yield b" " * size
            left -= size
        yield b"]}"

    return chunks


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@dataclass(frozen=True)
class ApiRow:
    """One request and the answer the matrix documents for it."""

    id: str
    content: Callable[[], Any]  # bytes, or a generator of chunks
    status: int
    loc: Optional[List[Any]] = None  # a `detail` entry's loc starts with this
    error: str = ""  # fragment of the "error" message
    headers: Tuple[Tuple[str, str], ...] = tuple(JSON.items())
    path: str = PREDICT
    rows: int = 3  # 200: predictions expected


API_ROWS = [
    ApiRow("empty-file", lambda: b"", 422, ["body"], "Field required"),
    ApiRow(
        "header-only",
        lambda: body({"records": []}),
        422,
        ["body", "records"],
        "at least 1 item",
    ),
    ApiRow(
        "wrong-delimiter",  # a CSV posted as JSON
        lambda: csv(unlabelled(3)),
        422,
        ["body"],
        "JSON decode error",
    ),
    ApiRow(
        "wrong-encoding",  # Latin-1 bytes where JSON must be UTF-8: no field to name
        lambda: body(edit(0, plan="caf\u00e9"), "latin-1"),
        400,
        error="request body is not valid UTF-8",
    ),
    ApiRow(
        "byte-order-mark",
        lambda: b"\xef\xbb\xbf" + body({"records": records()}),
        200,
    ),
    ApiRow(
        "duplicate-column-names",  # one OIP input tensor per column
        lambda: body({"inputs": oip_inputs(records()) + oip_inputs(records())[:1]}),
        422,
        ["body", "inputs", 4, "name"],
        "given twice",
        path=INFER,
    ),
    ApiRow(
        # JSON objects with a repeated key: the parser keeps the last value.
        "duplicate-json-keys",
        lambda: body({"records": records()}).replace(
            b'"age":', b'"age": "old", "age":', 1
        ),
        200,
    ),
    ApiRow(
        "missing-feature-column",
        lambda: body(
            {"records": [{k: v for k, v in r.items() if k != "age"} for r in records()]}
        ),
        422,
        ["body", "records", 0, "age"],
        "Field required",
    ),
    ApiRow("missing-target", lambda: body({"records": records()}), 200),
    ApiRow(
        "all-missing-column",
        lambda: body({"records": [dict(r, income=None) for r in records()]}),
        200,
    ),
    ApiRow(
        "text-in-numeric-column",
        lambda: body(edit(1, age="forty")),
        422,
        ["body", "records", 1, "age"],
        "valid number",
    ),
    ApiRow(
        "huge-cardinality",
        lambda: body(
            {"records": [dict(records(1)[0], plan=f"plan-{i}") for i in range(1000)]}
        ),
        200,
        rows=1000,
    ),
    ApiRow("unseen-categories", lambda: body(edit(0, plan="platinum")), 200),
    ApiRow(
        "nan-inf-in-features/NaN",
        lambda: body(edit(2, income=float("nan"))),
        422,
        ["body", "records", 2, "income"],
        "finite number",
    ),
    ApiRow(
        "nan-inf-in-features/Infinity",
        lambda: body(edit(0, age=float("-inf"))),
        422,
        ["body", "records", 0, "age"],
        "finite number",
    ),
    ApiRow(
        "nan-inf-in-features/1e999",
        lambda: body(edit(0, age=1)).replace(b'"age": 1', b'"age": 1e999', 1),
        422,
        ["body", "records", 0, "age"],
        "finite number",
    ),
    ApiRow(
        "extra-columns",
        lambda: body(edit(0, shoe_size=42)),
        422,
        ["body", "records", 0, "shoe_size"],
        "Extra inputs are not permitted",
    ),
    ApiRow(
        "extra-columns/target",
        lambda: body(edit(0, label="yes")),
        422,
        ["body", "records", 0, "label"],
        "Extra inputs are not permitted",
    ),
    ApiRow(
        "shuffled-columns",
        lambda: body({"records": [dict(reversed(r.items())) for r in records()]}),
        200,
    ),
    ApiRow(
        "shuffled-columns/oip",
        lambda: body({"inputs": oip_inputs(records())[::-1]}),
        200,
        path=INFER,
    ),
    ApiRow("10k-character-string", lambda: body(edit(0, plan="x" * LONG)), 200),
    ApiRow(
        "10k-character-string/numeric-column",
        lambda: body(edit(0, age="9" * LONG)),
        422,
        ["body", "records", 0, "age"],
        "valid number",
    ),
    ApiRow(
        # JSON numbers past Python's 4,300-digit limit fail while parsing: a 4xx,
        # but without a field path.
        "10k-character-string/10k-digit-number",
        lambda: body(edit(0, age=1)).replace(b'"age": 1', b'"age": ' + b"9" * LONG, 1),
        400,
        error="a number in the request has too many digits",
    ),
    ApiRow(
        "10k-character-field-name",
        lambda: body(edit(0, **{"k" * LONG: 1})),
        422,
        ["body", "records", 0, "k" * LONG],
        "Extra inputs",
    ),
    ApiRow(
        "1gb-body/content-length",  # refused on the header, nothing read
        lambda: b'{"records": []}',
        413,
        error="serve.max_body_bytes",
        headers=tuple(JSON.items()) + (("content-length", str(1 << 30)),),
    ),
    ApiRow(
        "1gb-body/streamed",  # chunked, no Content-Length: refused while reading
        streamed(2 << 20),
        413,
        error="serve.max_body_bytes",
    ),
    ApiRow(
        "deeply-nested-json",
        lambda: nested(100_000),
        400,
        error="nested too deeply",
    ),
    ApiRow(
        "deeply-nested-json/in-a-field",
        lambda: body(edit(0, plan=json.loads(nested(50)))),
        422,
        ["body", "records", 0, "plan"],
        "valid string",
    ),
    ApiRow(
        "wrong-content-type",
        lambda: body({"records": records()}),
        415,
        error="content-type must be application/json, got 'text/csv'",
        headers=(("content-type", "text/csv"),),
    ),
    ApiRow(
        "wrong-content-type/none",
        lambda: body({"records": records()}),
        415,
        error="got 'none'",
        headers=(),
    ),
]


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id) for r in API_ROWS])
def test_api_matrix(row: ApiRow, client):
    content = row.content()
    if callable(content):
        content = content()
    response = client.post(row.path, content=content, headers=dict(row.headers))
    assert response.status_code < 500, response.text[:500]
    assert response.status_code == row.status, response.text[:500]
    payload = response.json()
    if row.status == 200:
        if row.path == PREDICT:
            predictions = payload["predictions"]
            assert len(predictions) == row.rows
            for prediction in predictions:
                total = sum(prediction["probabilities"].values())
                assert total == pytest.approx(1.0, abs=1e-6)
        else:
            outputs = {out["name"]: out for out in payload["outputs"]}
            assert outputs["prediction"]["shape"] == [row.rows]
        return
    assert isinstance(payload["error"], str) and row.error in payload["error"]
    assert isinstance(payload["detail"], list)
    if row.loc is not None:
        locs = [item["loc"][: len(row.loc)] for item in payload["detail"]]
        assert row.loc in locs, locs


def test_api_streamed_1gb_body_is_refused_after_the_limit(run_dir):
    """A chunked 1 GiB body, produced lazily: the service stops reading just past
    serve.max_body_bytes and answers 413 (nothing like 1 GiB is ever held)."""
    app = create_app(ServeSettings(run_dir=str(run_dir), engine="torch"))
    chunk = b" " * (1 << 16)
    total = 1 << 30
    pulled = 0
    sent: List[dict] = []

    async def receive():
        nonlocal pulled
        if pulled == 0:
            pulled += 1
            return {"type": "http.request", "body": b"[", "more_body": True}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": pulled < total}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PREDICT,
        "raw_path": PREDICT.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    assert pulled <= MAX_BODY_BYTES + 2 * len(chunk)
    start = next(m for m in sent if m["type"] == "http.response.start")
    answer = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert start["status"] == 413, answer
    assert "serve.max_body_bytes" in answer["error"]
