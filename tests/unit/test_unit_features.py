"""The feature pipeline: fitted on train rows only, applied to any frame."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from modelsphere.core.errors import ModelSphereError, RowError
from modelsphere.features.fit import fit_feature_state
from modelsphere.features.target import target_values
from modelsphere.features.transform import (
    FIRST_LEVEL_CODE,
    MISSING_CODE,
    UNSEEN_CODE,
    FeatureTransform,
    cardinalities,
    encode_target,
    numeric_width,
    transform_features,
)
from helpers.feature_frames import frame, make_schema, options

# ----------------------------------------------------------------------------
# Fitted on train only


def test_fill_value_and_scaling_come_from_the_train_frame_only():
    train = frame(x=[1.0, 2.0, 3.0, 4.0, np.nan], c=["a"] * 5)
    other = frame(x=[np.nan, 100.0, 1000.0], c=["a"] * 3)
    state = fit_feature_state(
        train, make_schema(), options(numeric_scaling="standard"), seed=0
    )
    col = state["numeric"][0]
    assert col["fill_value"] == 2.5
    assert col["mean"] == 2.5
    assert col["std"] == pytest.approx(np.std([1, 2, 3, 4]))
    out = transform_features(other, state).numeric
    expected = (np.array([2.5, 100.0, 1000.0]) - 2.5) / col["std"]
    np.testing.assert_allclose(out[:, 0], expected, rtol=1e-6)
    np.testing.assert_array_equal(out[:, 1], [1.0, 0.0, 0.0])  # missing indicator
    # Fitting on the other frame would give different state: it was not used.
    refit = fit_feature_state(
        other, make_schema(), options(numeric_scaling="standard"), 0
    )
    assert refit["numeric"][0]["fill_value"] != col["fill_value"]


def test_quantiles_come_from_the_train_frame_only():
    train = frame(x=np.arange(10.0), c=["a"] * 10)
    state = fit_feature_state(train, make_schema(), options(), 0)
    assert state["numeric"][0]["quantiles"] == pytest.approx(list(np.arange(10.0)))
    other = frame(x=[50.0, 60.0, 70.0], c=["a"] * 3)
    out = transform_features(other, state).numeric[:, 0]
    # All above the train range: each maps to the same (top) value.
    assert out[0] == out[1] == out[2] > 4


def test_category_levels_come_from_the_train_frame_only():
    train = frame(x=[1.0] * 6, c=["b", "a", "b", "c", "b", "a"])
    state = fit_feature_state(train, make_schema(), options(), 0)
    assert state["categorical"][0]["levels"] == ["b", "a", "c"]  # by count, name
    other = frame(x=[1.0] * 5, c=["c", "z", None, "b", "a"])
    codes = transform_features(other, state).categorical[:, 0]
    assert codes.dtype == np.int64
    assert codes.tolist() == [4, UNSEEN_CODE, MISSING_CODE, 2, 3]
    assert (MISSING_CODE, UNSEEN_CODE, FIRST_LEVEL_CODE) == (0, 1, 2)
    assert cardinalities(state) == [5]


def test_max_category_levels_and_min_category_count():
    values = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"]
    train = frame(x=[0.0] * 11, c=values)
    top2 = fit_feature_state(train, make_schema(), options(max_category_levels=2), 0)
    assert top2["categorical"][0]["levels"] == ["a", "b"]
    codes = transform_features(train, top2).categorical[:, 0]
    assert codes.tolist() == [2] * 5 + [3] * 3 + [UNSEEN_CODE] * 3
    frequent = fit_feature_state(train, make_schema(), options(min_category_count=3), 0)
    assert frequent["categorical"][0]["levels"] == ["a", "b"]
    assert cardinalities(frequent) == [4]


def test_missing_indicator_only_when_train_had_missing_values():
    schema = make_schema(numeric=("x", "z"), categorical=())
    train = frame(x=[1.0, np.nan, 3.0, 4.0], z=pd.Series([1.0, 2.0, 3.0, 4.0]))
    state = fit_feature_state(train, schema, options(numeric_scaling="none"), 0)
    assert [col["missing_indicator"] for col in state["numeric"]] == [True, False]
    assert numeric_width(state) == 3
    other = frame(x=[np.nan, 2.0], z=pd.Series([np.nan, 5.0]))
    out = transform_features(other, state).numeric
    assert out.shape == (2, 3)
    assert out.dtype == np.float32
    # x, x missing?, z (filled with the train median 2.5, no indicator)
    np.testing.assert_array_equal(out, [[3.0, 1.0, 2.5], [2.0, 0.0, 5.0]])
    off = fit_feature_state(
        train, schema, options(numeric_scaling="none", missing_indicator=False), 0
    )
    assert numeric_width(off) == 2


def test_numeric_column_without_train_values_is_an_error():
    train = frame(x=[np.nan, np.nan], c=["a", "b"])
    with pytest.raises(ModelSphereError, match="'x' has no values in the train"):
        fit_feature_state(train, make_schema(), options(), 0)


def test_no_categorical_or_no_numeric_columns_give_empty_arrays():
    train = frame(x=[1.0, 2.0, 3.0])
    state = fit_feature_state(train, make_schema(categorical=()), options(), 0)
    arrays = transform_features(train, state)
    assert arrays.categorical.shape == (3, 0)
    assert arrays.categorical.dtype == np.int64
    train = frame(c=["a", "b", "a"])
    state = fit_feature_state(train, make_schema(numeric=()), options(), 0)
    arrays = transform_features(train, state)
    assert arrays.numeric.shape == (3, 0)
    assert arrays.numeric.dtype == np.float32
    assert arrays.categorical.shape == (3, 1)


# ----------------------------------------------------------------------------
# Scaling


def test_standard_scaling_is_zero_mean_unit_std_on_train():
    rng = np.random.default_rng(1)
    train = frame(x=rng.normal(50, 7, 500), c=["a"] * 500)
    state = fit_feature_state(
        train, make_schema(), options(numeric_scaling="standard"), 0
    )
    out = transform_features(train, state).numeric[:, 0]
    assert out.mean() == pytest.approx(0.0, abs=1e-5)
    assert out.std() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("scaling", ["standard", "none"])
def test_a_value_beyond_float32_once_scaled_is_refused_naming_column_and_rows(
    scaling,
):
    rng = np.random.default_rng(1)
    train = frame(x=rng.normal(50, 7, 200), c=["a"] * 200)
    state = fit_feature_state(train, make_schema(), options(numeric_scaling=scaling), 0)
    scored = frame(x=[1.0, 1e308, 2.0, -1e300, 3.0], c=["a"] * 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning on the way
        with pytest.raises(RowError) as error:
            transform_features(scored, state)
    assert error.value.positions == [1, 3] and error.value.column == "x"
    assert str(error.value).startswith("column 'x': 1e+308 is out of the range")
    # The largest finite inputs that stay finite once scaled are accepted.
    edge = frame(x=[3e38 if scaling == "none" else 1e30], c=["a"])
    assert np.isfinite(transform_features(edge, state).numeric).all()


def test_quantile_scaling_clips_extreme_values_instead():
    train = frame(x=np.arange(100.0), c=["a"] * 100)
    state = fit_feature_state(
        train, make_schema(), options(numeric_scaling="quantile_normal"), 0
    )
    out = transform_features(frame(x=[1e308, -1e308], c=["a"] * 2), state)
    assert np.isfinite(out.numeric).all()


def test_standard_scaling_of_a_constant_column_does_not_divide_by_zero():
    train = frame(x=[3.0] * 4, c=["a"] * 4)
    state = fit_feature_state(
        train, make_schema(), options(numeric_scaling="standard"), 0
    )
    assert state["numeric"][0]["std"] == 1.0
    assert transform_features(train, state).numeric[:, 0].tolist() == [0.0] * 4


@pytest.mark.parametrize("draw", ["normal", "lognormal", "uniform"])
def test_quantile_normal_is_about_standard_normal_on_train(draw):
    rng = np.random.default_rng(2)
    values = getattr(rng, draw)(size=2000)
    train = frame(x=values, c=["a"] * 2000)
    state = fit_feature_state(train, make_schema(), options(), 0)
    out = transform_features(train, state).numeric[:, 0]
    assert np.isfinite(out).all()
    assert out.mean() == pytest.approx(0.0, abs=0.05)
    assert out.std() == pytest.approx(1.0, abs=0.1)
    # Monotone: sorting the inputs sorts the outputs.
    order = np.argsort(values, kind="stable")
    assert (np.diff(out[order]) >= 0).all()


def test_quantile_normal_is_finite_at_and_beyond_the_train_range():
    rng = np.random.default_rng(3)
    values = rng.normal(size=300)
    state = fit_feature_state(
        frame(x=values, c=["a"] * 300), make_schema(), options(), 0
    )
    probe = np.array([-1e300, -1e6, values.min(), 0.0, values.max(), 1e6, 1e300])
    out = transform_features(frame(x=probe, c=["a"] * 7), state).numeric[:, 0]
    assert np.isfinite(out).all()
    assert (np.diff(out) >= 0).all()
    assert out[0] == out[1] == out[2] < -3
    assert out[4] == out[5] == out[6] > 3
    assert out[0] == pytest.approx(-out[6])


def test_quantile_normal_handles_ties():
    values = np.r_[np.zeros(50), np.arange(1.0, 51.0)]
    state = fit_feature_state(
        frame(x=values, c=["a"] * 100), make_schema(), options(), 0
    )
    out = transform_features(frame(x=values, c=["a"] * 100), state).numeric[:, 0]
    assert np.isfinite(out).all()
    assert len(set(out[:50].tolist())) == 1  # one value for the tied zeros
    assert -1.5 < out[0] < 0  # the middle of the tied ranks, not the extreme


def test_quantile_count_is_capped_and_subsample_is_seeded():
    train = frame(x=np.arange(7.0), c=["a"] * 7)
    state = fit_feature_state(train, make_schema(), options(n_quantiles=1000), 0)
    assert len(state["numeric"][0]["quantiles"]) == 7
    rng = np.random.default_rng(4)
    big = frame(x=rng.normal(size=500), c=["a"] * 500)
    opts = options(n_quantiles=10, quantile_subsample=50)
    first = fit_feature_state(big, make_schema(), opts, seed=7)
    again = fit_feature_state(big, make_schema(), opts, seed=7)
    other = fit_feature_state(big, make_schema(), opts, seed=8)
    assert first["numeric"][0]["quantiles"] == again["numeric"][0]["quantiles"]
    assert first["numeric"][0]["quantiles"] != other["numeric"][0]["quantiles"]
    assert len(first["numeric"][0]["quantiles"]) == 10


def test_no_scaling_keeps_filled_values():
    train = frame(x=[1.0, np.nan, 5.0], c=["a"] * 3)
    state = fit_feature_state(train, make_schema(), options(numeric_scaling="none"), 0)
    out = transform_features(train, state).numeric
    np.testing.assert_array_equal(out[:, 0], [1.0, 3.0, 5.0])


# ----------------------------------------------------------------------------
# State and target


@pytest.mark.parametrize("scaling", ["quantile_normal", "standard", "none"])
def test_state_is_json_serialisable_and_round_trips(scaling):
    rng = np.random.default_rng(5)
    x = rng.normal(size=60)
    x[::7] = np.nan
    train = frame(x=x, c=rng.choice(["a", "b", "c"], 60), y=rng.choice([0, 1, 2], 60))
    schema = make_schema(task="multiclass", classes=[0, 1, 2])
    state = fit_feature_state(train, schema, options(numeric_scaling=scaling), 0)
    restored = json.loads(json.dumps(state, allow_nan=False))
    assert restored == state
    probe = frame(x=[np.nan, -10.0, 0.1, 10.0], c=["a", None, "zz", "c"], y=[0] * 4)
    before, after = transform_features(probe, state), transform_features(
        probe, restored
    )
    np.testing.assert_array_equal(before.numeric, after.numeric)
    np.testing.assert_array_equal(before.categorical, after.categorical)
    np.testing.assert_array_equal(
        encode_target(train["y"], state, "t"), encode_target(train["y"], restored, "t")
    )


def test_encode_target_binary_and_multiclass():
    state = fit_feature_state(
        frame(x=[1.0, 2.0], y=["no", "yes"]), make_schema(categorical=()), options(), 0
    )
    codes = encode_target(pd.Series(["yes", "no", "yes"], dtype="string"), state, "t")
    assert codes.dtype == np.int64
    assert codes.tolist() == [1, 0, 1]
    schema = make_schema(categorical=(), task="multiclass", classes=[3, 5, 7])
    state = fit_feature_state(frame(x=[1.0, 2.0], y=[3, 5]), schema, options(), 0)
    labels = pd.Series([7, 3, 5], dtype="Int64")
    assert encode_target(labels, state, "t").tolist() == [2, 0, 1]


def test_encode_target_unknown_label_is_an_error():
    state = fit_feature_state(
        frame(x=[1.0, 2.0], y=["no", "yes"]), make_schema(categorical=()), options(), 0
    )
    with pytest.raises(ModelSphereError) as err:
        encode_target(pd.Series(["yes", "maybe", "maybe"]), state, "val split")
    message = str(err.value)
    assert message.startswith("val split:")
    assert "2 value(s)" in message
    assert "'maybe'" in message
    assert "['no', 'yes']" in message


def test_regression_target_is_standardised_and_decoded():
    y = np.array([10.0, 20.0, 30.0, 40.0])
    schema = make_schema(categorical=(), task="regression")
    state = fit_feature_state(frame(x=[0.0] * 4, y=y), schema, options(), 0)
    assert state["target"]["mean"] == 25.0
    assert state["target"]["std"] == pytest.approx(np.std(y))
    encoded = encode_target(pd.Series(y), state, "t")
    assert encoded.dtype == np.float32
    assert encoded.mean() == pytest.approx(0.0, abs=1e-6)
    assert encoded.std() == pytest.approx(1.0, abs=1e-6)
    assert state["target"]["transform"] == "none"  # not skewed
    decoded = target_values(torch.from_numpy(encoded), state["target"]).numpy()
    np.testing.assert_allclose(decoded, y, rtol=1e-6)
    other = encode_target(pd.Series([25.0, 100.0]), state, "t")
    np.testing.assert_allclose(other, [0.0, 75.0 / np.std(y)], rtol=1e-6)


def test_unseen_levels_do_not_rely_on_deprecated_pandas_behaviour():
    """Unseen levels and labels are the normal case at prediction time; pandas
    deprecates (and pandas 4 will reject) building a Categorical from values that
    are not among its categories, which is how they are mapped now."""
    state = fit_feature_state(
        frame(x=[1.0, 2.0], c=["a", "b"], y=["no", "yes"]), make_schema(), options(), 0
    )
    probe = frame(x=[1.0, 2.0], c=["a", "new"], y=["no", "yes"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        codes = transform_features(probe, state).categorical[:, 0]
        with pytest.raises(ModelSphereError):
            encode_target(pd.Series(["no", "unknown"]), state, "t")
    assert codes.tolist() == [2, UNSEEN_CODE]


@pytest.mark.parametrize(
    "values",
    [
        pd.Series(["a", "b", None, "zz", "a"] * 100, dtype="string"),  # arrow strings
        pd.Series(["a", np.nan, "b", "zz", None] * 100, dtype=object),  # object
        ["b", None, "a", "unseen"] * 100,  # a plain list (the API's columns)
        pd.Series([1, "a", None, 2.5] * 100, dtype=object),  # not all text
    ],
    ids=["string", "object", "list", "mixed-types"],
)
def test_large_inputs_get_the_codes_small_inputs_get(values):
    """Above LOOKUP_BELOW_ROWS rows the codes come from pyarrow's hash lookup;
    row by row they come from a dict: both must agree on every kind of value."""
    state = fit_feature_state(
        frame(x=[1.0, 2.0, 3.0, 4.0], c=["a", "b", "a", None]),
        make_schema(),
        options(),
        0,
    )
    transform = FeatureTransform(state)
    n_rows = len(values)
    assert n_rows >= FeatureTransform.LOOKUP_BELOW_ROWS
    columns = {"x": [1.0] * n_rows, "c": values}
    large = transform.transform(columns, n_rows).categorical[:, 0]
    small = [
        transform.transform({"x": [1.0], "c": values[row : row + 1]}, 1)
        for row in range(n_rows)
    ]
    small = [arrays.categorical[0, 0] for arrays in small]
    np.testing.assert_array_equal(large, small)
    seen = {code for code in large}
    assert MISSING_CODE in seen and UNSEEN_CODE in seen


# ---------------------------------------------------------------------------
# Discrete numeric columns: an embedding per train value as well


def test_a_discrete_numeric_column_also_gets_a_code_per_value():
    schema = make_schema(numeric=("x", "z"), categorical=("c",))
    train = frame(
        x=[1.0, 2.0, 2.0, 4.0, np.nan, 1.0],
        c=["a", "b", "a", "b", "a", "b"],
        y=["no", "yes"] * 3,
        z=pd.Series([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),  # 6 values > the limit of 4
    )
    state = fit_feature_state(train, schema, options(numeric_level_max=4), seed=0)
    assert state["numeric_levels"] == [{"name": "x", "values": [1.0, 2.0, 4.0]}]
    assert cardinalities(state) == [2 + FIRST_LEVEL_CODE, 3 + FIRST_LEVEL_CODE]
    new = frame(
        x=[2.0, np.nan, 3.0, 4.0],
        c=["a", "a", "b", "b"],
        z=pd.Series([0.1, 0.2, 0.3, 0.4]),
    )
    arrays = transform_features(new, state)
    # categorical columns first, then the discrete numeric columns
    assert arrays.categorical[:, 1].tolist() == [
        FIRST_LEVEL_CODE + 1,  # 2.0: the second train value
        MISSING_CODE,
        UNSEEN_CODE,  # 3.0 never seen in training
        FIRST_LEVEL_CODE + 2,
    ]
    # the numeric input itself is unchanged: still scaled, as without the levels
    plain = fit_feature_state(train, schema, options(), seed=0)
    assert "numeric_levels" in plain and plain["numeric_levels"] == []
    np.testing.assert_array_equal(
        arrays.numeric, transform_features(new, plain).numeric
    )


def test_numeric_levels_are_counted_across_chunks():
    """A column whose distinct values only exceed the limit over several chunks
    gets no levels; one that stays within it gets the union."""
    from modelsphere.features.fit import fit_feature_state_chunks

    schema = make_schema(numeric=("x", "z"), categorical=())
    chunks = [
        {"x": np.array([1.0, 2.0]), "z": np.array([1.0, 2.0]), "y": ["no", "yes"]},
        {"x": np.array([3.0, 1.0]), "z": np.array([3.0, 4.0]), "y": ["no", "yes"]},
    ]
    state = fit_feature_state_chunks(chunks, schema, options(numeric_level_max=3), 0)
    assert state["numeric_levels"] == [{"name": "x", "values": [1.0, 2.0, 3.0]}]


def test_a_constant_numeric_column_gets_no_levels():
    schema = make_schema(numeric=("x",), categorical=())
    train = frame(x=[5.0, 5.0, 5.0], y=["no", "yes", "no"])
    state = fit_feature_state(train, schema, options(numeric_level_max=8), seed=0)
    assert state["numeric_levels"] == []


def test_a_state_without_numeric_levels_still_loads():
    """Artifacts written before numeric levels existed have no such key."""
    schema = make_schema()
    train = frame(x=[1.0, 2.0, 3.0], c=["a", "b", "a"], y=["no", "yes", "no"])
    state = fit_feature_state(train, schema, options(numeric_level_max=8), seed=0)
    old = {k: v for k, v in state.items() if k != "numeric_levels"}
    arrays = transform_features(frame(x=[1.0], c=["a"]), old)
    assert arrays.categorical.shape == (1, 1)
    assert cardinalities(old) == [2 + FIRST_LEVEL_CODE]
