"""The ASGI app: routes, middleware order, JSON answers."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from astroscale_fl.errors import DataError, one_line
from astroscale_fl.serve.batching import MicroBatcher
from astroscale_fl.serve.middleware import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    JSON_TYPE,
    BodyLimitMiddleware,
    Metrics,
    MetricsMiddleware,
)
from astroscale_fl.serve.schema import Invalid
from astroscale_fl.serve.service import DEFAULT_MAX_BATCH, Service

#: Batches at least this large run in a worker thread so that single stars keep flowing.
THREAD_OFFLOAD_ROWS = 2048

log = logging.getLogger("astroscale_fl.serve")


def content_type_error(headers) -> Invalid | None:
    """A 415 when the request does not declare a JSON body (``Content-Type: application/json``).

    Requiring it keeps browsers from posting cross-origin "simple requests" (``text/plain``,
    forms) without a CORS preflight.
    """
    declared = headers.get("content-type", "")
    if declared.split(";", 1)[0].strip().lower() == JSON_TYPE:
        return None
    shown = declared[:60] if declared else "none"
    return Invalid(415, f"expected Content-Type: {JSON_TYPE}, got {shown}")


def create_app(predictor, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_batch: int = DEFAULT_MAX_BATCH, *,
               micro_batch: bool = False, batch_window_ms: float = 1.0, max_micro_batch: int = 256,
               cors_origins: Sequence[str] = (), body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S):
    """The FastAPI app serving ``predictor`` (a loaded :class:`~astroscale_fl.export.predict.Predictor`).

    ``app.state.service`` is the :class:`Service`, ``app.state.metrics`` the :class:`Metrics`.
    CORS headers are sent only for ``cors_origins`` (none by default).
    """
    from fastapi import FastAPI
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.requests import Request
    from starlette.responses import Response

    if max_body_bytes <= 0 or max_batch <= 0 or not body_timeout_s > 0:
        raise DataError("max_body_bytes, max_batch and body_timeout_s must be positive")
    service = Service(predictor, max_batch)
    metrics = Metrics()
    batcher = (MicroBatcher(service.predict_rows, batch_window_ms / 1000.0, max_micro_batch, metrics.micro_batch.observe)
               if micro_batch else None)
    middleware = [Middleware(MetricsMiddleware, metrics=metrics)]  # outermost first: metrics see 408/413/499
    if cors_origins:  # CORS headers reach error answers too
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "OPTIONS"],
                                     allow_headers=["content-type"], max_age=600, allow_credentials=False))
    middleware.append(Middleware(BodyLimitMiddleware, max_bytes=max_body_bytes, timeout_s=body_timeout_s))
    app = FastAPI(title="AstroScale FL predict", docs_url=None, redoc_url=None, openapi_url=None, middleware=middleware)
    app.state.service = service
    app.state.metrics = metrics
    app.state.batcher = batcher

    def json_response(body: bytes, status: int = 200) -> Response:
        return Response(body, status_code=status, media_type=JSON_TYPE)

    def failure(exc: Exception) -> Response:
        log.exception("prediction failed")  # valid input the model could not predict: a bug, keep its traceback
        return json_response(json.dumps({"detail": f"prediction failed: {one_line(str(exc)) or type(exc).__name__}"}).encode(), 500)

    async def single(body: bytes) -> tuple[bytes, int]:
        values = service.parse_single(body)
        value = await batcher.submit(values) if batcher is not None else service.predict_values(values)
        return service.encode(value), 1

    async def batch(body: bytes) -> tuple[bytes, int]:
        columns = service.parse_batch(body)
        rows = len(next(iter(columns.values())))
        if rows >= THREAD_OFFLOAD_ROWS:
            predictions = await run_in_threadpool(service.predict_columns, columns)
        else:
            predictions = service.predict_columns(columns)
        return service.encode(predictions.tolist()), rows

    def handler(answer):
        async def endpoint(request: Request) -> Response:
            if (refused := content_type_error(request.headers)) is not None:
                return json_response(refused.body(), refused.status)
            body = await request.body()
            try:
                data, stars = await answer(body)
            except Invalid as exc:
                return json_response(exc.body(), exc.status)
            except Exception as exc:
                return failure(exc)
            metrics.predictions.inc(stars)
            return json_response(data)

        return endpoint

    health_body = json.dumps(service.health()).encode()

    async def healthz(request: Request) -> Response:
        return json_response(health_body)

    async def metrics_endpoint(request: Request) -> Response:
        data, content_type = metrics.exposition()
        return Response(data, media_type=content_type)

    # Plain Starlette routes: the handlers read raw bytes and validate by hand, so FastAPI's
    # per-request dependency solving would only add latency.
    app.add_route("/predict", handler(single), methods=["POST"])
    app.add_route("/predict/batch", handler(batch), methods=["POST"])
    app.add_route("/healthz", healthz, methods=["GET"])
    app.add_route("/metrics", metrics_endpoint, methods=["GET"])
    return app
