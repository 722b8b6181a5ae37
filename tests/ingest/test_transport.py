"""Transport pieces in isolation: token bucket, breaker, Retry-After, backoff."""

from __future__ import annotations

import asyncio
import types
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from astroscale_fl.errors import ConfigError
from astroscale_fl.ingest.transport import (
    CircuitBreaker,
    CircuitOpenError,
    HttpTransport,
    TokenBucket,
    TransportSettings,
    parse_retry_after,
)


class FakeClock:
    """Stands in for ``time`` and ``asyncio.sleep`` inside the transport module: sleeping advances
    the clock at once, so timing assertions are exact and do not depend on the machine's load."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 1e-6)  # a real sleep always takes a little (rounding can ask for ~1e-17 s)


@pytest.fixture
def clock(monkeypatch):
    import astroscale_fl.ingest.transport as transport

    fake = FakeClock()
    monkeypatch.setattr(transport, "time", fake)
    monkeypatch.setattr(transport, "asyncio", types.SimpleNamespace(sleep=fake.sleep, Lock=asyncio.Lock))
    return fake


def test_token_bucket_limits_rate(clock):
    async def go() -> float:
        bucket = TokenBucket(rate=20, burst=2)
        t0 = clock.monotonic()
        for _ in range(8):
            await bucket.acquire()
        return clock.monotonic() - t0

    assert asyncio.run(go()) == pytest.approx(0.3, abs=1e-4)  # 2 from the burst, 6 more at 20/s


def test_breaker_opens_and_half_opens(clock):
    b = CircuitBreaker(threshold=2, cooldown=0.1)
    b.failure("h")
    b.before("h")
    b.failure("h")
    with pytest.raises(CircuitOpenError):
        b.before("h")
    b.before("other")
    clock.now += 0.09
    assert b.is_open("h")  # still cooling down
    clock.now += 0.02
    b.before("h")  # half-open trial allowed
    b.success("h")
    b.failure("h")
    b.before("h")  # one failure after success does not reopen


def test_retry_after_parsing():
    assert parse_retry_after("7") == 7.0
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    assert 25 < parse_retry_after(format_datetime(when, usegmt=True)) <= 30
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_backoff_grows_with_jitter_and_cap():
    t = HttpTransport(TransportSettings(backoff_base_s=1, backoff_max_s=8))
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (6, 8)]:
        d = [t.backoff(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= x <= ceiling for x in d) and len(set(d)) > 1
    asyncio.run(t.client.aclose())


def test_settings_reject_unknown_keys():
    with pytest.raises(ConfigError, match="retries"):
        TransportSettings.from_mapping({"retries": 3}, "x.yaml")
