"""The regression target's scale (features/target.py): the rule that picks log1p,
the encoding and its inverse, Duan's smearing factor, and that classification
and older states are untouched."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from modelsphere.core.errors import ModelSphereError
from modelsphere.features.fit import fit_feature_state
from modelsphere.features.target import (
    predicted_values,
    skewness,
    smearing_factor,
    target_values,
)
from modelsphere.features.transform import encode_target
from modelsphere.models.outputs import outputs_to_scores
from helpers.feature_frames import frame, make_schema, options


def regression_state(y, **overrides):
    """The fitted state of target y; the skew rule (auto) unless overridden."""
    overrides.setdefault("target_transform", "auto")
    y = np.asarray(y, dtype=float)
    schema = make_schema(categorical=(), task="regression")
    data = frame(x=np.zeros(len(y)), y=y)
    return fit_feature_state(data, schema, options(**overrides), 0)


def lognormal(rows=2000, sigma=1.0, seed=0):
    return np.random.default_rng(seed).lognormal(3.0, sigma, rows)


def test_skewness_matches_its_definition():
    values = np.array([1.0, 2.0, 3.0, 10.0])
    centred = values - values.mean()
    expected = np.mean(centred**3) / np.mean(centred**2) ** 1.5
    assert skewness(values) == pytest.approx(expected)
    assert skewness(np.full(5, 2.0)) == 0.0


def test_the_default_keeps_the_raw_scale_even_for_a_skewed_target():
    schema = make_schema(categorical=(), task="regression")
    data = frame(x=np.zeros(2000), y=lognormal())
    state = fit_feature_state(data, schema, options(), 0)
    assert state["target"]["transform"] == "none"


def test_auto_takes_log1p_for_a_right_skewed_non_negative_target():
    y = lognormal()
    state = regression_state(y)["target"]
    assert skewness(y) > 1.0
    assert state["transform"] == "log1p"
    assert state["mean"] == pytest.approx(np.log1p(y).mean())
    assert state["std"] == pytest.approx(np.log1p(y).std())
    assert (state["low"], state["high"]) == (np.log1p(y.min()), np.log1p(y.max()))


@pytest.mark.parametrize(
    "y, why",
    [
        (np.random.default_rng(1).normal(50, 10, 2000), "symmetric"),
        (lognormal() - 30.0, "has negative values"),
        (lognormal(sigma=0.2), "skewness below the threshold"),
    ],
)
def test_auto_keeps_the_raw_scale(y, why):
    assert regression_state(y)["target"]["transform"] == "none", why


def test_the_threshold_and_the_explicit_choices_are_settings():
    y = lognormal(sigma=0.2)  # skewness about 0.6
    assert regression_state(y, target_log_skew=0.5)["target"]["transform"] == "log1p"
    assert regression_state(y, target_transform="log1p")["target"]["transform"] == (
        "log1p"
    )
    skewed = lognormal()
    assert regression_state(skewed, target_transform="none")["target"] == {
        "name": "y",
        "task": "regression",
        "transform": "none",
        "mean": pytest.approx(skewed.mean()),
        "std": pytest.approx(skewed.std()),
    }


def test_log1p_on_a_negative_target_is_a_clear_error():
    with pytest.raises(ModelSphereError, match=r"target 'y' has -2 in the train split"):
        regression_state([-2.0, 1.0, 5.0, 9.0], target_transform="log1p")


def test_encoding_round_trips_and_rejects_values_outside_the_domain():
    y = lognormal()
    state = regression_state(y)
    encoded = encode_target(pd.Series(y), state, "train split")
    expected = (np.log1p(y) - state["target"]["mean"]) / state["target"]["std"]
    np.testing.assert_allclose(encoded, expected, rtol=1e-5, atol=1e-6)
    back = target_values(torch.from_numpy(encoded), state["target"]).numpy()
    np.testing.assert_allclose(back, y, rtol=1e-5)
    assert encode_target(pd.Series([-0.5]), state, "val split")[0] < 0  # in domain
    with pytest.raises(ModelSphereError, match=r"val split: target 'y' holds 2 value"):
        encode_target(pd.Series([3.0, -1.0, -7.0]), state, "val split")


def test_smearing_factor_is_the_mean_exponentiated_log_residual():
    target = {"transform": "log1p", "mean": 2.0, "std": 0.5, "low": 0, "high": 9}
    outputs = torch.tensor([[0.0], [0.4], [-1.0]])
    encoded = torch.tensor([0.2, 0.0, -0.4])
    residual = (encoded - outputs[:, 0]).double() * 0.5
    expected = float(torch.exp(residual).mean())
    assert smearing_factor(outputs, encoded, target) == pytest.approx(expected)
    assert smearing_factor(outputs, encoded, {**target, "transform": "none"}) == 1.0


def test_predictions_apply_the_inverse_and_the_smearing_factor():
    target = {"transform": "log1p", "mean": 2.0, "std": 0.5, "smearing": 1.1}
    target.update(low=0.0, high=9.0)
    z = torch.tensor([0.0, 1.0])
    expected = 1.1 * np.exp(2.0 + 0.5 * np.array([0.0, 1.0])) - 1.0
    np.testing.assert_allclose(predicted_values(z, target).numpy(), expected, 1e-6)
    # the encoded targets themselves are inverted exactly, without the factor
    exact = np.exp(2.0 + 0.5 * np.array([0.0, 1.0])) - 1.0
    np.testing.assert_allclose(target_values(z, target).numpy(), exact, 1e-6)


def test_log_predictions_stay_within_the_train_range():
    """A ReLU network extrapolates linearly in log units: an output far outside
    the train range would be exponentially far outside it in the target's."""
    target = {"transform": "log1p", "mean": 2.0, "std": 0.5, "smearing": 1.1}
    target.update(low=1.0, high=3.0)
    scores = predicted_values(torch.tensor([-10.0, 2.0, 40.0]), target).numpy()
    expected = 1.1 * np.exp([1.0, 3.0, 3.0]) - 1.0
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    # the factor is fitted on the same held predictions
    factor = smearing_factor(torch.tensor([40.0]), torch.tensor([0.0]), target)
    assert factor == pytest.approx(np.exp(2.0 - 3.0))


def test_a_state_saved_before_the_transform_reads_as_the_raw_scale():
    state = {"target": {"name": "y", "task": "regression", "mean": 10.0, "std": 2.0}}
    scores = outputs_to_scores(torch.tensor([[1.0], [-0.5]]), "regression", state)
    assert scores.tolist() == [12.0, 9.0]
    encoded = encode_target(pd.Series([12.0, -5.0]), state, "t")
    assert encoded.tolist() == [1.0, -7.5]


def test_classification_targets_carry_no_transform():
    schema = make_schema(categorical=(), task="binary")
    data = frame(x=[1.0, 2.0, 3.0], y=pd.Series(["no", "yes", "no"], dtype="string"))
    state = fit_feature_state(data, schema, options(), 0)
    assert state["target"] == {"name": "y", "task": "binary", "classes": ["no", "yes"]}
