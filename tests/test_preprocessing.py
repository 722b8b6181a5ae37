"""Each preprocessing step: fit, transform, state round trip; statistics merge like pooled rows."""

import json

import numpy as np
import pandas as pd
import pytest

from astroscale_fl.derived import galactic_latitude_sin, reduced_proper_motion
from astroscale_fl.preprocessing import DerivedFeatures, MedianImputer, Pipeline, RangeValidator, Scaler, TargetScaler
from astroscale_fl.statistics import SKETCH_SIZE, ColumnStatistics
from astroscale_fl.tasks import get_task


def roundtrip(step):
    state = json.loads(json.dumps(step.state_dict()))
    return type(step).from_state(state)


def test_range_validator_marks_out_of_range_and_non_finite():
    frame = pd.DataFrame({"a": [0.5, 2.0, np.inf, np.nan, -1.0]})
    step = RangeValidator({"a": (0.0, 1.0)}).fit(frame)
    assert step.invalid_counts == {"a": 4}
    out = roundtrip(step).transform(frame)
    assert out["a"][0] == 0.5 and np.isnan(out["a"][1:]).all()
    assert frame["a"].iloc[1] == 2.0  # input untouched


def test_median_imputer_fills_with_training_median():
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, np.nan, 100.0]})
    step = MedianImputer(["a"]).fit(frame)
    assert step.medians["a"] == pytest.approx(2.0, abs=1.0)  # sketch median of [1,2,3,100]
    assert roundtrip(step).transform(frame)["a"][3] == step.medians["a"]


def test_robust_scaler_keeps_unit_scale_for_zero_iqr():
    frame = pd.DataFrame({"const": [0.0] * 99 + [5.0], "x": np.arange(100, dtype=float)})
    step = Scaler(["const", "x"], "robust").fit(frame)
    assert step.scale["const"] == 1.0  # IQR 0 -> 1 (dividing by ~0 wrecks training)
    assert step.center["x"] == pytest.approx(49.5, abs=1.0)
    assert step.scale["x"] == pytest.approx(50.0, abs=2.0)
    out = roundtrip(step).transform(frame)
    assert np.abs(out["const"]).max() == 5.0


def test_standard_scaler_uses_mean_and_std():
    x = np.random.default_rng(0).normal(3.0, 2.0, 5000)
    step = Scaler(["x"], "standard").fit(pd.DataFrame({"x": x}))
    assert step.center["x"] == pytest.approx(x.mean(), rel=1e-12)
    assert step.scale["x"] == pytest.approx(x.std(), rel=1e-12)


def test_target_scaler_inverse():
    frame = pd.DataFrame({"y": [1.0, 2.0, 3.0, 4.0]})
    step = roundtrip(TargetScaler("y").fit(frame))
    scaled = step.transform(frame)["y"]
    assert scaled.mean() == pytest.approx(0.0) and scaled.std() == pytest.approx(1.0)
    np.testing.assert_allclose(step.inverse(scaled), frame["y"].to_numpy())


def test_derived_features_formulas():
    # the north Galactic pole (RA 192.85948 deg, Dec 27.12825 deg) has sin(b) = 1
    assert galactic_latitude_sin(np.radians([192.85948]), np.radians([27.12825]))[0] == pytest.approx(1.0, abs=1e-8)
    # the Galactic centre direction has b = 0
    assert galactic_latitude_sin(np.radians([266.40499]), np.radians([-28.93617]))[0] == pytest.approx(0.0, abs=1e-6)
    # H = m + 5 log10(mu["/yr]) + 5: mu = 1"/yr gives H = m + 5
    assert reduced_proper_motion(np.array([10.0]), np.array([1000.0]))[0] == pytest.approx(15.0)
    frame = pd.DataFrame({"RArad": [0.1], "DErad": [0.2], "pmRA": [3.0], "pmDE": [4.0], "Hpmag": [8.0]})
    out = DerivedFeatures(["pm_total", "reduced_pm", "sin_b", "cos_b"]).transform(frame)
    assert out["pm_total"][0] == pytest.approx(5.0)
    assert out["sin_b"][0] ** 2 + out["cos_b"][0] ** 2 == pytest.approx(1.0)


def test_pipeline_state_round_trip_gives_identical_features(absmag_frame):
    task = get_task("hipparcos_absmag")
    pipe = Pipeline.build(task).fit(absmag_frame)
    again = Pipeline.from_state(json.loads(json.dumps(pipe.state_dict())))
    a, b = pipe.transform_features(absmag_frame), again.transform_features(absmag_frame)
    assert a.dtype == np.float32 and a.shape == (len(absmag_frame), len(task.inputs) + len(task.derived))
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all()
    one_row = {name: absmag_frame[name].to_numpy()[:1] for name in task.input_names}  # a mapping works too
    np.testing.assert_array_equal(pipe.transform_features(one_row), a[:1])
    # robust scaling puts feature medians near 0
    assert np.abs(np.median(a, axis=0)).max() < 0.05


def test_merged_statistics_equal_pooled_statistics():
    rng = np.random.default_rng(1)
    parts = [pd.DataFrame({"a": rng.normal(i, 1 + i, 1000 + 300 * i), "b": rng.exponential(1 + i, 1000 + 300 * i)}) for i in range(5)]
    parts[2].loc[:10, "a"] = np.nan
    pooled = pd.concat(parts, ignore_index=True)
    merged = ColumnStatistics.merge([ColumnStatistics.compute(p, ["a", "b"]) for p in parts])
    exact = ColumnStatistics.compute(pooled, ["a", "b"])
    for name in ("count", "missing", "minimum", "maximum"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(exact, name))
    np.testing.assert_allclose(merged.mean(), pooled[["a", "b"]].mean().to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(merged.std(), pooled[["a", "b"]].std(ddof=0).to_numpy(), rtol=1e-9)
    # quantiles: within the sketch's stated rank error 1/(2k) of the pooled count
    for q in (0.25, 0.5, 0.75):
        est = merged.quantile(q)
        for j, name in enumerate(["a", "b"]):
            col = pooled[name].dropna().to_numpy()
            rank = np.mean(col <= est[j])
            assert abs(rank - q) <= 1 / (2 * SKETCH_SIZE) + 1 / len(col), (name, q, rank)


def test_federated_pipeline_fit_matches_pooled_fit(absmag_frame):
    task = get_task("hipparcos_absmag")
    shuffled = absmag_frame.sample(frac=1.0, random_state=0)
    shares = [shuffled.iloc[i::4] for i in range(4)]
    template = Pipeline.build(task)
    merged = ColumnStatistics.merge([template.compute_statistics(s) for s in shares])
    federated = Pipeline.build(task).fit_statistics(merged)
    pooled = Pipeline.build(task).fit(absmag_frame)
    assert federated.target.mean == pytest.approx(pooled.target.mean, rel=1e-12)
    assert federated.target.std == pytest.approx(pooled.target.std, rel=1e-12)
    f_scaler, p_scaler = federated.steps[-1], pooled.steps[-1]
    for name in f_scaler.columns:
        spread = p_scaler.scale[name]
        assert abs(f_scaler.center[name] - p_scaler.center[name]) <= 0.02 * spread, name
