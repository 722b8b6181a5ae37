"""IVOA TAP 1.1 client (Gaia, RAVE, MAST): ADQL building, ``/sync`` and the ``/async`` UWS job.

Async job lifecycle: ``POST {base}/async`` (303 to the job URL) -> ``POST {job}/phase
PHASE=RUN`` -> poll ``GET {job}/phase`` -> ``GET {job}`` (UWS job document, for the result
link) -> stream ``{job}/results/result`` -> ``DELETE {job}``. A job that ends in ERROR is
reported with the service's message (from ``{job}/error`` or the job's ``errorSummary``).
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin

from astroscale_fl.errors import DataError
from astroscale_fl.ingest.download import Fetched, fetch_to_file
from astroscale_fl.ingest.parse import error_document
from astroscale_fl.ingest.transport import HttpStatusError, HttpTransport, TransportError, describe_body

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
XLINK = "{http://www.w3.org/1999/xlink}"
TERMINAL = {"COMPLETED", "ERROR", "ABORTED", "ARCHIVED"}


def build_adql(table: str, columns: dict[str, str], *, limit: int | None, where: list[str]) -> str:
    """``SELECT [TOP n] expr AS name, ... FROM table [WHERE (a) AND (b)]``: ADQL, and also the
    SQL Server dialect of SDSS SkyServer (one builder for both protocols)."""
    select = ", ".join(expr if expr == name else f"{expr} AS {name}" for name, expr in columns.items())
    top = f"TOP {int(limit)} " if limit else ""
    query = f"SELECT {top}{select} FROM {table}"
    conds = [w.strip() for w in where if w and w.strip()]
    if conds:
        query += " WHERE " + " AND ".join(f"({c})" for c in conds)
    return query


def _tap_error(exc: HttpStatusError, what: str) -> DataError:
    detail = describe_body(exc.response.content) if exc.response.content else ""
    return DataError(f"{what}: HTTP {exc.response.status_code}: {detail or exc.response.reason_phrase}")


class TapClient:
    """Runs ADQL queries against one TAP service, writing the raw result to a file."""

    def __init__(self, transport: HttpTransport, base_url: str, *, result_format: str,
                 status: Callable[[str], None] | None = None):
        self.t = transport
        self.base = base_url.rstrip("/")
        self.format = result_format
        self.status = status or (lambda _msg: None)

    def _params(self, adql: str, maxrec: int | None) -> dict:
        params = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": adql, "FORMAT": self.format}
        if maxrec:
            params["MAXREC"] = str(int(maxrec))
        return params

    async def sync(self, adql: str, maxrec: int | None, dest: Path,
                   on_bytes: Callable[[int], None] | None = None) -> Fetched:
        """Run a synchronous query; the result (or error document) is streamed into ``dest``."""
        what = f"TAP sync query to {self.base}"
        try:
            fetched = await fetch_to_file(self.t, "POST", f"{self.base}/sync", dest, what=what,
                                          data=self._params(adql, maxrec), on_bytes=on_bytes)
        except HttpStatusError as exc:
            raise _tap_error(exc, what) from None
        message = error_document(dest)
        if message is not None:
            dest.unlink(missing_ok=True)
            raise DataError(f"{what} failed: {message}")
        return fetched

    async def create_job(self, adql: str, maxrec: int | None) -> str:
        """Create an async job (PENDING) and return its URL."""
        what = f"TAP async job creation at {self.base}"
        try:
            resp = await self.t.request("POST", f"{self.base}/async", data=self._params(adql, maxrec), what=what)
        except HttpStatusError as exc:
            raise _tap_error(exc, what) from None
        if resp.status_code in (301, 302, 303, 307) and resp.headers.get("Location"):
            return urljoin(f"{self.base}/async", resp.headers["Location"])
        job_id = _job_field(resp.content, "jobId")
        if job_id:
            return f"{self.base}/async/{job_id}"
        raise DataError(f"{what}: expected a 303 redirect to the job, got HTTP {resp.status_code}")

    async def phase(self, job: str) -> str:
        """The job's current phase (``GET {job}/phase``)."""
        resp = await self.t.request("GET", f"{job}/phase", what=f"TAP job phase {job}")
        return resp.text.strip().upper()

    async def run_job(self, job: str) -> None:
        """Start the job (``POST {job}/phase PHASE=RUN``)."""
        await self.t.request("POST", f"{job}/phase", data={"PHASE": "RUN"}, what=f"TAP job start {job}")

    async def delete_job(self, job: str) -> None:
        """Delete the job on the server; failures here are not fatal."""
        try:
            await self.t.request("DELETE", job, what=f"TAP job delete {job}")
        except (TransportError, DataError):
            pass

    async def error_message(self, job: str) -> str:
        """The reason an async job failed, from ``{job}/error`` or the job's errorSummary."""
        try:
            resp = await self.t.request("GET", f"{job}/error", what=f"TAP job error {job}")
            if resp.status_code == 200 and resp.content:
                return describe_body(resp.content)
        except (TransportError, DataError):
            pass
        try:
            resp = await self.t.request("GET", job, what=f"TAP job {job}")
            return _job_field(resp.content, "message") or "no message"
        except (TransportError, DataError):
            return "no message"

    async def result_url(self, job: str) -> str:
        """The URL of the job's ``result`` (from the UWS job document; standard path otherwise)."""
        resp = await self.t.request("GET", job, what=f"TAP job {job}")
        try:
            root = ET.fromstring(resp.content)
            for res in root.iter(f"{UWS}result"):
                href = res.get(f"{XLINK}href")
                if href and res.get("id") == "result":
                    return urljoin(job + "/", href)
        except ET.ParseError:
            pass
        return f"{job}/results/result"

    async def wait(self, job: str, timeout_s: float, poll_min: float, poll_max: float) -> str:
        """Poll the job's phase until it is terminal; return that phase."""
        deadline = time.monotonic() + timeout_s
        delay = poll_min
        while True:
            phase = await self.phase(job)
            self.status(f"job {job.rsplit('/', 1)[-1]}: {phase}")
            if phase in TERMINAL:
                return phase
            if time.monotonic() > deadline:
                raise DataError(f"TAP job {job} still {phase} after {timeout_s:g} s; "
                                "rerun with --resume to keep waiting for it")
            await asyncio.sleep(delay)
            delay = min(poll_max, delay * 1.5)

    async def fetch_result(self, job: str, dest: Path, on_bytes=None) -> Fetched:
        """Stream the job's result into ``dest``."""
        url = await self.result_url(job)
        fetched = await fetch_to_file(self.t, "GET", url, dest, what=f"TAP job result {url}", on_bytes=on_bytes)
        message = error_document(dest)
        if message is not None:
            dest.unlink(missing_ok=True)
            raise DataError(f"TAP job {job} result is an error document: {message}")
        return fetched


def _job_field(content: bytes, tag: str) -> str | None:
    try:
        root = ET.fromstring(content)
    except ET.ParseError:
        return None
    el = root.find(f".//{UWS}{tag}")
    return el.text.strip() if el is not None and el.text else None
