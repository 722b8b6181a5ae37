"""``serve`` under hostile clients: real servers on 127.0.0.1, raw sockets, bounded loops.

Huge bodies of unknown keys, clients that vanish mid-body, 150 half-sent bodies (slowloris),
more connections than ``--max-connections``, non-JSON content types, CORS and ``/healthz``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import httpx
import pytest

from astroscale_fl.serve import MAX_LISTED_ERRORS
from tests.conftest import ROOT, cli_env
from tests.test_serve import counter, good, stop, wait_ready

pytestmark = pytest.mark.slow
BODY_TIMEOUT_S = 1.5
SMALL_LIMIT = 8


@pytest.fixture(scope="module")
def exported(exported_model, absmag_frame):
    path = exported_model[0]
    return path, absmag_frame.iloc[3000:3100].reset_index(drop=True)


@pytest.fixture(scope="module")
def servers(exported, tmp_path_factory):
    """(url, stderr log path) of a server with a short body timeout, and of one with --max-connections 8."""
    logs = tmp_path_factory.mktemp("logs")
    procs = []
    for i, extra in enumerate([[], ["--max-connections", str(SMALL_LIMIT)]]):
        with open(logs / f"server{i}.log", "w") as log:  # the child keeps its own descriptor
            procs.append(subprocess.Popen([sys.executable, "-m", "astroscale_fl.serve", "--model", str(exported[0]), "--port", "0",
                                           "--body-timeout-s", str(BODY_TIMEOUT_S), "--log-level", "warning", *extra],
                                          stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, env=cli_env()))
    try:
        yield [(wait_ready(p), logs / f"server{i}.log") for i, p in enumerate(procs)]
    finally:
        stop(procs)


def half_sent(url: str, declared: int = 400, sent: bytes = b'{"RArad": 0.1, ') -> socket.socket:
    """A connection that sent its headers and part of a body, then stalls."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (declared, sent))
    return sock


