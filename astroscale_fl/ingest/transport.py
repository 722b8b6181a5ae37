"""HTTP transport shared by every source: one httpx.AsyncClient with bounded concurrency,
a per-host token-bucket rate limit, a per-host circuit breaker, and retries with exponential
backoff and jitter.

Retried: connection errors, timeouts, bodies cut short (reset or truncated), HTTP 408, 429
(honouring ``Retry-After``) and 5xx. Never retried: any other 4xx, which raises
:class:`HttpStatusError` at once. When retries run out, :class:`TransportError` names the
host, the attempts and the last failure.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import TypeVar
from urllib.parse import urlsplit

import httpx

from astroscale_fl.errors import ConfigError, DataError

T = TypeVar("T")

#: Status codes that are worth another attempt.
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class TransportError(DataError):
    """A request failed for good (retries exhausted, or the circuit is open)."""


class CircuitOpenError(TransportError):
    """The host failed too often in a row; requests to it fail fast for a while."""


class HttpStatusError(DataError):
    """The server answered with a status that retrying cannot fix (a 4xx other than 408/429)."""

    def __init__(self, message: str, response: httpx.Response):
        super().__init__(message)
        self.response = response


class RetryableError(Exception):
    """Raised inside an attempt for a failure worth retrying (e.g. a short body)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class TransportSettings:
    """Knobs of the transport; every source YAML may override them under ``transport:``."""

    max_concurrency: int = 4
    rate_per_s: float = 5.0  # tokens per second per host; 0 disables the limit
    burst: int = 5
    timeout_s: float = 120.0  # read/write/pool timeout
    connect_timeout_s: float = 20.0
    max_attempts: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 300.0
    breaker_threshold: int = 10
    breaker_cooldown_s: float = 60.0
    poll_min_s: float = 1.0  # TAP async polling interval, growing to poll_max_s
    poll_max_s: float = 15.0
    job_timeout_s: float = 3600.0

    @classmethod
    def from_mapping(cls, values: dict | None, origin: str) -> TransportSettings:
        """Build settings from a YAML mapping, rejecting unknown keys with a clear error."""
        values = dict(values or {})
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{origin}: unknown transport setting(s) {unknown}; known: {sorted(known)}")
        out = cls()
        for key, value in values.items():
            default = getattr(out, key)
            try:
                setattr(out, key, type(default)(value))
            except (TypeError, ValueError):
                raise ConfigError(f"{origin}: transport.{key} must be a number, got {value!r}") from None
        return out


class TokenBucket:
    """Token bucket: ``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int):
        self.rate = float(rate)
        self.capacity = max(1.0, float(burst))
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until a token is available and take it."""
        if self.rate <= 0:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self.tokens) / self.rate)


class CircuitBreaker:
    """Per-host breaker: opens after ``threshold`` consecutive failures for ``cooldown`` s.

    While open, requests fail fast with :class:`CircuitOpenError`; after the cool-down one
    trial is let through (half-open) and a success closes it again.
    """

    def __init__(self, threshold: int, cooldown: float):
        self.threshold = max(1, threshold)
        self.cooldown = cooldown
        self._failures: dict[str, int] = {}
        self._opened: dict[str, float] = {}

    def before(self, host: str) -> None:
        """Raise :class:`CircuitOpenError` if ``host``'s circuit is open."""
        opened = self._opened.get(host)
        if opened is not None:
            left = self.cooldown - (time.monotonic() - opened)
            if left > 0:
                raise CircuitOpenError(
                    f"{host}: circuit open after {self._failures.get(host, 0)} consecutive failures; "
                    f"not contacting it for another {left:.0f} s"
                )

    def success(self, host: str) -> None:
        """Record a success: close the circuit."""
        self._failures[host] = 0
        self._opened.pop(host, None)

    def failure(self, host: str) -> None:
        """Record a failure; open the circuit at the threshold."""
        self._failures[host] = self._failures.get(host, 0) + 1
        if self._failures[host] >= self.threshold:
            self._opened[host] = time.monotonic()

    def is_open(self, host: str) -> bool:
        """Whether ``host``'s circuit is currently open."""
        try:
            self.before(host)
        except CircuitOpenError:
            return True
        return False


