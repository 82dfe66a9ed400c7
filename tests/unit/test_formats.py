"""Every table format of data/formats.py round-trips a typed table: written with
its writer, read back whole and in chunks with the same types and values, its
column names listed, and chosen by its file suffix."""

from __future__ import annotations

import pyarrow as pa
import pytest

from modelsphere.core.errors import ModelSphereError
from modelsphere.data.formats import FORMATS, CsvOptions, format_named, format_of

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


def test_an_unknown_suffix_names_the_setting_and_the_formats(tmp_path):
    with pytest.raises(ModelSphereError) as error:
        format_of(tmp_path / "scores.txt", "output")
    message = str(error.value)
    assert "output=" in message and "unsupported file type '.txt'" in message
    assert "use .csv or .parquet" in message
