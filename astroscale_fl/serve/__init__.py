"""HTTP predict service for an exported model (``astroscale-fl serve``).

    astroscale-fl serve [--model DIR|TASK] [--host 127.0.0.1] [--port 8080]

Endpoints (JSON in, JSON out; the request fields are the model card's ``inputs``):

- ``POST /predict``: one object ``{"<input>": number, ...}`` -> ``{"predicted_<target>": float}``;
- ``POST /predict/batch``: a list of such objects -> ``{"predicted_<target>": [float, ...]}``
  (in request order; one invalid row rejects the whole batch with 422 naming the bad rows);
- ``GET /healthz``: ``{"status": "ok", "model": {"task", "version", "weights_sha256"}, ...}`` with
  the inputs (unit, valid range) and output (no filesystem paths);
- ``GET /metrics``: Prometheus text (request counts, latency histogram, predictions).

Invalid input never reaches the model: a missing field, a non-number (strings and booleans
included), NaN/Infinity, a value outside the model card's ``valid_range`` (inclusive) or an
unknown field gets 422 ``{"detail": [{"loc": ["body", field], "msg": ..., "type": ...}]}``
(batch rows: ``["body", row, field]``; at most ``MAX_LISTED_ERRORS`` errors, client keys and
values echoed at most 80 characters). POST bodies must declare ``Content-Type:
application/json`` (else 415). A body larger than ``--max-body-bytes`` or a batch of more than
``--max-batch`` rows gets 413, a body not complete within ``--body-timeout-s`` gets 408 (and a
connection whose headers take as long is closed), request headers over 64 KiB or 100 fields get
431 (:mod:`astroscale_fl.serve.header_guard`), a client that leaves mid-body is counted as
499; past ``--max-connections`` the server answers 503. CORS is off unless ``--cors-origins``
names the origins allowed.

The model directory must match the SHA-256 its card records, and a probe prediction must be
finite, or the service does not start. Predictions are the same numbers ``scripts/predict.py``
prints: one star goes through :meth:`Predictor.predict_frame` alone. With ``--micro-batch``,
single-star requests arriving within ``--batch-window-ms`` share one forward pass (answers then
agree with the script to float32 rounding, ~1e-6 relative, not bit for bit).

Modules: :mod:`.schema` (request validation), :mod:`.service` (validation + prediction without
HTTP), :mod:`.batching` (micro-batcher), :mod:`.middleware` (metrics, body limits),
:mod:`.header_guard`, :mod:`.app` (the ASGI app), :mod:`.cli` (the command).
"""

from astroscale_fl.serve.app import THREAD_OFFLOAD_ROWS, content_type_error, create_app
from astroscale_fl.serve.batching import MicroBatcher
from astroscale_fl.serve.cli import DEFAULT_MAX_CONNECTIONS, DEFAULT_TASK, main, parser, resolve_model_dir
from astroscale_fl.serve.middleware import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    ENDPOINTS,
    LATENCY_BUCKETS,
    BodyLimitMiddleware,
    BodyTooLarge,
    ClientGone,
    Metrics,
    MetricsMiddleware,
)
from astroscale_fl.serve.schema import MAX_LISTED_ERRORS, InputSchema, Invalid, parse_json
from astroscale_fl.serve.service import DEFAULT_MAX_BATCH, Service

__all__ = [
    "DEFAULT_BODY_TIMEOUT_S", "DEFAULT_MAX_BATCH", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_TASK",
    "ENDPOINTS", "LATENCY_BUCKETS", "MAX_LISTED_ERRORS", "THREAD_OFFLOAD_ROWS", "BodyLimitMiddleware", "BodyTooLarge",
    "ClientGone", "InputSchema", "Invalid", "Metrics", "MetricsMiddleware", "MicroBatcher", "Service",
    "content_type_error", "create_app", "main", "parse_json", "parser", "resolve_model_dir",
]