def parse_retry_after(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header (delta-seconds or HTTP-date) into seconds."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def describe_body(content: bytes, limit: int = 300) -> str:
    """A short human-readable summary of an error body (TAP error VOTable text, or first line)."""
    text = content[:65536].decode("utf-8", "replace")
    m = re.search(r'<INFO[^>]*name="QUERY_STATUS"[^>]*>(.*?)</INFO>', text, re.S | re.I)
    if m and m.group(1).strip():
        text = m.group(1)
    text = re.sub(r"<[^>]+>", " ", text)
    text = " ".join(text.split())
    return text[:limit]


def check_status(response: httpx.Response, what: str) -> None:
    """Raise for a bad status: :class:`RetryableError` for 408/429/5xx, else HttpStatusError."""
    status = response.status_code
    if status < 400:
        return
    if status in RETRY_STATUS or status >= 500:
        raise RetryableError(
            f"HTTP {status}", retry_after=parse_retry_after(response.headers.get("Retry-After"))
        )
    try:
        detail = describe_body(response.content)
    except httpx.ResponseNotRead:
        detail = ""
    raise HttpStatusError(f"{what}: HTTP {status} {response.reason_phrase}" + (f": {detail}" if detail else ""), response)


class HttpTransport:
    """Async HTTP transport with concurrency bound, rate limit, breaker and retries.

    Use as ``async with HttpTransport(settings) as t: ...``.
    """

    def __init__(self, settings: TransportSettings | None = None, *, user_agent: str = "astroscale-fl-ingest"):
        self.settings = settings or TransportSettings()
        s = self.settings
        self._sem = asyncio.Semaphore(max(1, s.max_concurrency))
        self._buckets: dict[str, TokenBucket] = {}
        self.breaker = CircuitBreaker(s.breaker_threshold, s.breaker_cooldown_s)
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(s.timeout_s, connect=s.connect_timeout_s),
            limits=httpx.Limits(max_connections=max(1, s.max_concurrency) * 2),
            headers={"User-Agent": user_agent},
            follow_redirects=False,
        )
        self.requests_made = 0

    async def __aenter__(self) -> HttpTransport:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.aclose()

    def _bucket(self, host: str) -> TokenBucket:
        if host not in self._buckets:
            self._buckets[host] = TokenBucket(self.settings.rate_per_s, self.settings.burst)
        return self._buckets[host]

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based): exponential with equal jitter."""
        s = self.settings
        ceiling = min(s.backoff_max_s, s.backoff_base_s * (2 ** (attempt - 1)))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def call(
        self,
        url: str,
        attempt: Callable[[httpx.AsyncClient], Awaitable[T]],
        *,
        what: str,
        progress: Callable[[], int] | None = None,
    ) -> T:
        """Run ``attempt(client)`` with rate limit, concurrency bound, breaker and retries.

        ``attempt`` raises :class:`RetryableError` (or lets an httpx transport error escape)
        for a failure worth retrying. If ``progress()`` grew since the previous attempt (e.g.
        bytes written by a resumable download), the attempt counter starts again.
        """
        s = self.settings
        host = urlsplit(url).netloc
        failures = 0
        last_progress = progress() if progress else 0
        while True:
            self.breaker.before(host)
            await self._bucket(host).acquire()
            retry_after = None
            async with self._sem:
                try:
                    self.requests_made += 1
                    result = await attempt(self.client)
                except RetryableError as exc:
                    failure, retry_after = str(exc), exc.retry_after
                except httpx.TimeoutException as exc:
                    failure = f"timed out ({type(exc).__name__}, limit {s.timeout_s:g} s)"
                except httpx.TransportError as exc:
                    failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                else:
                    self.breaker.success(host)
                    return result
            self.breaker.failure(host)
            if progress is not None:
                now = progress()
                if now > last_progress:
                    failures, last_progress = 0, now
            failures += 1
            if failures >= s.max_attempts:
                raise TransportError(f"{what}: giving up after {failures} attempts; last error: {failure}")
            self.breaker.before(host)  # fail fast once the breaker has opened
            delay = self.backoff(failures)
            if retry_after is not None:
                delay = max(delay, min(retry_after, s.max_retry_after_s))
            await asyncio.sleep(delay)

    async def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        params: dict | None = None,
        data: dict | None = None,
        headers: dict | None = None,
    ) -> httpx.Response:
        """Send a request with retries and return the fully read response (status < 400).

        Redirects are returned, not followed (TAP job creation answers 303).
        """

        async def attempt(client: httpx.AsyncClient) -> httpx.Response:
            response = await client.request(method, url, params=params, data=data, headers=headers)
            check_status(response, what)
            return response

        return await self.call(url, attempt, what=what)
