"""Splitting and prepare_data (in-process) on tiny CSVs in tmp_path."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from helpers import compose_config, csv_overrides, make_table
from modelsphere.core.errors import ModelSphereError
from modelsphere.data.preprocessing import (
    DROPPED,
    TEST,
    TRAIN,
    VAL,
    assign_splits,
    load_processed,
    prepare_data,
)
from modelsphere.data.splits import SPLITS, load_split
from modelsphere.training.run import run_preprocessing

ROWS = 240
MISSING_TARGET_ROWS = [3, 50, 51, 199]


# ----------------------------------------------------------------------------
# assign_splits


def test_assign_splits_is_deterministic_for_a_seed():
    strata = np.repeat([0, 1, 2], [50, 30, 20]).astype(np.int32)
    first = assign_splits(100, strata, 0.2, 0.1, seed=3)
    again = assign_splits(100, strata, 0.2, 0.1, seed=3)
    other = assign_splits(100, strata, 0.2, 0.1, seed=4)
    assert first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_assign_splits_without_strata_respects_fractions():
    assignment = assign_splits(1000, None, 0.15, 0.25, seed=0)
    counts = np.bincount(assignment, minlength=3)
    assert counts.tolist() == [600, 150, 250]
    # Rows are shuffled, not taken in order.
    assert (assignment[:250] == TEST).sum() < 150


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_assign_splits_is_stratified(seed):
    sizes = {0: 101, 1: 47, 2: 12}
    rng = np.random.default_rng(seed)
    strata = rng.permutation(np.repeat(list(sizes), list(sizes.values())))
    assignment = assign_splits(len(strata), strata.astype(np.int32), 0.2, 0.15, seed)
    for label, size in sizes.items():
        rows = assignment[strata == label]
        assert (rows == TEST).sum() == round(size * 0.15)
        assert (rows == VAL).sum() == round(size * 0.2)
        assert (rows == TRAIN).sum() == size - round(size * 0.15) - round(size * 0.2)


def test_assign_splits_drops_negative_strata():
    strata = np.array([0, 1, -1, 0, 1, -1, 0, 1, 0, 1] * 10, dtype=np.int32)
    assignment = assign_splits(len(strata), strata, 0.2, 0.2, seed=0)
    assert (assignment[strata < 0] == DROPPED).all()
    assert (assignment[strata >= 0] != DROPPED).all()
    kept = assignment[strata >= 0]
    assert np.bincount(kept, minlength=3).tolist() == [48, 16, 16]


# ----------------------------------------------------------------------------
# prepare_data


def write_table(path: Path, seed: int = 0, rows: int = ROWS) -> pd.DataFrame:
    frame = make_table(rows=rows, seed=seed)
    frame.loc[MISSING_TARGET_ROWS, "label"] = None
    frame.to_csv(path, index=False)
    return frame


def prepare(path: Path, tmp_path: Path, *extra: str, force: bool = False):
    cfg = compose_config(csv_overrides(path, tmp_path) + list(extra))
    return prepare_data(cfg.data, cfg.paths.data_dir, force=force), cfg


@pytest.fixture
def prepared(tmp_path):
    path = tmp_path / "tiny.csv"
    frame = write_table(path)
    processed, cfg = prepare(path, tmp_path)
    return processed, cfg, frame, path


def read_all(processed):
    return {split: load_split(processed, split) for split in SPLITS}


def test_prepare_writes_zstd_parquet_splits_and_metadata(prepared):
    processed, _, _, _ = prepared
    names = {p.name for p in processed.directory.iterdir()}
    assert {f"{split}.parquet" for split in SPLITS} <= names
    assert {"schema.json", "profile.json", "profile.md", "manifest.json"} <= names
    for split in SPLITS:
        meta = pq.ParquetFile(processed.split_path(split)).metadata
        assert meta.num_rows == processed.manifest["splits"][split]["rows"]
        for group in range(meta.num_row_groups):
            for column in range(meta.num_columns):
                assert meta.row_group(group).column(column).compression == "ZSTD"
    assert processed.format == "parquet"
    assert load_processed(processed.directory).schema == processed.schema


def test_prepare_schema_and_types(prepared):
    processed, _, _, _ = prepared
    schema = processed.schema
    assert schema.id_column == "customer_id"
    assert schema.numeric == ["age", "income"]
    assert schema.categorical == ["plan", "region"]
    assert (schema.task, schema.classes) == ("binary", ["no", "yes"])
    train = load_split(processed, "train")
    assert list(train.columns) == ["customer_id", "age", "income", "plan", "region"] + [
        "label"
    ]
    assert train["age"].dtype == np.float64
    assert str(train["plan"].dtype) == "string"
    assert str(train["label"].dtype) == "string"
    saved = json.loads((processed.directory / "schema.json").read_text())
    assert saved == schema.to_dict()


def test_split_rows_sum_to_input_rows_minus_missing_targets(prepared):
    processed, _, frame, _ = prepared
    splits = read_all(processed)
    sizes = {split: len(rows) for split, rows in splits.items()}
    assert sum(sizes.values()) == ROWS - len(MISSING_TARGET_ROWS)
    assert sizes == processed.manifest["rows"]
    assert processed.manifest["raw"]["rows"] == ROWS
    profile = json.loads((processed.directory / "profile.json").read_text())
    assert profile["rows"] == ROWS
    assert profile["dropped_missing_target"] == len(MISSING_TARGET_ROWS)
    assert profile["split_rows"] == sizes
    # Share of each split close to the configured fractions (0.7/0.15/0.15).
    assert sizes["test"] == pytest.approx(0.15 * sum(sizes.values()), abs=2)
    assert sizes["val"] == pytest.approx(0.15 * sum(sizes.values()), abs=2)


def test_no_row_in_two_splits_and_values_are_kept(prepared):
    processed, _, frame, _ = prepared
    splits = read_all(processed)
    ids = [set(rows["customer_id"]) for rows in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    dropped = set(frame.loc[MISSING_TARGET_ROWS, "customer_id"])
    assert set().union(*ids) == set(frame["customer_id"]) - dropped
    together = pd.concat(splits.values()).set_index("customer_id")
    original = frame.set_index("customer_id").loc[together.index]
    np.testing.assert_array_equal(together["age"], original["age"])
    np.testing.assert_allclose(together["income"], original["income"])
    assert (together["label"] == original["label"]).all()
    region = together["region"].astype(object).where(together["region"].notna())
    assert region.equals(
        original["region"].astype(object).where(original["region"].notna())
    )


def test_splits_are_stratified(prepared):
    processed, _, _, _ = prepared
    splits = read_all(processed)
    overall = pd.concat(splits.values())["label"].value_counts(normalize=True)
    for rows in splits.values():
        share = rows["label"].value_counts(normalize=True)
        assert share["yes"] == pytest.approx(overall["yes"], abs=0.03)
    profile = json.loads((processed.directory / "profile.json").read_text())
    for split, rows in splits.items():
        counts = rows["label"].value_counts().to_dict()
        assert profile["class_counts"][split] == counts


def test_second_call_does_not_rebuild(prepared, caplog):
    processed, cfg, _, _ = prepared
    manifest = processed.directory / "manifest.json"
    before = manifest.stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="modelsphere")
    again = prepare_data(cfg.data, cfg.paths.data_dir)
    assert manifest.stat().st_mtime_ns == before
    assert "up to date" in caplog.text
    assert "scanning" not in caplog.text
    assert again.manifest == processed.manifest


def test_changing_the_split_seed_rebuilds(prepared, tmp_path, caplog):
    processed, _, _, path = prepared
    before = set(load_split(processed, "test")["customer_id"])
    caplog.set_level(logging.INFO, logger="modelsphere")
    rebuilt, _ = prepare(path, tmp_path, "data.split.seed=1")
    assert "data config changed" in caplog.text
    assert rebuilt.directory == processed.directory
    assert rebuilt.manifest["config_sha256"] != processed.manifest["config_sha256"]
    assert set(load_split(rebuilt, "test")["customer_id"]) != before


def test_changing_the_raw_file_rebuilds(prepared, tmp_path, caplog):
    processed, _, _, path = prepared
    new_frame = write_table(path, seed=1)
    caplog.set_level(logging.INFO, logger="modelsphere")
    rebuilt, _ = prepare(path, tmp_path)
    assert "raw file changed" in caplog.text
    assert rebuilt.manifest["raw"]["sha256"] != processed.manifest["raw"]["sha256"]
    train = load_split(rebuilt, "train").set_index("customer_id")
    expected = new_frame.set_index("customer_id").loc[train.index, "age"]
    np.testing.assert_array_equal(train["age"], expected)


def test_changed_preprocessing_code_rebuilds(prepared, tmp_path, caplog, monkeypatch):
    from modelsphere.data import preprocessing

    processed, _, _, path = prepared
    assert processed.manifest["code_sha256"] == preprocessing.code_fingerprint()
    monkeypatch.setattr(preprocessing, "code_fingerprint", lambda: "a newer rule")
    caplog.set_level(logging.INFO, logger="modelsphere")
    rebuilt, _ = prepare(path, tmp_path)
    assert "preprocessing code changed" in caplog.text
    assert rebuilt.manifest["code_sha256"] == "a newer rule"


def test_missing_split_file_rebuilds(prepared, tmp_path):
    processed, _, _, path = prepared
    processed.split_path("val").unlink()
    rebuilt, _ = prepare(path, tmp_path)
    assert rebuilt.split_path("val").is_file()


def test_force_rebuilds(prepared):
    processed, cfg, _, _ = prepared
    manifest = processed.directory / "manifest.json"
    before = manifest.stat().st_mtime_ns
    run_preprocessing(cfg, force=True)
    assert manifest.stat().st_mtime_ns != before


def test_csv_format_round_trips_like_parquet(prepared, tmp_path):
    processed, _, _, path = prepared
    as_csv, _ = prepare(path, tmp_path / "csv", "data.format=csv")
    assert as_csv.format == "csv"
    for split in SPLITS:
        assert as_csv.split_path(split).suffix == ".csv"
        from_csv = load_split(as_csv, split)
        from_parquet = load_split(processed, split)
        pd.testing.assert_frame_equal(from_csv, from_parquet)


def test_int_target_and_csv_format(tmp_path):
    path = tmp_path / "multi.csv"
    make_table(rows=120, task="multiclass").to_csv(path, index=False)
    processed, _ = prepare(path, tmp_path, "data.format=csv")
    assert processed.schema.task == "multiclass"
    assert processed.schema.target_kind == "int"
    train = load_split(processed, "train")
    assert str(train["label"].dtype) == "int64"
    assert set(train["label"]) <= {0, 1, 2}


def test_text_in_a_numeric_column_is_counted_in_the_profile(tmp_path):
    path = tmp_path / "tiny.csv"
    frame = make_table(rows=120).astype({"age": object})
    frame.loc[5, "age"] = "unknown"
    frame.to_csv(path, index=False)
    processed, _ = prepare(path, tmp_path)
    assert "age" in processed.schema.numeric
    profile = json.loads((processed.directory / "profile.json").read_text())
    assert profile["values_made_missing"] == {"age: text in a numeric column": 1}
    rows = pd.concat(read_all(processed).values()).set_index("customer_id")
    assert np.isnan(rows.loc[frame.loc[5, "customer_id"], "age"])


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(ModelSphereError) as err:
        prepare(path, tmp_path)
    assert str(path) in str(err.value) and "empty" in str(err.value)


def test_header_only_file_is_an_error(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("customer_id,age,label\n")
    with pytest.raises(ModelSphereError) as err:
        prepare(path, tmp_path)
    assert str(path) in str(err.value) and "no data rows" in str(err.value)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ModelSphereError, match="file not found"):
        prepare(tmp_path / "nope.csv", tmp_path)


def test_duplicate_column_names_are_an_error_naming_them(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("a,b,a,label,b\n1,2,3,x,4\n")
    with pytest.raises(ModelSphereError) as err:
        prepare(path, tmp_path)
    assert "duplicate column names ['a', 'b']" in str(err.value)


def test_byte_order_mark_is_handled(tmp_path):
    path = tmp_path / "bom.csv"
    text = make_table(rows=60).to_csv(index=False)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    processed, _ = prepare(path, tmp_path)
    assert processed.schema.columns[0] == "customer_id"
    assert processed.schema.id_column == "customer_id"
    rows = pd.concat(read_all(processed).values())
    assert len(rows) == 60


def test_semicolon_delimiter(tmp_path):
    path = tmp_path / "semi.csv"
    frame = make_table(rows=60)
    frame.to_csv(path, index=False, sep=";")
    processed, _ = prepare(path, tmp_path, "data.delimiter=';'")
    assert processed.schema.features == ["age", "income", "plan", "region"]
    rows = pd.concat(read_all(processed).values()).set_index("customer_id")
    expected = frame.set_index("customer_id").loc[rows.index, "age"]
    np.testing.assert_array_equal(rows["age"], expected)


def test_wrong_delimiter_hints_at_data_delimiter(tmp_path):
    path = tmp_path / "semi.csv"
    make_table(rows=30).to_csv(path, index=False, sep=";")
    with pytest.raises(ModelSphereError) as err:
        prepare(path, tmp_path)
    assert "data.delimiter" in str(err.value)
    assert "'label'" in str(err.value)


def test_too_small_data_set_is_an_error(tmp_path):
    path = tmp_path / "small.csv"
    make_table(rows=4).to_csv(path, index=False)
    with pytest.raises(ModelSphereError, match="split is empty"):
        prepare(path, tmp_path)


def test_load_split_errors(prepared):
    processed, _, _, _ = prepared
    with pytest.raises(ModelSphereError, match="unknown split 'dev'"):
        load_split(processed, "dev")
    processed.split_path("test").unlink()
    with pytest.raises(ModelSphereError, match="processed split not found"):
        load_split(processed, "test")
