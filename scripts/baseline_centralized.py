#!/usr/bin/env python
"""Centralized baselines for a task: gradient boosting and a linear fit on the pooled training rows.

Uses the same task, held-out test split and preprocessing features as `astroscale-fl train`, so
its R² is directly comparable with a federated run's `test_r2`. Needs scikit-learn (dev extra).

    python scripts/baseline_centralized.py                       # hipparcos_absmag
    python scripts/baseline_centralized.py task=survey_redshift task.n_stars=200000
"""

from __future__ import annotations

import sys
import time


def main(overrides: list[str]) -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import LinearRegression

    from astroscale_fl import config, run_config
    from astroscale_fl.data.nodes import task_split
    from astroscale_fl.data.tasks import get_task
    from astroscale_fl.learning.metrics import r2_score, rmse
    from astroscale_fl.preprocessing import Pipeline

    cfg = run_config.validate(config.compose(overrides))
    task = get_task(cfg.task)
    train, test = task_split(cfg)
    pipeline = Pipeline.from_config(task, cfg).fit(train)
    x_train, x_test = pipeline.transform_features(train), pipeline.transform_features(test)
    y_train, y_test = train[task.target].to_numpy(), test[task.target].to_numpy()
    scale = 299_792.458 if task.name == "survey_redshift" else 1.0  # report z as km/s
    unit = "km/s" if scale != 1.0 else task.target_unit
    print(f"task={task.name}: {len(train)} training rows, {len(test)} test rows, {x_train.shape[1]} features")
    models = {
        "linear regression": LinearRegression(),
        "gradient boosting": HistGradientBoostingRegressor(max_iter=500, learning_rate=0.1, random_state=int(cfg.seed)),
    }
    for name, model in models.items():
        start = time.perf_counter()
        model.fit(x_train, y_train * scale)
        pred = model.predict(x_test) / scale
        print(f"  {name:18s} test R² = {r2_score(y_test, pred):.4f}  RMSE = {rmse(y_test, pred) * scale:.4f} {unit}"
              f"  ({time.perf_counter() - start:.1f} s)")
    if "expected_z" in test.columns:
        print(f"  {'simulator ceiling':18s} test R² = {r2_score(y_test, test['expected_z'].to_numpy()):.4f}"
              f"  RMSE = {rmse(y_test, test['expected_z'].to_numpy()) * scale:.4f} {unit}  (E[z | true position, distance, population])")


if __name__ == "__main__":
    main(sys.argv[1:])
