"""HTTP predict service for an exported model (``astroscale-fl serve``).

    astroscale-fl serve [--model DIR|TASK] [--host 127.0.0.1] [--port 8080]

Endpoints (JSON in, JSON out; the request fields are the model card's ``inputs``):

- ``POST /predict``: one object ``{"<input>": number, ...}`` -> ``{"predicted_<target>": float}``;
- ``POST /predict/batch``: a list of such objects -> ``{"predicted_<target>": [float, ...]}``
  (in request order; one invalid row rejects the whole batch with 422 naming every bad row);
- ``GET /healthz``: ``{"status": "ok", ...}`` with the task, inputs (unit, valid range) and output;
- ``GET /metrics``: Prometheus text (request counts, latency histogram, predictions).

Invalid input never reaches the model: a missing field, a non-number (strings and booleans
included), NaN/Infinity, a value outside the model card's ``valid_range`` (inclusive) or an
unknown field gets 422 ``{"detail": [{"loc": ["body", field], "msg": ..., "type": ...}]}``
(batch rows: ``["body", row, field]``). A body larger than ``--max-body-bytes`` or a batch of
more than ``--max-batch`` rows gets 413. CORS is open to any origin unless ``--cors-origins``.

Predictions are the same numbers ``scripts/predict.py`` prints: one star goes through
:meth:`Predictor.predict_frame` alone. With ``--micro-batch``, single-star requests arriving
within ``--batch-window-ms`` share one forward pass (answers then agree with the script to
float32 rounding, ~1e-6 relative, not bit for bit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from astroscale_fl.errors import DataError, one_line, report_user_errors

DEFAULT_TASK = "survey_redshift"
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_BATCH = 10_000
#: Batches at least this large run in a worker thread so that single stars keep flowing.
THREAD_OFFLOAD_ROWS = 2048
#: At most this many errors are listed in one 422 answer.
MAX_LISTED_ERRORS = 100
#: Latency buckets in seconds: fine from 0.25 ms (the service answers in about a millisecond).
LATENCY_BUCKETS = (0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075,
                   0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
ENDPOINTS = ("/predict", "/predict/batch", "/healthz", "/metrics")

log = logging.getLogger("astroscale_fl.serve")
_MISSING = object()
_JSON = "application/json"


# --- validation -----------------------------------------------------------------------------


class Invalid(Exception):
    """A request the service refuses: HTTP status and a JSON-able ``detail``."""

    def __init__(self, status: int, detail: Any):
        super().__init__(detail)
        self.status = status
        self.detail = detail

    def body(self) -> bytes:
        return json.dumps({"detail": self.detail}, allow_nan=False).encode()


def _error(loc: Sequence[Any], msg: str, kind: str, value: Any = _MISSING) -> dict[str, Any]:
    """One FastAPI-style validation error."""
    out: dict[str, Any] = {"loc": ["body", *loc], "msg": msg, "type": kind}
    if value is not _MISSING:
        shown = value if _json_safe(value) else repr(value)
        out["input"] = shown[:80] + "..." if isinstance(shown, str) and len(shown) > 80 else shown
    return out


def _json_safe(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return True
    return False  # lists/objects: shown as their repr, never echoed whole


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
            what = "boolean" if kind is bool else {str: "string", type(None): "null", list: "list", dict: "object"}.get(kind, kind.__name__)
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

    def row_errors(self, obj: Any, loc: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Every problem of one request object (missing, wrongly typed, out of range, unknown)."""
        if type(obj) is not dict:
            return [_error(list(loc), f"Input should be an object with the fields {self.names}", "model_attributes_type")]
        errors = [e for name in self.names if (e := self.field_errors(name, obj.get(name, _MISSING), loc))]
        for key in obj:
            if key not in self.name_set:
                errors.append(_error([*loc, key], f"Extra inputs are not permitted (unknown field {key!r}; expected {self.names})", "extra_forbidden", obj[key]))
        return errors

    def row(self, obj: Any) -> list[float]:
        """Values of one object in card order; raises :class:`Invalid` (422) listing every problem."""
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
            errors.extend(self.row_errors(r, [i]))
            if len(errors) >= MAX_LISTED_ERRORS:
                break
        raise Invalid(422, errors[:MAX_LISTED_ERRORS] or [_error([], "invalid input", "value_error")])


def parse_json(body: bytes) -> Any:
    """Decode a request body; malformed JSON (or too deep, or a huge integer) is a 422."""
    if not body:
        raise Invalid(422, [_error([], "request body is empty; expected JSON", "json_invalid")])
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise Invalid(422, [_error([exc.pos], f"JSON decode error: {exc.msg} (line {exc.lineno} column {exc.colno})", "json_invalid")]) from None
    except (ValueError, RecursionError) as exc:  # bad UTF-8, >4300-digit integers, deep nesting
        raise Invalid(422, [_error([], f"JSON decode error: {one_line(str(exc)) or type(exc).__name__}", "json_invalid")]) from None


