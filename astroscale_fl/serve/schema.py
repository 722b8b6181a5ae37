"""Request validation for the predict service: JSON bodies in, float values in card order out.

Every refusal is an :class:`Invalid` carrying the HTTP status and a FastAPI-style ``detail``
list (``{"loc": ["body", field], "msg": ..., "type": ...}``). An answer lists at most
:data:`MAX_LISTED_ERRORS` errors and echoes no client input in bulk: unknown keys beyond the
cap are counted in one summary error, long keys and values are cut to :data:`MAX_ECHO_CHARS`
and lists or objects are described, never repeated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from astroscale_fl.errors import one_line

#: At most this many errors are listed in one 422 answer.
MAX_LISTED_ERRORS = 100
#: Client strings (keys, values) are echoed up to this many characters.
MAX_ECHO_CHARS = 80

_MISSING = object()
_TYPE_NAMES = {str: "string", type(None): "null", list: "list", dict: "object", bool: "boolean"}


class Invalid(Exception):
    """A request the service refuses: HTTP status and a JSON-able ``detail``."""

    def __init__(self, status: int, detail: Any):
        super().__init__(detail)
        self.status = status
        self.detail = detail

    def body(self) -> bytes:
        """The JSON answer ``{"detail": ...}``."""
        return json.dumps({"detail": self.detail}, allow_nan=False).encode()


def _short(text: str) -> str:
    return text[:MAX_ECHO_CHARS] + "..." if len(text) > MAX_ECHO_CHARS else text


def _shown(value: Any) -> Any:
    """A client value as it may appear in an answer: scalars (strings cut short), else a description."""
    if isinstance(value, str):
        return _short(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (bool, float)) or value is None:
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**20 else _short(str(value))
    return f"<{_TYPE_NAMES.get(type(value), type(value).__name__)} of {len(value)} items>"


def _error(loc: Sequence[Any], msg: str, kind: str, value: Any = _MISSING) -> dict[str, Any]:
    """One FastAPI-style validation error."""
    out: dict[str, Any] = {"loc": ["body", *loc], "msg": msg, "type": kind}
    if value is not _MISSING:
        out["input"] = _shown(value)
    return out


def _bound(value: Any, default: float) -> float:
    return default if value is None else float(value)


def _fmt(x: float) -> str:
    return f"{x:.12g}" if math.isfinite(x) else ("inf" if x > 0 else "-inf")


class InputSchema:
    """Request validation built from a model card's ordered ``inputs`` and ``valid_range``."""

    def __init__(self, card_inputs: Sequence[dict[str, Any]]):
        self.names = [f["name"] for f in card_inputs]
        self.name_set = frozenset(self.names)
        self.ranges: dict[str, tuple[float, float]] = {}
        for f in card_inputs:
            low, high = (list(f.get("valid_range") or [None, None]) + [None, None])[:2]
            self.ranges[f["name"]] = (_bound(low, -math.inf), _bound(high, math.inf))

    def field_errors(self, name: str, value: Any, loc: Sequence[Any]) -> dict[str, Any] | None:
        """The error for one field value, or None when it is a valid number in range."""
        if value is _MISSING:
            return _error([*loc, name], "Field required", "missing")
        kind = type(value)
        if kind is bool or not (kind is float or kind is int):
            what = _TYPE_NAMES.get(kind, kind.__name__)
            return _error([*loc, name], f"Input should be a number, got {what}", "float_type", value)
        try:
            x = float(value)
        except OverflowError:
            x = math.inf
        if not math.isfinite(x):
            return _error([*loc, name], "Input should be a finite number", "finite_number", value)
        low, high = self.ranges[name]
        if x < low:
            return _error([*loc, name], f"Input should be greater than or equal to {_fmt(low)} (valid range [{_fmt(low)}, {_fmt(high)}])", "greater_than_equal", value)
        if x > high:
            return _error([*loc, name], f"Input should be less than or equal to {_fmt(high)} (valid range [{_fmt(low)}, {_fmt(high)}])", "less_than_equal", value)
        return None

    def row_errors(self, obj: Any, loc: Sequence[Any] = (), limit: int = MAX_LISTED_ERRORS) -> list[dict[str, Any]]:
        """The problems of one request object (missing, wrongly typed, out of range, unknown), at most ``limit``.

        Unknown fields past the limit are counted in one last error instead of being listed.
        """
        if type(obj) is not dict:
            return [_error(list(loc), f"Input should be an object with the fields {self.names}", "model_attributes_type")]
        errors = [e for name in self.names if (e := self.field_errors(name, obj.get(name, _MISSING), loc))][:limit]
        unknown = [key for key in obj if key not in self.name_set]
        room = max(limit - len(errors) - (1 if len(errors) + len(unknown) > limit else 0), 0)
        for key in unknown[:room]:
            errors.append(_error([*loc, _short(key)], f"Extra inputs are not permitted (unknown field {_short(key)!r}; expected {self.names})",
                                 "extra_forbidden", obj[key]))
        if len(unknown) > room and len(errors) < limit:
            errors.append(_error(list(loc), f"{len(unknown) - room} more unknown fields not listed (expected only {self.names})", "extra_forbidden"))
        return errors

    def row(self, obj: Any) -> list[float]:
        """Values of one object in card order; raises :class:`Invalid` (422) listing its problems."""
        if type(obj) is dict and len(obj) == len(self.names):
            values = []
            for name in self.names:
                value = obj.get(name, _MISSING)
                kind = type(value)
                if kind is not float and kind is not int:
                    break
                try:
                    x = float(value)
                except OverflowError:
                    break
                low, high = self.ranges[name]
                if not low <= x <= high:  # NaN fails this too
                    break
                values.append(x)
            else:
                return values
        raise Invalid(422, self.row_errors(obj) or [_error([], "invalid input", "value_error")])

    def columns(self, rows: Any, max_rows: int) -> dict[str, np.ndarray]:
        """A batch (list of objects) as float64 columns in card order; raises :class:`Invalid`."""
        if type(rows) is not list:
            raise Invalid(422, [_error([], "Input should be a JSON list of objects (one per star)", "list_type")])
        if not rows:
            raise Invalid(422, [_error([], "batch is empty; send at least one object", "too_short")])
        if len(rows) > max_rows:
            raise Invalid(413, f"batch of {len(rows)} rows is larger than the limit of {max_rows} rows (--max-batch); split it")
        n = len(self.names)
        ok = all(type(r) is dict and len(r) == n for r in rows)
        out: dict[str, np.ndarray] = {}
        if ok:
            for name in self.names:
                column = [r.get(name, _MISSING) for r in rows]
                kinds = set(map(type, column))
                if not kinds <= {float, int}:
                    ok = False
                    break
                try:
                    values = np.array(column, dtype=np.float64)
                except (OverflowError, ValueError):
                    ok = False
                    break
                low, high = self.ranges[name]
                if not ((values >= low) & (values <= high)).all():  # NaN fails too
                    ok = False
                    break
                out[name] = values
        if ok:
            return out
        errors: list[dict[str, Any]] = []
        for i, r in enumerate(rows):
            errors.extend(self.row_errors(r, [i], MAX_LISTED_ERRORS - len(errors)))
            if len(errors) >= MAX_LISTED_ERRORS:
                break
        raise Invalid(422, errors or [_error([], "invalid input", "value_error")])


def parse_json(body: bytes) -> Any:
    """Decode a request body; malformed JSON (or too deep, or a huge integer) is a 422."""
    if not body:
        raise Invalid(422, [_error([], "request body is empty; expected JSON", "json_invalid")])
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise Invalid(422, [_error([exc.pos], f"JSON decode error: {exc.msg} (line {exc.lineno} column {exc.colno})", "json_invalid")]) from None
    except (ValueError, RecursionError) as exc:  # bad UTF-8, >4300-digit integers, deep nesting
        raise Invalid(422, [_error([], f"JSON decode error: {_short(one_line(str(exc))) or type(exc).__name__}", "json_invalid")]) from None
