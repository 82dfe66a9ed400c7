"""Every table format of data/formats.py round-trips a typed table: written with
its writer, read back whole and in chunks with the same types and values, its
column names listed, and chosen by its file suffix."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelsphere.core.errors import ModelSphereError
from modelsphere.data.formats import (
    FORMATS,
    CsvOptions,
    format_named,
    format_of,
    rows_within,
)

LAYOUT = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("x", pa.float64()),
        pa.field("level", pa.string()),
        pa.field("label", pa.int64()),
    ]
)


def table(rows: int) -> pa.Table:
    return pa.table(
        {
            "id": [f"r{i}" for i in range(rows)],
            "x": [i / 4 if i % 5 else None for i in range(rows)],
            "level": ["a" if i % 3 else None for i in range(rows)],
            "label": list(range(rows)),
        },
        schema=LAYOUT,
    )


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_a_typed_table_round_trips(tmp_path, name):
    fmt = format_named(name)
    path = tmp_path / f"t{fmt.suffixes[0]}"
    writer = fmt.open_writer(path, LAYOUT, row_group_rows=16)
    for part in (table(40).slice(0, 32), table(40).slice(32)):
        writer.write(part)
    writer.close()
    assert format_of(path, "input") is fmt
    assert fmt.columns(path, CsvOptions()) == LAYOUT.names
    whole = fmt.read_typed(path, LAYOUT, LAYOUT.names)
    assert whole.equals(table(40))
    chunks = list(fmt.iter_typed(path, LAYOUT, ["x", "label"], chunk_rows=16))
    assert pa.concat_tables(chunks).equals(table(40).select(["x", "label"]))
    frames = list(fmt.frames(path, 16, 1 << 20, CsvOptions()))
    assert sum(len(frame) for frame in frames) == 40


def written(tmp_path, name: str, rows: int, group_rows: int):
    fmt = format_named(name)
    path = tmp_path / f"t{fmt.suffixes[0]}"
    writer = fmt.open_writer(path, LAYOUT, row_group_rows=group_rows)
    writer.write(table(rows))
    writer.close()
    return fmt, path


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_a_range_of_rows_reads_back_those_rows_only(tmp_path, name):
    fmt, path = written(tmp_path, name, rows=100, group_rows=16)
    # inside one group, across groups, from the start, to the end, none
    for rows in (range(18, 30), range(10, 75), range(0, 16), range(90, 100)):
        chunks = list(fmt.iter_typed(path, LAYOUT, ["x", "label"], 7, rows))
        wanted = table(100).select(["x", "label"]).slice(rows.start, len(rows))
        assert pa.concat_tables(chunks).equals(wanted)
    assert (
        sum(t.num_rows for t in fmt.iter_typed(path, LAYOUT, ["x"], 7, range(0))) == 0
    )
    with pytest.raises(ValueError, match="contiguous"):
        list(fmt.iter_typed(path, LAYOUT, ["x"], 7, range(0, 10, 2)))


def test_parquet_reads_only_the_row_groups_that_hold_the_range(tmp_path, monkeypatch):
    fmt, path = written(tmp_path, "parquet", rows=100, group_rows=16)
    read = []
    original = pq.ParquetFile.read_row_group

    def counted(self, index, *args, **kwargs):
        read.append(index)
        return original(self, index, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
    list(fmt.iter_typed(path, LAYOUT, ["x"], 64, range(20, 50)))  # rows 16..63
    assert read == [1, 2, 3]


def test_an_unknown_suffix_names_the_setting_and_the_formats(tmp_path):
    with pytest.raises(ModelSphereError) as error:
        format_of(tmp_path / "scores.txt", "output")
    message = str(error.value)
    assert "output=" in message and "unsupported file type '.txt'" in message
    assert "use .csv or .parquet" in message


@pytest.mark.parametrize(
    "rows", [range(0, 50), range(3, 18), range(14, 21), range(45, 60), range(10, 10)]
)
def test_rows_within_cuts_consecutive_tables_to_the_range(rows):
    """A file read as consecutive tables (CSV blocks): the rows at `rows`, none
    past the file's end, and no table read after the one that ends the range."""
    pieces = pa.table({"x": list(range(50))}).to_batches(max_chunksize=7)
    consumed = []

    def tables():
        for piece in pieces:
            consumed.append(piece)
            yield pa.Table.from_batches([piece])

    found = [v for t in rows_within(tables(), rows) for v in t["x"].to_pylist()]
    assert found == list(range(50))[rows.start : rows.stop]
    assert len(consumed) == min(len(pieces), max(1, -(-rows.stop // 7)))
