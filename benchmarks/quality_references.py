"""The references of benchmarks/quality.py, trained on the very split files and
feature transform the model options use: LightGBM with early stopping on the
validation split, and logistic (classification) or ridge (regression) regression
with C or alpha picked on the validation split. Test metrics come from
`modelsphere.training.metrics`, as the options' do."""

from __future__ import annotations

import time
from typing import Any, Dict

import numpy as np
import pandas as pd
import torch

from benchmarks.quality_report import PRIMARY
from modelsphere.data.preprocessing import prepare_data
from modelsphere.data.splits import load_split
from modelsphere.features.fit import fit_feature_state_from_split
from modelsphere.features.transform import (
    cardinalities,
    encode_target,
    transform_features,
)
from modelsphere.training.metrics import compute_metrics

LINEAR_STRENGTHS = (0.01, 0.1, 1.0, 10.0, 100.0)  # C (logistic) / 1/alpha (ridge)
LIGHTGBM_TREES, LIGHTGBM_STOPPING_ROUNDS = 2000, 50


def reference_inputs(cfg) -> Dict[str, Any]:
    """The processed splits the options trained on, and the pipeline's features."""
    data = prepare_data(cfg.data, cfg.paths.data_dir)
    state = fit_feature_state_from_split(data, cfg.model.features, cfg.seed)
    frames = {split: load_split(data, split) for split in ("train", "val", "test")}
    target = data.schema.target
    return {
        "schema": data.schema,
        "state": state,
        "frames": frames,
        "targets": {
            split: _reference_target(frame[target], state, split)
            for split, frame in frames.items()
        },
    }


def _reference_target(values: pd.Series, state, split: str) -> np.ndarray:
    """Class indices, or the regression target as given: the references fit the
    data's own units (LightGBM's and ridge's squared error is then the RMSE they
    are scored on), whatever target scale the model options chose."""
    if state["target"]["task"] == "regression":
        return values.to_numpy(dtype=np.float64, copy=True)
    return encode_target(values, state, split)


def _test_metrics(task: str, scores: np.ndarray, target) -> Dict[str, float]:
    target, scores = torch.as_tensor(target), torch.as_tensor(scores)
    if task == "regression":  # float32, as the options' metrics are computed
        target, scores = target.float(), scores.float()
    return compute_metrics(task, scores, target)


def _class_scores(task: str, model, x) -> np.ndarray:
    if task == "regression":
        return model.predict(x)
    probabilities = model.predict_proba(x)
    return probabilities[:, 1] if task == "binary" else probabilities


def fit_lightgbm(
    inputs, task: str, seed: int, threads: int, quick: bool
) -> Dict[str, Any]:
    import lightgbm as lgb

    schema, frames, targets = inputs["schema"], inputs["frames"], inputs["targets"]
    categorical = schema.categorical
    levels = {
        c: frames["train"][c].astype("string").dropna().unique() for c in categorical
    }

    def typed(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame[schema.features].copy()
        for column in categorical:
            values = out[column].astype("string")
            known = values.where(values.isin(levels[column]))  # unseen -> missing
            out[column] = pd.Categorical(known, categories=levels[column])
        return out

    estimator = lgb.LGBMRegressor if task == "regression" else lgb.LGBMClassifier
    model = estimator(
        n_estimators=20 if quick else LIGHTGBM_TREES,
        learning_rate=0.05,
        random_state=seed,
        n_jobs=threads,
        verbosity=-1,
    )
    started = time.perf_counter()
    model.fit(
        typed(frames["train"]),
        targets["train"],
        eval_X=typed(frames["val"]),
        eval_y=targets["val"],
        callbacks=[lgb.early_stopping(LIGHTGBM_STOPPING_ROUNDS, verbose=False)],
    )
    seconds = time.perf_counter() - started
    scores = _class_scores(task, model, typed(frames["test"]))
    test = _test_metrics(task, scores, targets["test"])
    return {"test": test, "seconds": seconds, "trees": model.best_iteration_}


def _linear_matrix(frame: pd.DataFrame, state) -> np.ndarray:
    """Numeric features as the pipeline transforms them + one-hot categories."""
    arrays = transform_features(frame, state)
    blocks = [arrays.numeric]
    for i, card in enumerate(cardinalities(state)):
        blocks.append(np.eye(card, dtype=np.float32)[arrays.categorical[:, i]])
    return np.hstack(blocks)


def fit_linear(
    inputs, task: str, seed: int, threads: int, quick: bool
) -> Dict[str, Any]:
    from sklearn.linear_model import LogisticRegression, Ridge

    state, frames, targets = inputs["state"], inputs["frames"], inputs["targets"]
    x = {split: _linear_matrix(frame, state) for split, frame in frames.items()}
    started = time.perf_counter()
    best, best_value = None, None
    for strength in LINEAR_STRENGTHS:
        if task == "regression":
            model = Ridge(alpha=1.0 / strength)
        else:
            model = LogisticRegression(C=strength, max_iter=2000)
        model.fit(x["train"], targets["train"])
        scores = _class_scores(task, model, x["val"])
        value = _test_metrics(task, scores, targets["val"])[PRIMARY[task]]
        better = best_value is None or (
            value < best_value if task == "regression" else value > best_value
        )
        if better:
            best, best_value = model, value
    seconds = time.perf_counter() - started
    scores = _class_scores(task, best, x["test"])
    test = _test_metrics(task, scores, targets["test"])
    strength = 1.0 / best.alpha if task == "regression" else best.C
    return {"test": test, "seconds": seconds, "strength": strength}


REFERENCE_FITS = {"lightgbm": fit_lightgbm, "linear": fit_linear}
