"""Streaming downloads: query results (restart on failure) and large files (ranged, resumable).

Large files are fetched in segments over HTTP ``Range`` with ``If-Range: <ETag>``, several at
once (bounded by the transport). Progress is kept in ``<part>.json`` so that a retry, or a later
run with ``--resume``, continues from the bytes already on disk. If the file changed on the
server (a 200 answer to an ``If-Range`` request, or a different ETag/size) the download starts
over. The finished file is checked against the advertised length, the ETag seen on every
response, and a published checksum when there is one; a file that fails a check is deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from astroscale_fl.atomic import write_json
from astroscale_fl.errors import DataError
from astroscale_fl.ingest.cache import file_sha256
from astroscale_fl.ingest.transport import HttpTransport, RetryableError, check_status

CHUNK = 1 << 20


class ChecksumError(DataError):
    """A downloaded file does not match its published checksum."""


class ResourceChanged(Exception):
    """The remote file changed while we were downloading it (ETag/size differ)."""


@dataclass
class Fetched:
    """A finished download: where it is, its size and SHA-256, and response headers."""

    path: Path
    size: int
    sha256: str
    headers: dict = field(default_factory=dict)
    resumed_from: int = 0


async def fetch_to_file(
    transport: HttpTransport,
    method: str,
    url: str,
    dest: Path,
    *,
    what: str,
    params: dict | None = None,
    data: dict | None = None,
    on_bytes: Callable[[int], None] | None = None,
    follow_redirects: bool = True,
) -> Fetched:
    """Stream a (dynamic) response body into ``dest``; each retry starts the file over.

    A body shorter than its ``Content-Length`` (reset or truncated connection) is retried.
    """
    async def attempt(client: httpx.AsyncClient) -> Fetched:
        dest.parent.mkdir(parents=True, exist_ok=True)  # each attempt: another run may remove an empty tmp/
        h = hashlib.sha256()
        size = 0
        async with client.stream(method, url, params=params, data=data,
                                 follow_redirects=follow_redirects) as resp:
            if resp.status_code >= 400:
                await resp.aread()
            check_status(resp, what)
            expected = resp.headers.get("Content-Length")
            with open(dest, "wb") as fh:
                async for chunk in resp.aiter_raw(CHUNK) if _identity(resp) else resp.aiter_bytes(CHUNK):
                    fh.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
            if expected is not None and _identity(resp) and int(expected) != size:
                raise RetryableError(f"short body: {size} of {expected} bytes")
            return Fetched(dest, size, h.hexdigest(), dict(resp.headers))

    try:
        return await transport.call(url, attempt, what=what)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _identity(resp: httpx.Response) -> bool:
    return resp.headers.get("Content-Encoding", "identity").lower() in ("", "identity")


@dataclass
class RemoteInfo:
    """What a HEAD request tells about a remote file."""

    size: int | None
    etag: str | None
    last_modified: str | None
    ranges: bool


async def probe(transport: HttpTransport, url: str) -> RemoteInfo:
    """HEAD ``url`` (with retries) for its size, ETag and Range support."""
    resp = await transport.request("HEAD", url, what=f"HEAD {url}")
    if 300 <= resp.status_code < 400:
        raise DataError(f"{url}: redirected ({resp.status_code}) to {resp.headers.get('Location')}; "
                        "use the final URL as --endpoint")
    length = resp.headers.get("Content-Length")
    return RemoteInfo(
        size=int(length) if length and length.isdigit() else None,
        etag=resp.headers.get("ETag"),
        last_modified=resp.headers.get("Last-Modified"),
        ranges="bytes" in resp.headers.get("Accept-Ranges", "").lower(),
    )


def _load_state(state_path: Path) -> dict | None:
    try:
        return json.loads(state_path.read_text())
    except (OSError, ValueError):
        return None


def _plan(size: int | None, segment_size: int) -> list[list[int]]:
    """Segments as [start, end_inclusive, done]; one open-ended segment if size is unknown."""
    if not size:
        return [[0, -1, 0]]
    starts = range(0, size, max(1, segment_size))
    return [[s, min(size, s + segment_size) - 1, 0] for s in starts]


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


async def download_resumable(
    transport: HttpTransport,
    url: str,
    part: Path,
    *,
    resume: bool,
    segment_size: int = 64 << 20,
    on_bytes: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> Fetched:
    """Download ``url`` into ``part`` in concurrent ranged segments, resumably.

    With ``resume`` the bytes of an earlier, interrupted run are kept if the remote file is
    unchanged (same size and ETag/Last-Modified); otherwise the download starts from zero.
    Retries within a run always continue from the bytes on disk.
    """
    state_path = part.with_name(part.name + ".json")
    for _restart in range(2):
        info = await probe(transport, url)
        validator = info.etag or info.last_modified
        state = _load_state(state_path) if resume else None
        if not (state and part.exists() and state.get("url") == url and state.get("size") == info.size
                and state.get("validator") == validator and validator and info.ranges):
            state = {"url": url, "size": info.size, "validator": validator,
                     "segments": _plan(info.size if info.ranges else None, segment_size)}
            part.unlink(missing_ok=True)
        part.parent.mkdir(parents=True, exist_ok=True)
        resumed_from = sum(seg[2] for seg in state["segments"])
        if on_total and info.size:
            on_total(info.size)
        if on_bytes and resumed_from:
            on_bytes(resumed_from)
        try:
            await _run_segments(transport, url, part, state, state_path, info, on_bytes)
        except ResourceChanged:
            part.unlink(missing_ok=True)
            state_path.unlink(missing_ok=True)
            resume = False
            continue
        size = part.stat().st_size
        if info.size is not None and size != info.size:
            part.unlink(missing_ok=True)
            state_path.unlink(missing_ok=True)
            raise DataError(f"{url}: downloaded {size} bytes but the server announced {info.size}")
        digest = await asyncio.to_thread(_sha256, part)
        state_path.unlink(missing_ok=True)
        return Fetched(part, size, digest, {"ETag": info.etag or "", "Last-Modified": info.last_modified or ""},
                       resumed_from)
    raise DataError(f"{url}: the file kept changing on the server while downloading; try again later")


def _sha256(path: Path) -> str:
    return file_sha256(path)


async def _run_segments(transport, url, part, state, state_path, info: RemoteInfo, on_bytes) -> None:
    segments = state["segments"]
    mode = "r+b" if part.exists() else "w+b"
    with open(part, mode) as fh:
        fd = fh.fileno()
        if info.size and info.ranges:
            os.ftruncate(fd, info.size)
        save_lock = asyncio.Lock()

        async def save() -> None:
            async with save_lock:
                write_json(state_path, state)

        async def run(seg: list[int]) -> None:
            def progress() -> int:
                return seg[2]

            async def attempt(client: httpx.AsyncClient) -> None:
                start, end = seg[0] + seg[2], seg[1]
                headers = {}
                ranged = info.ranges and (seg[2] > 0 or len(segments) > 1)
                if ranged:
                    headers["Range"] = f"bytes={start}-{end if end >= 0 else ''}"
                    if info.etag or info.last_modified:
                        headers["If-Range"] = info.etag or info.last_modified
                else:
                    seg[2] = 0
                    os.ftruncate(fd, 0)
                async with client.stream("GET", url, headers=headers) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                    check_status(resp, f"GET {url}")
                    etag = resp.headers.get("ETag")
                    if info.etag and etag and etag != info.etag:
                        raise ResourceChanged()
                    if ranged and resp.status_code == 200:
                        raise ResourceChanged()  # If-Range did not match, or Range ignored
                    if ranged:
                        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                        if resp.status_code != 206 or not m or int(m.group(1)) != start or (
                                m.group(3) != "*" and info.size and int(m.group(3)) != info.size):
                            raise ResourceChanged()
                    want = (end - start + 1) if end >= 0 else None
                    pos = start
                    last_saved = seg[2]
                    async for chunk in resp.aiter_raw():  # unbuffered: keep every byte received
                        if want is not None:
                            chunk = chunk[: max(0, seg[1] - pos + 1)]
                        if chunk:
                            os.pwrite(fd, chunk, pos)
                            pos += len(chunk)
                            seg[2] += len(chunk)
                            if on_bytes:
                                on_bytes(len(chunk))
                        if seg[2] - last_saved >= 8 * CHUNK:
                            await save()
                            last_saved = seg[2]
                        if want is not None and pos > seg[1]:
                            break
                    if want is not None and pos <= seg[1]:
                        raise RetryableError(f"short body: got {pos - start} of {want} bytes")
                    if want is None:
                        seg[1] = pos - 1

            try:
                await transport.call(url, attempt, what=f"GET {url}", progress=progress)
            finally:
                await save()

        todo = [seg for seg in segments if seg[1] < 0 or seg[2] < seg[1] - seg[0] + 1]
        tasks = [asyncio.create_task(run(seg)) for seg in todo]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise


async def fetch_checksum(transport: HttpTransport, url: str, filename: str) -> str:
    """Fetch a ``sha1sum``/``md5sum``-style listing and return the hex digest for ``filename``."""
    resp = await transport.request("GET", url, what=f"GET {url}")
    for line in resp.text.splitlines():
        parts = line.strip().split()
        if len(parts) >= 2 and parts[-1].lstrip("*").rsplit("/", 1)[-1] == filename:
            return parts[0].lower()
        if len(parts) == 1 and re.fullmatch(r"[0-9a-fA-F]{32,128}", parts[0]):
            return parts[0].lower()
    raise DataError(f"{url}: no checksum listed for {filename}")


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file with ``algorithm`` (md5, sha1, sha256, ...)."""
    try:
        h = hashlib.new(algorithm)
    except ValueError:
        raise DataError(f"unknown checksum algorithm {algorithm!r}") from None
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            h.update(block)
    return h.hexdigest()
