"""The service's Prometheus metrics and the ASGI middleware that guards request bodies.

:class:`BodyLimitMiddleware` answers 413 for a body
over ``--max-body-bytes`` and 408 for one that does not arrive within ``--body-timeout-s`` (a
client that sends half a body and stalls is cut off instead of holding its connection forever).
A client that goes away mid-body is counted by :class:`MetricsMiddleware` as 499 and logged in
one line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

#: Latency buckets in seconds: fine from 0.25 ms (the service answers in about a millisecond).
LATENCY_BUCKETS = (0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075,
                   0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
ENDPOINTS = ("/predict", "/predict/batch", "/healthz", "/metrics")
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_BODY_TIMEOUT_S = 10.0
#: Status recorded for a client that disconnected before its answer (nginx's code for it).
CLIENT_CLOSED = 499
JSON_TYPE = "application/json"

log = logging.getLogger("astroscale_fl.serve")


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
        """Count one request and record its latency."""
        key = (endpoint, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(endpoint, str(status)), self.duration.labels(endpoint))
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ClientGone(Exception):
    """The client disconnected before its whole body arrived."""

    def __init__(self, received: int, declared: int | None):
        super().__init__(f"client disconnected after {received} of {declared if declared is not None else '?'} body bytes")
        self.received = received
        self.declared = declared


class MetricsMiddleware:
    """Count and time every HTTP request (unknown paths as endpoint ``other``).

    A client that goes away (mid-body, or cancelled while waiting) is recorded as 499; one that
    left mid-body is logged in one line, without a traceback.
    """

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
        except ClientGone as exc:
            status = CLIENT_CLOSED
            client = scope.get("client") or ("?", 0)
            log.warning("%s %s from %s:%s: %s (counted as %d)", scope.get("method"), path, client[0], client[1], exc, CLIENT_CLOSED)
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            self.metrics.observe(endpoint, status, time.perf_counter() - start)


class BodyTooLarge(Exception):
    """The body grew past the limit while streaming."""


class BodyTimeout(Exception):
    """The body did not arrive in time."""


def _declared_length(scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes`` (by Content-Length before reading, else while streaming),
    408 for bodies not complete within ``timeout_s`` of the request's start; the connection is
    closed after either answer."""

    def __init__(self, app, max_bytes: int, timeout_s: float = DEFAULT_BODY_TIMEOUT_S):
        self.app = app
        self.max_bytes = int(max_bytes)
        self.timeout_s = float(timeout_s)

    @staticmethod
    async def _answer(send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", JSON_TYPE.encode()), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            return await self._answer(send, 413, f"request body is larger than the limit of {self.max_bytes} bytes (--max-body-bytes)")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        received = 0
        complete = False
        started = False

        async def guarded_receive():
            nonlocal received, complete
            if complete:  # after the body only a disconnect can come: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout from None
            if message["type"] == "http.disconnect":
                raise ClientGone(received, declared)
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge
            complete = not message.get("more_body", False)
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracked_send)
        except BodyTooLarge:
            if started:
                raise
            await self._answer(send, 413, f"request body is larger than the limit of {self.max_bytes} bytes (--max-body-bytes)")
        except BodyTimeout:
            if started:
                raise
            await self._answer(send, 408, f"request body not received within {self.timeout_s:g} s (--body-timeout-s); "
                                          f"got {received} of {declared if declared is not None else '?'} bytes")
