"""`logger=csv`: the run's epochs as a CSV file in its run dir."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, List, Mapping

from modelsphere.core.fileio import atomic_write_text
from modelsphere.tracking.run_record import epoch_scalars


class CsvLogger:
    """One row per epoch, the file rewritten whole (atomically) after every
    epoch from the run's history: a resumed run's file holds exactly the epochs
    its checkpoint holds."""

    name = "csv"

    def __init__(self, path: Path):
        self.path = path

    def epoch(self, history: List[Dict[str, Any]]) -> None:
        rows = [{"epoch": row["epoch"], **epoch_scalars(row)} for row in history]
        columns: List[str] = []
        for row in rows:
            columns += [key for key in row if key not in columns]
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, text.getvalue())

    def finish(
        self, final: Mapping[str, Mapping[str, float]], files: List[Path], status: str
    ) -> None:
        """The final metrics are metrics.json's; the CSV holds the epochs."""
