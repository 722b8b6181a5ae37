"""Each preprocessing operation against a direct numpy / scikit-learn reference; statistics and
fitted states merged across parts equal those of the pooled rows; preprocessing.json is checked."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import (
    MinMaxScaler,
    PolynomialFeatures,
    RobustScaler,
    StandardScaler,
)

from astroscale_fl.data.holdout import hash_unit
from astroscale_fl.data.tasks import Feature, TaskSpec, get_task
from astroscale_fl.errors import ConfigError, DataError
from astroscale_fl.preprocessing import ColumnStatistics, Options, Pipeline, sketch
from astroscale_fl.preprocessing.derived import (
    galactic_latitude_sin,
    reduced_proper_motion,
    to_mjd,
)

RNG = np.random.default_rng(7)
TASK = TaskSpec(name="toy", target="y", target_unit="", inputs=(
    Feature("a", "", -100.0, 100.0), Feature("b", "", 0.0, np.inf), Feature("parallax", "mas", -1000.0, 1000.0)))


def toy(n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.normal(3.0, 2.0, n), "b": rng.exponential(5.0, n), "parallax": rng.normal(2.0, 1.0, n),
                          "parallax_error": rng.uniform(0.1, 0.5, n), "mjd": 57000 + rng.uniform(0, 2000, n)})
    frame["y"] = frame.a * 2 + np.log1p(frame.b) + rng.normal(0, 0.1, n)
    frame.loc[rng.random(n) < 0.05, "a"] = np.nan
    return frame


def fitted(frame, **options):
    return Pipeline.build(TASK, options=Options(**options)).fit(frame)


def roundtrip(pipe):
    return Pipeline.from_state(json.loads(json.dumps(pipe.state_dict())))


def features_of(pipe, frame):
    return pd.DataFrame(roundtrip(pipe).transform_features(frame).astype(np.float64), columns=pipe.features)


def test_sketch_quantiles_within_stated_bound_and_merge_exactly():
    columns = [RNG.normal(0, 1, 50_000), RNG.exponential(1e4, 50_000), RNG.uniform(-90, 90, 50_000), -RNG.lognormal(0, 3, 50_000)]
    for values in columns:
        counts = sketch.bin_counts(values)
        ordered = np.sort(values)
        for q in (0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0):
            est = sketch.quantile(counts, q, ordered[0], ordered[-1])
            r = q * (len(ordered) - 1)
            lo, hi = ordered[int(np.floor(r))], ordered[int(np.ceil(r))]
            eps = sketch.RELATIVE_ERROR
            assert lo - eps * abs(lo) <= est <= hi + eps * abs(hi), (q, est, lo, hi)
        parts = np.array_split(values, 7)
        np.testing.assert_array_equal(sum(sketch.bin_counts(p) for p in parts), counts)
    assert sketch.bin_counts(np.array([np.nan, np.inf, -np.inf, 1.0])).sum() == 1


def test_merged_statistics_equal_pooled_statistics_and_travel_sparse():
    parts = [pd.DataFrame({"a": RNG.normal(i, 1 + i, 1000 + 300 * i), "b": RNG.exponential(1 + i, 1000 + 300 * i)}) for i in range(5)]
    parts[2].loc[:10, "a"] = np.nan
    pooled = pd.concat(parts, ignore_index=True)
    merged = ColumnStatistics.merge([ColumnStatistics.compute(p, ["a", "b"]) for p in parts])
    exact = ColumnStatistics.compute(pooled, ["a", "b"])
    for name in ("count", "missing", "minimum", "maximum", "sketch"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(exact, name))
    np.testing.assert_allclose(merged.mean(), pooled[["a", "b"]].mean().to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(merged.std(), pooled[["a", "b"]].std(ddof=0).to_numpy(), rtol=1e-10)
    for q in (0.25, 0.5, 0.75):
        np.testing.assert_array_equal(merged.quantile(q), exact.quantile(q))
        np.testing.assert_allclose(merged.quantile(q), pooled[["a", "b"]].quantile(q).to_numpy(), rtol=0.01, atol=0.01)
    again = ColumnStatistics.from_arrays(["a", "b"], merged.to_arrays())
    np.testing.assert_array_equal(again.sketch, merged.sketch)
    assert merged.to_arrays()["sketch_index"].size < 2 * 20_000  # sparse: non-empty bins only


@pytest.mark.parametrize("method,reference", [("robust", RobustScaler()), ("standard", StandardScaler()), ("minmax", MinMaxScaler())])
def test_scalers_match_scikit_learn(method, reference):
    frame = toy().dropna()
    pipe = fitted(frame, scaling=method, clip=None)
    ours = features_of(pipe, frame)[["a", "b"]].to_numpy()
    theirs = reference.fit_transform(frame[["a", "b"]])
    tol = 0.01 if method == "robust" else 1e-5  # robust: the sketch's 2**-8 relative quantile bound
    np.testing.assert_allclose(ours, theirs, atol=tol * np.abs(theirs).max())


def test_clip_bounds_scaled_values():
    frame = toy()
    frame.loc[0, "b"] = 1e6
    out = features_of(fitted(frame, clip=3.0), frame)
    assert out.to_numpy().max() <= 3.0 and out.b.iloc[0] == 3.0


@pytest.mark.parametrize("method", ["median", "mean", "ffill", "bfill", "interpolate"])
def test_imputers_match_pandas(method):
    frame = toy(2000)
    frame = frame.sample(frac=1.0, random_state=1).reset_index(drop=True)  # order_by must sort
    pipe = fitted(frame, impute=method, order_by="mjd" if method not in ("median", "mean") else None, scaling="minmax", clip=None)
    scaler = pipe.steps[-1]
    ours = features_of(pipe, frame).a * scaler.scale["a"] + scaler.center["a"]
    ordered = frame.sort_values("mjd", kind="stable").a
    reference = {"median": frame.a.fillna(frame.a.median()), "mean": frame.a.fillna(frame.a.mean()),
                 "ffill": ordered.ffill(), "bfill": ordered.bfill(),
                 "interpolate": ordered.reset_index(drop=True).interpolate(limit_area="inside").set_axis(ordered.index)}[method]
    reference = reference.reindex(frame.index).fillna(pipe.steps[-2].fill["a"]) if method not in ("median", "mean") else reference
    tol = 0.02 if method == "median" else 1e-4
    np.testing.assert_allclose(ours.to_numpy(), reference.to_numpy(), atol=tol)


@pytest.mark.parametrize("method", ["zscore", "iqr"])
def test_outliers_drop_clip_flag_against_numpy(method):
    frame = toy().dropna().reset_index(drop=True)
    b = frame.b.to_numpy()
    if method == "zscore":
        low, high = b.mean() - 3 * b.std(), b.mean() + 3 * b.std()
    else:
        q1, q3 = np.quantile(b, [0.25, 0.75])
        low, high = q1 - 3 * (q3 - q1), q3 + 3 * (q3 - q1)
    expected = (b < low) | (b > high)
    for col in ("a", "parallax"):
        v = frame[col].to_numpy()
        if method == "zscore":
            expected |= np.abs(v - v.mean()) > 3 * v.std()
        else:
            q1, q3 = np.quantile(v, [0.25, 0.75])
            expected |= (v < q1 - 3 * (q3 - q1)) | (v > q3 + 3 * (q3 - q1))
    drop = fitted(frame, outliers=method, outlier_threshold=3.0, outlier_action="drop")
    got = drop.outlier_rows(frame)
    assert got.sum() > 10 and np.mean(got != expected) < 1e-3  # the sketch's quantiles vs exact ones
    flag = fitted(frame, outliers=method, outlier_action="flag")
    assert flag.features[-1] == "outlier"
    np.testing.assert_array_equal(features_of(flag, frame).outlier.to_numpy() == 1, got)
    clip = fitted(frame, outliers=method, outlier_action="clip", scaling="minmax", clip=None)
    assert len(features_of(clip, frame)) == len(frame)  # prediction never drops a row
    assert clip.steps[-2].high["b"] == pytest.approx(high, rel=0.01)


def test_derived_features_against_numpy_and_scikit_learn():
    frame = toy(3000).dropna()
    pipe = fitted(frame, features=("distance_pc", "polynomial", "interactions", "temporal"), feature_columns=("a", "b"),
                  polynomial_degree=3, min_parallax_snr=5.0, time_column="mjd", scaling="minmax", clip=None)
    columns = pipe.transform_columns(frame)
    snr_ok = (frame.parallax > 0) & (frame.parallax / frame.parallax_error >= 5)
    raw_distance = pipe.steps[2].transform({"parallax": frame.parallax.to_numpy(), "parallax_error": frame.parallax_error.to_numpy()})
    np.testing.assert_allclose(raw_distance["distance_pc"][snr_ok], 1000 / frame.parallax[snr_ok])
    assert np.isnan(raw_distance["distance_pc"][~snr_ok]).all()
    poly = PolynomialFeatures(3, include_bias=False).fit(frame[["a", "b"]])
    expected = pd.DataFrame(poly.transform(frame[["a", "b"]]), columns=poly.get_feature_names_out(["a", "b"]))
    scaler = pipe.steps[-1]

    def unscale(name):
        return columns[name] * scaler.scale[name] + scaler.center[name]

    np.testing.assert_allclose(unscale("a^3"), expected["a^3"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(unscale("a*b"), expected["a b"], rtol=1e-6, atol=1e-9)
    temporal = pipe.steps[3]
    assert temporal.first_epoch == frame.mjd.min()
    np.testing.assert_allclose(unscale("mjd_days"), frame.mjd - frame.mjd.min(), atol=1e-6)
    assert np.allclose(np.hypot(unscale("mjd_doy_sin"), unscale("mjd_doy_cos")), 1.0)
    assert to_mjd(np.array(["1970-01-01T00:00:00", "2000-01-01T12:00:00", "garbage"], dtype=object))[:2].tolist() == [40587.0, 51544.5]


def test_validation_quarantines_out_of_range_rows_with_column_and_reason():
    frame = toy(100)
    frame.loc[3, "a"] = 500.0
    frame.loc[4, "b"] = -1.0
    frame.loc[5, "y"] = np.nan
    frame.loc[6, "parallax"] = np.inf
    pipe = fitted(frame)
    failing, columns, reasons = pipe.quarantine(frame)
    assert np.flatnonzero(failing).tolist() == [3, 4, 5, 6]
    assert columns.tolist() == ["a", "b", "y", "parallax"]
    assert "physical range [-100, 100]" in reasons[0] and reasons[2] == "target missing or not finite"
    assert fitted(frame.drop(index=[3, 4, 5, 6])).steps[-1].center == pipe.steps[-1].center  # quarantined rows never fit
    assert np.isnan(pipe.transform_columns(frame.iloc[[3]])["a"]).sum() == 0  # prediction: missing, imputed
    assert not fitted(frame, validate=False).quarantine(frame)[0][[3, 4, 6]].any()


def test_federated_fit_equals_pooled_fit_for_every_learned_state():
    frame = toy(30_000)
    options = dict(features=("distance_pc", "temporal", "interactions"), time_column="mjd", outliers="iqr", outlier_action="clip")
    shares = [frame.iloc[i::3] for i in range(3)]
    template = Pipeline.build(TASK, options=Options(**options))
    merged = ColumnStatistics.merge([template.compute_statistics(s) for s in shares])
    federated = Pipeline.build(TASK, options=Options(**options)).fit_statistics(merged).state_dict()
    pooled = Pipeline.build(TASK, options=Options(**options)).fit(frame).state_dict()
    assert json.dumps(federated["steps"][:-1]) == json.dumps(pooled["steps"][:-1])  # quantile states: identical
    for key in ("center", "scale"):
        for name, value in pooled["steps"][-1]["state"][key].items():
            assert federated["steps"][-1]["state"][key][name] == pytest.approx(value, rel=1e-9), name
    assert federated["target"]["mean"] == pytest.approx(pooled["target"]["mean"], rel=1e-12)


def test_pipeline_state_round_trip_gives_identical_features(absmag_frame):
    task = get_task("hipparcos_absmag")
    pipe = Pipeline.build(task).fit(absmag_frame)
    a, b = pipe.transform_features(absmag_frame), roundtrip(pipe).transform_features(absmag_frame)
    assert a.dtype == np.float32 and a.shape == (len(absmag_frame), len(task.inputs) + len(task.derived))
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all()
    one_row = {name: absmag_frame[name].to_numpy()[:1] for name in task.input_names}
    np.testing.assert_array_equal(pipe.transform_features(one_row), a[:1])
    assert np.abs(np.median(a, axis=0)).max() < 0.05


def test_derived_hipparcos_formulas():
    assert galactic_latitude_sin(np.radians([192.85948]), np.radians([27.12825]))[0] == pytest.approx(1.0, abs=1e-8)
    assert galactic_latitude_sin(np.radians([266.40499]), np.radians([-28.93617]))[0] == pytest.approx(0.0, abs=1e-6)
    assert reduced_proper_motion(np.array([10.0]), np.array([1000.0]))[0] == pytest.approx(15.0)


@pytest.mark.parametrize("edit,field", [
    (lambda s: s["steps"][-1]["state"]["scale"].update(a=0.0), "steps[3].state.scale.a: expected a non-zero finite number"),
    (lambda s: s["steps"][-1]["state"]["center"].update(a=float("nan")), "steps[3].state.center.a: expected a finite number"),
    (lambda s: s["steps"][1].update(kind="magic"), "steps[1].kind: expected one of"),
    (lambda s: s["steps"][-1]["state"].update(bogus=1), "steps[3].state: expected only the fields"),
    (lambda s: s["steps"][-1]["state"].pop("center"), "steps[3].state.center: expected a value (field missing)"),
    (lambda s: s["steps"][-2]["state"]["fill"].pop("b"), "steps[2].state.fill: expected a value for every column"),
    (lambda s: s["target"].update(std="x"), "target.state.std: expected a number"),
])
def test_preprocessing_json_is_checked_field_by_field(edit, field):
    state = json.loads(json.dumps(fitted(toy(500)).state_dict()))
    edit(state)
    with pytest.raises(DataError) as err:
        Pipeline.from_state(state)
    message = str(err.value)
    assert field in message
    assert "\n" not in message and message.startswith("preprocessing.json: ")


def test_legacy_median_imputer_state_loads(absmag_frame):
    state = json.loads(json.dumps(Pipeline.build(get_task("hipparcos_absmag")).fit(absmag_frame).state_dict()))
    imputer = state["steps"][2]
    state["steps"][2] = {"kind": "median_imputer", "state": {"columns": imputer["state"]["columns"], "medians": imputer["state"]["fill"]}}
    del state["validate"]
    current = Pipeline.build(get_task("hipparcos_absmag")).fit(absmag_frame)
    np.testing.assert_array_equal(Pipeline.from_state(state).transform_features(absmag_frame[:50]),
                                  current.transform_features(absmag_frame[:50]))


def test_hash_split_is_uniform_and_depends_on_id_only():
    ids = np.arange(200_000)
    u = hash_unit(ids, seed=3, salt=1)
    assert abs((u < 0.2).mean() - 0.2) < 0.005 and u.min() >= 0 and u.max() < 1
    np.testing.assert_array_equal(hash_unit(ids[::-1], 3, 1), u[::-1])
    assert not np.array_equal(hash_unit(ids, 4, 1), u)
    strings = ids.astype(str).astype(object)
    np.testing.assert_array_equal(hash_unit(strings[:10], 3, 1), hash_unit(strings[:10].copy(), 3, 1))


def forest_frame():
    frame = toy(5000).dropna().reset_index(drop=True)
    frame.loc[:20, "b"] = 1e3  # planted anomalies
    return frame, frame[["a", "b", "parallax"]].to_numpy()


def test_isolation_forest_from_statistics_is_the_nodes_own_and_stays_on_the_node():
    from sklearn.ensemble import IsolationForest

    frame, x = forest_frame()
    options = Options(outliers="isolation_forest", outlier_threshold=0.6, outlier_action="drop", seed=4)
    pipe = Pipeline.build(TASK, options=options)
    pipe.fit_statistics(pipe.compute_statistics(frame))  # federated fitting: statistics only, no rows
    dropped = pipe.outlier_rows(frame)
    reference = -IsolationForest(n_estimators=100, random_state=4).fit(x).score_samples(x) > 0.6
    np.testing.assert_array_equal(dropped, reference)
    assert dropped[:21].all() and dropped.mean() < 0.05
    state = json.loads(json.dumps(pipe.state_dict()))
    assert state["steps"][3] == {"kind": "isolation_forest",
                                 "state": {"columns": ["a", "b", "parallax"], "threshold": 0.6, "seed": 4, "action": "drop", "forest": None}}
    assert len(roundtrip(pipe).transform_features(frame)) == len(frame)  # prediction never drops
    flagging = Pipeline.build(TASK, options=Options(**{**options.__dict__, "outlier_action": "flag"}))
    flagging.fit_statistics(flagging.compute_statistics(frame))
    with pytest.raises(DataError, match="preprocess.reference"):  # a node's own forest cannot flag in prediction
        flagging.transform_features(frame)
    with pytest.raises(ConfigError, match="outlier_action"):
        fitted(frame, outliers="isolation_forest", outlier_threshold=0.6, outlier_action="clip")


def test_isolation_forest_fitted_on_a_table_travels_in_preprocessing_json_and_flags_in_prediction():
    from sklearn.ensemble import IsolationForest

    frame, x = forest_frame()
    expected = -IsolationForest(n_estimators=100, random_state=4).fit(x).score_samples(x) > 0.6
    pipe = fitted(frame, outliers="isolation_forest", outlier_threshold=0.6, outlier_action="flag", seed=4)
    assert pipe.features[-1] == "outlier" and not pipe.outlier_rows(frame).any()  # flag: no training row dropped
    loaded = roundtrip(pipe)  # the forest's trees are in the JSON state
    assert len(loaded.steps[3].forest["trees"]) == 100
    features = loaded.transform_features(frame)
    np.testing.assert_array_equal(features[:, -1] == 1.0, expected)
    single = loaded.transform_features(frame.iloc[[0, 100]])  # one star at a time, as predict and serve do
    np.testing.assert_array_equal(single[:, -1], [1.0, float(expected[100])])
    dropping = roundtrip(fitted(frame, outliers="isolation_forest", outlier_threshold=0.6, outlier_action="drop", seed=4))
    np.testing.assert_array_equal(dropping.outlier_rows(frame), expected)
    assert len(dropping.transform_features(frame)) == len(frame)  # prediction never drops

    state = json.loads(json.dumps(pipe.state_dict()))
    tree = state["steps"][3]["state"]["forest"]["trees"][7]
    tree["left"][0] = 0  # a cycle: scoring would never end
    with pytest.raises(DataError, match=r"steps\[3\].state.forest.trees\[7\].left/right"):
        Pipeline.from_state(state)
    state = json.loads(json.dumps(pipe.state_dict()))
    state["steps"][3]["state"]["forest"]["trees"][2]["feature"][0] = 9
    with pytest.raises(DataError, match=r"trees\[2\].feature: expected column indices in \[0, 3\)"):
        Pipeline.from_state(state)
    state = json.loads(json.dumps(pipe.state_dict()))
    chain = 13  # inner node 2k, its leaf 2k+1, the next inner node 2k+2: 13 levels (scoring pads to 2^13 per tree)
    state["steps"][3]["state"]["forest"]["trees"][0] = {
        "left": [k + 1 if k % 2 == 0 and k < 2 * chain else -1 for k in range(2 * chain + 1)],
        "right": [k + 2 if k % 2 == 0 and k < 2 * chain else -1 for k in range(2 * chain + 1)],
        "feature": [0] * (2 * chain + 1), "threshold": [0.0] * (2 * chain + 1), "leaf_depth": [1.0] * (2 * chain + 1)}
    with pytest.raises(DataError, match=r"trees\[0\]: expected a tree at most 12 levels deep, got '13'"):
        Pipeline.from_state(state)


def test_config_keys_shape_the_pipeline():
    from astroscale_fl import config, run_config
    from astroscale_fl.errors import ConfigError

    overrides = ["task=catalog", "task.path=x.parquet", "task.features=[ra,dec,parallax]", "task.target=z", "preprocess.clip=null",
                 "preprocess.scaling=minmax", "preprocess.impute=ffill", "preprocess.order_by=mjd", "preprocess.outliers=iqr",
                 "preprocess.outlier_action=flag", "preprocess.features=[distance_pc,temporal,polynomial]", "preprocess.time_column=mjd",
                 "preprocess.feature_columns=[dec]", "preprocess.polynomial_degree=3", "preprocess.validate=false"]
    cfg = run_config.validate(config.compose(overrides))
    pipe = Pipeline.from_config(get_task(cfg.task), cfg)
    assert [s.kind for s in pipe.steps] == ["range_validator", "derived_features", "distance_pc", "temporal", "polynomial",
                                            "imputer", "outliers", "scaler"]
    assert pipe.inputs == ["ra", "dec", "parallax", "parallax_error", "mjd"] and not pipe.validate
    assert pipe.features[-1] == "outlier" and "dec^3" in pipe.features and pipe.steps[-1].clip is None
    assert pipe.steps[0].ranges["dec"] == [-90.0, 90.0]  # the survey schema's physical range, by column name
    for bad, key in (("preprocess.impute=ffill", "preprocess.order_by"), ("preprocess.outliers=lof", "preprocess.outliers"),
                     ("preprocess.features=[magic]", "preprocess.features"), ("preprocess.chunk_rows=0", "preprocess.chunk_rows")):
        with pytest.raises(ConfigError, match=key):
            run_config.validate(config.compose(overrides[:4] + [bad]))
