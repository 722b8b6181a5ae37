"""The schema of ``preprocessing.json``: every step kind, its fields and their types, checked on load.

A hand-edited or corrupted file fails with one line naming the field (``steps[3].state.scale.teff:
expected a non-zero finite number, got 0.0``) instead of loading a pipeline that divides by zero or
drops columns silently. Files written before steps had their current names load too
(``median_imputer`` -> ``imputer``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from astroscale_fl.errors import DataError
from astroscale_fl.preprocessing.forest import check_forest

FILE = "preprocessing.json"


def _fail(path: str, expected: str, got: Any) -> None:
    raise DataError(f"{FILE}: {path}: expected {expected}, got {str(got)[:80]!r}")


def _number(path, value, finite=True, nonzero=False, positive=False, integer=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        _fail(path, "an integer" if integer else "a number", value)
    value = float(value)
    if math.isnan(value) or (finite and not math.isfinite(value)):
        _fail(path, "a finite number" if finite else "a number (not NaN)", value)
    if nonzero and value == 0:
        _fail(path, "a non-zero finite number", value)
    if positive and not value > 0:
        _fail(path, "a positive number", value)
    return value


def _string(path, value) -> str:
    if not isinstance(value, str) or not value:
        _fail(path, "a column name (non-empty string)", value)
    return value


def _names(path, value) -> list[str]:
    if not isinstance(value, list):
        _fail(path, "a list of column names", value)
    return [_string(f"{path}[{i}]", v) for i, v in enumerate(value)]


def _choice(options) -> Callable:
    def check(path, value):
        if value not in options:
            _fail(path, f"one of {list(options)}", value)
        return value
    return check


def _optional(check: Callable) -> Callable:
    return lambda path, value: None if value is None else check(path, value)


def _mapping(check: Callable, keys_from: str | None = None) -> Callable:
    """A dict of column -> value; with ``keys_from``, it must cover that field's columns."""
    def run(path, value, state=None):
        if not isinstance(value, dict):
            _fail(path, "an object of column -> value", value)
        if keys_from is not None and state is not None:
            missing = [c for c in state.get(keys_from, []) if c not in value]
            if missing:
                _fail(path, f"a value for every column of {keys_from}", f"missing {missing}")
        return {k: check(f"{path}.{k}", v) for k, v in value.items()}
    run.needs_state = True  # type: ignore[attr-defined]
    return run


def _range(path, value) -> list[float]:
    if not isinstance(value, list) or len(value) != 2:
        _fail(path, "[low, high]", value)
    lo, hi = (_number(f"{path}[{i}]", v, finite=False) for i, v in enumerate(value))
    if lo > hi:
        _fail(path, "low <= high", value)
    return [lo, hi]


_finite = _number


def _nonzero(path: str, value):
    return _number(path, value, nonzero=True)


def _any_number(path: str, value):
    return _number(path, value, finite=False)


def _count(path: str, value) -> int:
    return int(_number(path, value, integer=True))

def _forest(path: str, value, state=None):
    columns = state.get("columns") if isinstance(state, dict) else None
    return None if value is None else check_forest(path, value, len(columns) if isinstance(columns, list) else None)


_forest.needs_state = True  # type: ignore[attr-defined]

#: step kind -> {field: (checker, required)}
FIELDS: dict[str, dict[str, tuple[Callable, bool]]] = {
    "range_validator": {"ranges": (_mapping(_range), True), "invalid_counts": (_mapping(_count), False)},
    "derived_features": {"names": (_names, True)},
    "distance_pc": {"parallax": (_string, True), "parallax_error": (_string, True), "min_snr": (_finite, True)},
    "polynomial": {"columns": (_names, True), "degree": (lambda p, v: int(_number(p, v, integer=True, positive=True)), True)},
    "interactions": {"columns": (_names, True)},
    "temporal": {"column": (_string, True), "first_epoch": (_finite, True)},
    "imputer": {"columns": (_names, True), "method": (_choice(("median", "mean", "ffill", "bfill", "interpolate")), True),
                "order_by": (_optional(_string), False), "fill": (_mapping(_finite, "columns"), True)},
    "outliers": {"columns": (_names, True), "method": (_choice(("zscore", "iqr")), True),
                 "threshold": (lambda p, v: _number(p, v, positive=True), True), "action": (_choice(("drop", "clip", "flag")), True),
                 "low": (_mapping(_any_number, "columns"), True), "high": (_mapping(_any_number, "columns"), True)},
    "isolation_forest": {"columns": (_names, True), "threshold": (lambda p, v: _number(p, v, positive=True), True),
                         "seed": (_count, True), "action": (_choice(("drop", "flag")), False), "forest": (_forest, False)},
    "scaler": {"columns": (_names, True), "method": (_choice(("robust", "standard", "minmax")), True),
               "clip": (_optional(lambda p, v: _number(p, v, positive=True)), False),
               "center": (_mapping(_finite, "columns"), True), "scale": (_mapping(_nonzero, "columns"), True)},
    "target_scaler": {"target": (_string, True), "mean": (_finite, True), "std": (_nonzero, True)},
}
LEGACY = {"median_imputer": ("imputer", lambda s: {"columns": s.get("columns"), "method": "median", "order_by": None,
                                                   "fill": s.get("medians")})}


def validate_step(path: str, kind: Any, state: Any) -> tuple[str, dict[str, Any]]:
    """(kind, checked state) of one step; raises a one-line DataError naming the bad field."""
    if kind in LEGACY and isinstance(state, dict):
        kind, state = LEGACY[kind][0], LEGACY[kind][1](state)
    if kind not in FIELDS:
        _fail(f"{path}.kind", f"one of {sorted(FIELDS)}", kind)
    if not isinstance(state, dict):
        _fail(f"{path}.state", "an object", state)
    spec = FIELDS[kind]
    unknown = [k for k in state if k not in spec]
    if unknown:
        _fail(f"{path}.state", f"only the fields {sorted(spec)}", f"unknown {unknown}")
    out = {}
    for name, (check, required) in spec.items():
        if name not in state:
            if required:
                _fail(f"{path}.state.{name}", "a value (field missing)", None)
            continue
        where = f"{path}.state.{name}"
        out[name] = check(where, state[name], state) if getattr(check, "needs_state", False) else check(where, state[name])
    if kind == "scaler":
        out.setdefault("clip", None)  # models exported before clipping existed
    return kind, out


def validate_pipeline(state: Any) -> dict[str, Any]:
    """A checked copy of a pipeline's state (see :meth:`Pipeline.state_dict`)."""
    if not isinstance(state, dict):
        _fail("(top level)", "an object", type(state).__name__)
    for key in ("inputs", "features", "steps", "target"):
        if key not in state:
            _fail(key, "a value (field missing)", None)
    inputs, features = _names("inputs", state["inputs"]), _names("features", state["features"])
    if not features:
        _fail("features", "at least one feature", features)
    if not isinstance(state["steps"], list):
        _fail("steps", "a list of {kind, state}", state["steps"])
    steps = []
    for i, step in enumerate(state["steps"]):
        if not isinstance(step, dict):
            _fail(f"steps[{i}]", "an object {kind, state}", step)
        kind, checked = validate_step(f"steps[{i}]", step.get("kind"), step.get("state"))
        steps.append({"kind": kind, "state": checked})
    _, target = validate_step("target", "target_scaler", state["target"])
    validate = state.get("validate", True)
    if not isinstance(validate, bool):
        _fail("validate", "true or false", validate)
    return {"inputs": inputs, "features": features, "steps": steps, "target": target, "validate": validate}