# --- prediction -----------------------------------------------------------------------------


class Service:
    """Validation + prediction for one loaded :class:`~astroscale_fl.predict.Predictor`.

    The request handlers are thin wrappers around :meth:`predict_single_body` and
    :meth:`predict_batch_body`, which the benchmark also times in process.
    """

    def __init__(self, predictor, max_batch: int = DEFAULT_MAX_BATCH):
        self.predictor = predictor
        self.schema = InputSchema(predictor.card["inputs"])
        if self.schema.names != list(predictor.inputs):
            raise DataError(f"{predictor.model_dir}: model card inputs {self.schema.names} differ from the pipeline's {predictor.inputs}")
        self.output_name = predictor.output_name
        self.max_batch = int(max_batch)
        self.columns_as_mapping = self._mapping_is_exact()

    def _frame_input(self, columns: dict[str, np.ndarray]):
        if self.columns_as_mapping:
            return columns
        import pandas as pd

        return pd.DataFrame(columns, copy=False)

    def _mapping_is_exact(self) -> bool:
        """Whether ``predict_frame`` takes ``{column: array}`` and agrees with a DataFrame exactly.

        Columns skip building a DataFrame (the bulk of one star's time) once the pipeline
        accepts a mapping; until then, or if answers would differ, a DataFrame is used.
        """
        import pandas as pd

        mid = [(lo + hi) / 2 if math.isfinite(lo + hi) else (lo if math.isfinite(lo) else (hi if math.isfinite(hi) else 0.0))
               for lo, hi in (self.schema.ranges[n] for n in self.schema.names)]
        probe = {n: np.array([v, v], dtype=np.float64) for n, v in zip(self.schema.names, mid)}
        try:
            expected = self.predictor.predict_frame(pd.DataFrame(probe))
        except Exception as exc:  # refuse to start rather than answer 500 to every request
            raise DataError(f"{self.predictor.model_dir}: the model cannot predict "
                            f"({type(exc).__name__}: {one_line(str(exc))})") from None
        try:
            got = self.predictor.predict_frame(probe)
        except Exception:  # the pipeline needs a DataFrame
            return False
        return bool(np.array_equal(np.asarray(got), np.asarray(expected), equal_nan=True))

    def predict_columns(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """Predictions for validated float64 columns (card order)."""
        import torch

        with torch.inference_mode():
            return np.asarray(self.predictor.predict_frame(self._frame_input(columns)), dtype=np.float64)

    def predict_rows(self, rows: list[list[float]]) -> np.ndarray:
        """Predictions for validated rows of values in card order (micro-batches)."""
        matrix = np.array(rows, dtype=np.float64).reshape(len(rows), len(self.schema.names))
        return self.predict_columns({n: np.ascontiguousarray(matrix[:, j]) for j, n in enumerate(self.schema.names)})

    def predict_values(self, values: list[float]) -> float:
        """One star: validated values in card order -> prediction."""
        return float(self.predict_columns({n: np.array([v], dtype=np.float64) for n, v in zip(self.schema.names, values)})[0])

    def encode(self, value: float | list[float]) -> bytes:
        try:
            return json.dumps({self.output_name: value}, allow_nan=False).encode()
        except ValueError:
            raise Invalid(500, "the model produced a non-finite prediction") from None

    def parse_single(self, body: bytes) -> list[float]:
        obj = parse_json(body)
        if type(obj) is list:
            raise Invalid(422, [_error([], "Input should be an object; send a list to /predict/batch", "model_attributes_type")])
        return self.schema.row(obj)

    def parse_batch(self, body: bytes) -> dict[str, np.ndarray]:
        return self.schema.columns(parse_json(body), self.max_batch)

    def predict_single_body(self, body: bytes) -> bytes:
        """The whole single-star path without HTTP: body -> answer; raises :class:`Invalid`."""
        return self.encode(self.predict_values(self.parse_single(body)))

    def predict_batch_body(self, body: bytes) -> bytes:
        return self.encode(self.predict_columns(self.parse_batch(body)).tolist())

    def health(self) -> dict[str, Any]:
        card = self.predictor.card

        def finite(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {
            "status": "ok",
            "model": str(self.predictor.model_dir),
            "task": card.get("task"),
            "created": card.get("created"),
            "output": self.output_name,
            "target": card.get("target"),
            "inputs": [{"name": f["name"], "unit": f.get("unit"),
                        "valid_range": [finite(v) for v in self.schema.ranges[f["name"]]]} for f in card["inputs"]],
        }


class MicroBatcher:
    """Coalesce single-star requests that arrive within ``window_s`` into one forward pass.

    ``submit(values)`` returns a future resolved with that caller's own prediction. A batch is
    flushed when the window closes (``window_s == 0``: at the next event-loop turn, i.e. what
    arrived together) or when it reaches ``max_rows``. Runs on the event loop: a forward pass
    of a few hundred rows costs about as much as one.
    """

    def __init__(self, predict_rows: Callable[[list[list[float]]], np.ndarray], window_s: float = 0.001,
                 max_rows: int = 256, on_flush: Callable[[int], None] | None = None):
        self.predict_rows = predict_rows
        self.window_s = float(window_s)
        self.max_rows = int(max_rows)
        self.on_flush = on_flush
        self._pending: list[tuple[list[float], asyncio.Future]] = []
        self._timer: asyncio.Handle | None = None

    def submit(self, values: list[float]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((values, future))
        if len(self._pending) >= self.max_rows:
            self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window_s, self.flush) if self.window_s > 0 else loop.call_soon(self.flush)
        return future

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            predictions = self.predict_rows([values for values, _ in pending])
        except Exception as exc:  # every waiting caller learns it; the service keeps running
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        if self.on_flush is not None:
            self.on_flush(len(pending))
        for (_, future), value in zip(pending, predictions):
            if not future.done():  # a caller that went away
                future.set_result(float(value))


# --- metrics and ASGI middleware --------------------------------------------------------------


class Metrics:
    """The service's own Prometheus registry (several apps can live in one process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("astroscale_fl_serve_requests_total", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.duration = Histogram("astroscale_fl_serve_request_duration_seconds", "Request latency (first byte in to last byte out)",
                                  ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter("astroscale_fl_serve_predictions_total", "Stars predicted (batch rows included)",
                                   registry=self.registry)
        self.micro_batch = Histogram("astroscale_fl_serve_micro_batch_rows", "Single-star requests per micro-batched forward pass",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=self.registry)
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(endpoint, str(status)), self.duration.labels(endpoint))
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Count and time every HTTP request (unknown paths as endpoint ``other``)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's code for it)
            raise
        finally:
            self.metrics.observe(endpoint, status, time.perf_counter() - start)


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: by Content-Length before reading, else while streaming."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    def _too_large(self) -> bytes:
        return json.dumps({"detail": f"request body is larger than the limit of {self.max_bytes} bytes (--max-body-bytes)"}).encode()

    async def _reject(self, send) -> None:
        body = self._too_large()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", _JSON.encode()), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    return await self._reject(send)
                break
        received = 0
        started = False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if started:
                raise
            await self._reject(send)


# --- the app --------------------------------------------------------------------------------


def create_app(predictor, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_batch: int = DEFAULT_MAX_BATCH, *,
               micro_batch: bool = False, batch_window_ms: float = 1.0, max_micro_batch: int = 256,
               cors_origins: Sequence[str] = ("*",)):
    """The FastAPI app serving ``predictor`` (a loaded :class:`~astroscale_fl.predict.Predictor`).

    ``app.state.service`` is the :class:`Service`, ``app.state.metrics`` the :class:`Metrics`.
    """
    from fastapi import FastAPI
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.requests import Request
    from starlette.responses import Response

    if max_body_bytes <= 0 or max_batch <= 0:
        raise DataError("max_body_bytes and max_batch must be positive")
    service = Service(predictor, max_batch)
    metrics = Metrics()
    batcher = (MicroBatcher(service.predict_rows, batch_window_ms / 1000.0, max_micro_batch, metrics.micro_batch.observe)
               if micro_batch else None)
    origins = list(cors_origins)
    app = FastAPI(
        title="AstroScale FL predict",
        docs_url=None, redoc_url=None, openapi_url=None,
        middleware=[  # outermost first: metrics see 413s, CORS headers reach error answers
            Middleware(MetricsMiddleware, metrics=metrics),
            Middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "OPTIONS"],
                       allow_headers=["*"], max_age=600, allow_credentials=False),
            Middleware(BodyLimitMiddleware, max_bytes=max_body_bytes),
        ],
    )
    app.state.service = service
    app.state.metrics = metrics
    app.state.batcher = batcher

    def json_response(body: bytes, status: int = 200) -> Response:
        return Response(body, status_code=status, media_type=_JSON)

    def failure(exc: Exception) -> Response:
        log.exception("prediction failed")
        return json_response(json.dumps({"detail": f"prediction failed: {one_line(str(exc)) or type(exc).__name__}"}).encode(), 500)

    async def predict(request: Request) -> Response:
        body = await request.body()
        try:
            values = service.parse_single(body)
            if batcher is not None:
                value = await batcher.submit(values)
            else:
                value = service.predict_values(values)
            answer = service.encode(value)
        except Invalid as exc:
            return json_response(exc.body(), exc.status)
        except Exception as exc:
            return failure(exc)
        metrics.predictions.inc()
        return json_response(answer)

    async def predict_batch(request: Request) -> Response:
        body = await request.body()
        try:
            columns = service.parse_batch(body)
            rows = len(next(iter(columns.values())))
            if rows >= THREAD_OFFLOAD_ROWS:
                predictions = await run_in_threadpool(service.predict_columns, columns)
            else:
                predictions = service.predict_columns(columns)
            answer = service.encode(predictions.tolist())
        except Invalid as exc:
            return json_response(exc.body(), exc.status)
        except Exception as exc:
            return failure(exc)
        metrics.predictions.inc(rows)
        return json_response(answer)

    health_body = json.dumps(service.health()).encode()

    async def healthz(request: Request) -> Response:
        return json_response(health_body)

    async def metrics_endpoint(request: Request) -> Response:
        data, content_type = metrics.exposition()
        return Response(data, media_type=content_type)

    # Plain Starlette routes: the handlers read raw bytes and validate by hand, so FastAPI's
    # per-request dependency solving would only add latency.
    app.add_route("/predict", predict, methods=["POST"])
    app.add_route("/predict/batch", predict_batch, methods=["POST"])
    app.add_route("/healthz", healthz, methods=["GET"])
    app.add_route("/metrics", metrics_endpoint, methods=["GET"])
    return app


# --- command line ---------------------------------------------------------------------------


def resolve_model_dir(model: str | None) -> Path:
    """``--model``: an exported model directory, or a task name meaning ``models/<task>/latest``."""
    model = model or DEFAULT_TASK
    path = Path(model)
    if path.is_dir():
        return path
    looks_like_task = "/" not in model and "\\" not in model and not model.startswith(".")
    if looks_like_task:
        latest = Path("models") / model / "latest"
        if latest.is_dir():
            return latest
        raise DataError(f"no published model for task {model} at {latest}; make one with `astroscale-fl train task={model}` "
                        "or give --model DIR")
    raise DataError(f"model directory not found: {model}; make one with `astroscale-fl train task=...` "
                    f"(or give a task name for models/<task>/latest)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="astroscale-fl serve",
        description="Serve an exported model over HTTP: POST /predict (one object), POST /predict/batch "
        "(a list), GET /healthz, GET /metrics (Prometheus). Request fields are the model card's inputs "
        "(`astroscale-fl predict --model DIR --list-inputs`).",
    )
    p.add_argument("--model", default=None, metavar="DIR|TASK",
                   help=f"exported model directory, or a task name for models/<task>/latest (default: {DEFAULT_TASK})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default: 8080; 0 picks a free one, printed at start)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="larger request bodies get 413 (default: 1 MiB)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="most rows in one /predict/batch request; more get 413 (default: 10000)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1; one star gains nothing from more)")
    p.add_argument("--micro-batch", action="store_true",
                   help="coalesce concurrent single-star requests into one forward pass (answers agree with "
                   "`predict` to float32 rounding instead of bit for bit)")
    p.add_argument("--batch-window-ms", type=float, default=1.0,
                   help="with --micro-batch: how long the first request waits for others (default: 1.0; 0 = only those arriving together)")
    p.add_argument("--max-micro-batch", type=int, default=256, help="with --micro-batch: flush at this many rows (default: 256)")
    p.add_argument("--cors-origins", default="*", help="comma-separated origins allowed by CORS (default: * = any)")
    p.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs latency; see /metrics)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="uvicorn log level")
    return p


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DataError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    """Entry for ``astroscale-fl serve`` and ``python -m astroscale_fl.serve``."""
    args = parser().parse_args(argv)
    for name in ("max_body_bytes", "max_batch", "threads", "max_micro_batch"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        raise DataError(f"--port: expected 0..65535, got {args.port}")
    if not (args.batch_window_ms >= 0 and math.isfinite(args.batch_window_ms)):
        raise DataError(f"--batch-window-ms: expected a number >= 0, got {args.batch_window_ms}")
    model_dir = resolve_model_dir(args.model)
    sock = _listen(args.host, args.port)  # before the slow imports: a taken port fails at once

    import torch
    import uvicorn

    from astroscale_fl.predict import Predictor

    torch.set_num_threads(args.threads)
    try:
        predictor = Predictor(model_dir)
    except DataError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{model_dir}: cannot load the model ({one_line(str(exc)) or type(exc).__name__})") from None
    origins = [o.strip() for o in args.cors_origins.split(",") if o.strip()]
    app = create_app(predictor, args.max_body_bytes, args.max_batch, micro_batch=args.micro_batch,
                     batch_window_ms=args.batch_window_ms, max_micro_batch=args.max_micro_batch, cors_origins=origins)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {predictor.card.get('task')} model {model_dir} on http://{shown}:{port} "
          f"(POST /predict, POST /predict/batch, GET /healthz, GET /metrics)", flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.access_log, server_header=False,
                            lifespan="off", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