def answer_and_close(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection (or the deadline passes)."""
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.05))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"connection still open at the deadline; got {data[:200]!r}")


def metric(url: str, endpoint: str, status: int) -> float:
    return counter(httpx.get(f"{url}/metrics").text, endpoint, status)


def test_unknown_keys_are_counted_not_echoed(exported, servers):
    url = servers[0][0]
    body = good(exported[1])
    body.update({f"k{i}": 1 for i in range(70_000)})  # ~900 KB of unknown keys (under the 1 MiB limit)
    raw = json.dumps(body).encode()
    assert len(raw) > 800_000
    answer = httpx.post(f"{url}/predict", content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert answer.status_code == 422
    errors = answer.json()["detail"]
    assert len(errors) <= MAX_LISTED_ERRORS and len(answer.content) < 30_000
    assert "69901 more unknown fields" in errors[-1]["msg"]
    row = {**good(exported[1]), "y" * 5000: [1] * 10_000}  # a long key holding a long list
    answer = httpx.post(f"{url}/predict/batch", json=[good(exported[1]), row], timeout=30)
    assert answer.status_code == 422 and len(answer.content) < 2_000
    assert answer.json()["detail"][0]["input"] == "<list of 10000 items>"


def test_client_gone_mid_body_is_499_in_one_log_line(exported, servers):
    url, log = servers[0]
    before = metric(url, "/predict", 499)
    sock = half_sent(url)
    time.sleep(0.2)
    sock.close()
    deadline = time.monotonic() + 10
    while metric(url, "/predict", 499) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(url, "/predict", 499) == before + 1
    assert metric(url, "/predict", 500) == 0
    text = log.read_text()
    lines = [line for line in text.splitlines() if "disconnected" in line]
    assert len(lines) == 1 and "POST /predict" in lines[0] and "499" in lines[0], text
    assert "Traceback" not in text


def test_half_sent_bodies_time_out_while_others_are_served(exported, servers):
    url = servers[0][0]
    before = metric(url, "/predict", 408)
    stalled = [half_sent(url) for _ in range(150)]
    try:
        async def hundred_clients():
            async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=100)) as c:
                return await asyncio.gather(*[c.post("/predict", json=good(exported[1])) for _ in range(100)])

        answers = asyncio.run(hundred_clients())  # while 150 bodies hang
        assert [a.status_code for a in answers] == [200] * 100
        deadline = time.monotonic() + BODY_TIMEOUT_S + 15
        replies = [answer_and_close(s, deadline) for s in stalled]
    finally:
        for s in stalled:
            s.close()
    assert all(r.startswith(b"HTTP/1.1 408 ") and b"--body-timeout-s" in r for r in replies), replies[0]
    assert metric(url, "/predict", 408) == before + 150


def test_half_sent_headers_are_closed(exported, servers):
    url, log = servers[0]
    parts = urlsplit(url)
    stalled = [socket.create_connection((parts.hostname, parts.port), timeout=10) for _ in range(150)]
    try:
        for s in stalled:
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: appl")  # and never the rest
        assert httpx.post(f"{url}/predict", json=good(exported[1]), timeout=30).status_code == 200
        deadline = time.monotonic() + BODY_TIMEOUT_S + 15
        assert all(answer_and_close(s, deadline) == b"" for s in stalled)  # closed without an answer
    finally:
        for s in stalled:
            s.close()
    assert log.read_text().count("request headers not complete") >= 150


def test_connections_beyond_the_limit_get_503(exported, servers):
    url = servers[1][0]
    stalled = [half_sent(url) for _ in range(SMALL_LIMIT)]
    try:
        time.sleep(0.3)
        assert httpx.post(f"{url}/predict", json=good(exported[1]), timeout=10).status_code == 503
        deadline = time.monotonic() + BODY_TIMEOUT_S + 15
        for s in stalled:
            answer_and_close(s, deadline)
    finally:
        for s in stalled:
            s.close()
    assert httpx.post(f"{url}/predict", json=good(exported[1]), timeout=10).status_code == 200


@pytest.mark.parametrize("content_type, status", [
    (None, 415), ("text/plain", 415), ("application/x-www-form-urlencoded", 415), ("multipart/form-data; boundary=x", 415),
    ("application/json", 200), ("application/json; charset=utf-8", 200), ("Application/JSON", 200),
], ids=["none", "text", "form", "multipart", "json", "json charset", "json upper case"])
@pytest.mark.parametrize("endpoint", ["/predict", "/predict/batch"])
def test_json_endpoints_require_application_json(exported, servers, endpoint, content_type, status):
    url = servers[0][0]
    body = good(exported[1]) if endpoint == "/predict" else [good(exported[1])]
    headers = {"content-type": content_type} if content_type else {}
    answer = httpx.post(f"{url}{endpoint}", content=json.dumps(body).encode(), headers=headers)
    assert answer.status_code == status, answer.text
    if status == 415:
        assert "application/json" in answer.json()["detail"]


def test_no_cors_and_no_paths_by_default(exported, servers):
    url = servers[0][0]
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    assert not any(k.startswith("access-control-") for k in httpx.options(f"{url}/predict", headers=preflight).headers)
    health = httpx.get(f"{url}/healthz").text
    assert str(exported[0]) not in health and str(ROOT) not in health and "/tmp" not in health


def _send_headers(url: str, headers: bytes) -> bytes:
    """Send a GET with ``headers`` (stop sending when the server hangs up) and read its answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        data = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
        try:
            for start in range(0, len(data), 1 << 20):
                sock.sendall(data[start:start + (1 << 20)])
        except (BrokenPipeError, ConnectionResetError):
            pass
        return answer_and_close(sock, time.monotonic() + 20)


@pytest.mark.parametrize("headers, logged", [
    (b"X-Big: " + b"a" * (16 << 20) + b"\r\n", "bytes of request headers"),
    (b"".join(b"X-%d: 1\r\n" % i for i in range(100_000)), "bytes of request headers"),
    (b"".join(b"X-%d: 1\r\n" % i for i in range(101)), "102 request headers (at most 100)"),
    (b"X-Url: 1\r\n" * 2 + b"X-Big: " + b"b" * 70_000 + b"\r\n", "bytes of request headers"),
], ids=["16MB_header", "100000_headers", "102_headers", "70kB_header"])
def test_oversized_or_too_many_headers_get_431_and_the_server_stays_up(servers, headers, logged):
    url, log = servers[0]
    answer = _send_headers(url, headers)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    assert logged in log.read_text() and "Traceback" not in log.read_text()


def test_headers_under_the_limits_are_served(servers):
    answer = _send_headers(servers[0][0], b"".join(b"X-%d: %s\r\n" % (i, b"v" * 500) for i in range(90)) + b"Connection: close\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_healthz_names_the_task_version_and_weights(exported, servers):
    card = json.loads((exported[0] / "model_card.json").read_text())
    model = httpx.get(f"{servers[0][0]}/healthz").json()["model"]
    assert model == {"task": "hipparcos_absmag", "version": card["created"], "weights_sha256": card["files"]["weights.pt"]["sha256"]}


def test_the_serving_line_comes_once_the_socket_accepts(exported):
    proc = subprocess.Popen([sys.executable, "-m", "astroscale_fl.serve", "--model", str(exported[0]), "--port", "0",
                             "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=ROOT, env=cli_env())
    try:
        line = proc.stdout.readline()
        parts = urlsplit(line.split(" on ", 1)[1].split()[0])
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:  # at once: not refused
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert answer_and_close(sock, time.monotonic() + 30).startswith(b"HTTP/1.1 200 ")
    finally:
        stop([proc])
