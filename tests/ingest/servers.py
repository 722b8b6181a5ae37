"""Loopback archive server for the ingest tests (threaded http.server on 127.0.0.1, port 0).

Speaks, faithfully enough to exercise the client:

* TAP 1.1: ``POST /tap/sync``; ``POST /tap/async`` -> 303 ``/tap/async/<id>``; ``POST .../phase``
  (PHASE=RUN); ``GET .../phase``; ``GET /tap/async/<id>`` (UWS job XML); ``GET .../results/result``;
  ``GET .../error``; ``DELETE /tap/async/<id>``. Errors are VOTables with QUERY_STATUS=ERROR.
  ADQL ``SELECT [TOP n] col [AS a], ... FROM table [WHERE (col op number) AND ...]`` is executed
  against in-memory Arrow tables.
* SkyServer ``GET /skyserver/SqlSearch?cmd=...&format=csv`` answering ``#Table1`` + CSV.
* Static files ``GET/HEAD /files/<name>`` with ETag, Accept-Ranges, Range and If-Range.

Faults are queued per route (``server.fault(route, kind, ...)``) and used one per request:
``status`` (e.g. 429 with Retry-After, 503), ``reset`` (RST mid-body), ``truncate`` (close
before Content-Length bytes), ``slow`` (sleep before answering), ``corrupt`` (flip bytes),
``job_error`` (async job ends in ERROR), ``garbage`` (body replaced). Every request is logged.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

UWS_NS = "http://www.ivoa.net/xml/UWS/v1.0"


def error_votable(message: str) -> bytes:
    """A DALI/TAP error document."""
    msg = message.replace("&", "&amp;").replace("<", "&lt;")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">\n'
        ' <RESOURCE type="results">\n'
        f'  <INFO name="QUERY_STATUS" value="ERROR">{msg}</INFO>\n'
        " </RESOURCE>\n</VOTABLE>\n"
    ).encode()


def table_to_csv(table: pa.Table) -> bytes:
    """CSV as a TAP service writes it (header line, empty field for null)."""
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(quoting_style="needed"))
    return buf.getvalue()


def table_to_votable(table: pa.Table, serialization: str = "tabledata") -> bytes:
    """VOTable (TABLEDATA or BINARY2) with QUERY_STATUS=OK, written by astropy."""
    from astropy.io.votable import from_table
    from astropy.table import Table

    at = Table()
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_string(col.type):
            at[name] = np.array(col.fill_null("").to_pylist(), dtype=str)
        else:
            arr = col.to_numpy(zero_copy_only=False)
            mask = col.is_null().to_numpy(zero_copy_only=False)
            at[name] = np.ma.MaskedArray(arr, mask=mask) if mask.any() else arr
    vot = from_table(at)
    from astropy.io.votable.tree import Info

    vot.resources[0].type = "results"
    vot.resources[0].infos.append(Info(name="QUERY_STATUS", value="OK"))
    buf = io.BytesIO()
    vot.to_xml(buf, tabledata_format=serialization)
    return buf.getvalue()


_SELECT = re.compile(r"^\s*SELECT\s+(?:TOP\s+(\d+)\s+)?(.+?)\s+FROM\s+(.+?)(?:\s+WHERE\s+(.+))?\s*$", re.I | re.S)
_COND = re.compile(r"^\(?\s*([\w.]+)\s*(<=|>=|<|>|=|!=)\s*([-+\d.eE]+|'[^']*')\s*\)?$")
_OPS = {"<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal, "=": pc.equal, "!=": pc.not_equal}


class QueryError(Exception):
    """The mini database refuses the query (reported as an error VOTable / SkyServer error)."""


def execute(tables: dict[str, pa.Table], query: str) -> pa.Table:
    """Run a tiny subset of ADQL/SQL against Arrow tables."""
    m = _SELECT.match(query)
    if not m:
        raise QueryError(f"syntax error in query: {query[:60]}")
    top, select, tname, where = m.groups()
    if tname not in tables:
        raise QueryError(f"Table '{tname}' does not exist")
    table = tables[tname]
    if where:
        mask = None
        for part in re.split(r"\s+AND\s+", where.strip(), flags=re.I):
            c = _COND.match(part.strip())
            if not c:
                raise QueryError(f"unsupported condition: {part}")
            col, op, val = c.groups()
            if col not in table.column_names:
                raise QueryError(f"Column '{col}' not found in table {tname}")
            value = val.strip("'") if val.startswith("'") else float(val)
            cond = pc.fill_null(_OPS[op](table.column(col), value), False)
            mask = cond if mask is None else pc.and_(mask, cond)
        table = table.filter(mask)
    cols = {}
    for item in select.split(","):
        parts = re.split(r"\s+AS\s+", item.strip(), flags=re.I)
        expr = parts[0].strip()
        alias = parts[1].strip() if len(parts) > 1 else expr
        if expr not in table.column_names:
            raise QueryError(f"Column '{expr}' not found in table {tname}")
        cols[alias] = table.column(expr)
    out = pa.table(cols)
    return out.slice(0, int(top)) if top else out


@dataclass
class Job:
    """A UWS job on the loopback TAP service."""

    id: str
    params: dict
    phase: str = "PENDING"
    polls_left: int = 2
    result: bytes = b""
    error: str = ""
    fail: str = ""


@dataclass
class StaticFile:
    """A file served under /files/<name>."""

    data: bytes
    etag: str


@dataclass
class Archive:
    """Everything the server knows and does; shared with the handler threads."""

    tables: dict[str, pa.Table] = field(default_factory=dict)
    files: dict[str, StaticFile] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    faults: dict[str, list[tuple]] = field(default_factory=dict)
    log: list[tuple[str, str, dict]] = field(default_factory=list)
    votable_serialization: str = "tabledata"
    raw_csv: dict[str, bytes] = field(default_factory=dict)  # table name -> verbatim CSV answer
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_fault(self, route: str) -> tuple | None:
        with self.lock:
            queue = self.faults.get(route)
            return queue.pop(0) if queue else None


class Handler(BaseHTTPRequestHandler):
    """Routes requests to the TAP, SkyServer and static-file handlers, applying faults."""

    protocol_version = "HTTP/1.1"
    server: "LoopbackServer"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass

    @property
    def archive(self) -> Archive:
        return self.server.archive

    # ---- plumbing -------------------------------------------------------------------------
    def _body_params(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        params = {k.upper(): v[0] for k, v in parse_qs(body).items()}
        params.update({k.upper(): v[0] for k, v in parse_qs(urlsplit(self.path).query).items()})
        return params

    def _send(self, status: int, body: bytes, ctype: str = "text/plain", headers: dict | None = None,
              route: str | None = None, head: bool = False) -> None:
        fault = self.archive.next_fault(route) if route else None
        if fault:
            kind = fault[0]
            if kind == "slow":
                time.sleep(fault[1])
            elif kind == "status":
                extra = fault[2] if len(fault) > 2 else {}
                msg = f"injected {fault[1]}".encode()
                self.send_response(fault[1])
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(msg)))
                self.end_headers()
                self.wfile.write(msg)
                return
            elif kind == "corrupt" and body:
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            elif kind == "garbage":
                body = fault[1]
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if head:
            return
        if fault and fault[0] in ("reset", "truncate"):
            cut = max(1, int(len(body) * fault[1]))
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            if fault[0] == "reset":
                time.sleep(0.05)  # let the client read the partial body before the RST drops it
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            return
        self.wfile.write(body)

    def _record(self) -> None:
        with self.archive.lock:
            self.archive.log.append((self.command, self.path, dict(self.headers)))

    def do_GET(self) -> None:
        self._record()
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._record()
        self._route(head=True)

    def do_POST(self) -> None:
        self._record()
        self._route()

    def do_DELETE(self) -> None:
        self._record()
        self._route()

    def _route(self, head: bool = False) -> None:
        path = urlsplit(self.path).path
        if path == "/tap/sync":
            return self._tap_sync()
        if path == "/tap/async" and self.command == "POST":
            return self._tap_create()
        m = re.fullmatch(r"/tap/async/([\w-]+)(/.*)?", path)
        if m:
            return self._tap_job(m.group(1), m.group(2) or "")
        if path == "/skyserver/SqlSearch":
            return self._skyserver()
        if path.startswith("/files/"):
            return self._file(path[len("/files/"):], head)
        self._send(404, b"not found")

    # ---- TAP ------------------------------------------------------------------------------
    def _run_query(self, params: dict) -> tuple[int, bytes, str]:
        for key, want in (("REQUEST", "doQuery"), ("LANG", "ADQL")):
            if params.get(key) != want:
                return 400, error_votable(f"{key} must be {want}"), "application/x-votable+xml"
        try:
            table = execute(self.archive.tables, params.get("QUERY", ""))
        except QueryError as exc:
            return 400, error_votable(str(exc)), "application/x-votable+xml"
        maxrec = params.get("MAXREC")
        if maxrec:
            table = table.slice(0, int(maxrec))
        tname = _SELECT.match(params["QUERY"]).group(3)
        fmt = params.get("FORMAT", "votable").lower()
        if fmt in ("csv", "text/csv"):
            body = self.archive.raw_csv.get(tname) or table_to_csv(table)
            return 200, body, "text/csv"
        return 200, table_to_votable(table, self.archive.votable_serialization), "application/x-votable+xml"

    def _tap_sync(self) -> None:
        status, body, ctype = self._run_query(self._body_params())
        self._send(status, body, ctype, route="sync")

    def _tap_create(self) -> None:
        params = self._body_params()
        job = Job(uuid.uuid4().hex[:12], params)
        fault = self.archive.next_fault("job")
        if fault and fault[0] == "job_error":
            job.fail = fault[1]
        self.archive.jobs[job.id] = job
        self.send_response(303)
        self.send_header("Location", f"{self.server.url}/tap/async/{job.id}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _uws(self, job: Job) -> bytes:
        result = ""
        if job.phase == "COMPLETED":
            result = (f'<uws:result id="result" xlink:href="{self.server.url}/tap/async/{job.id}/results/result"/>')
        err = f"<uws:errorSummary type=\"fatal\"><uws:message>{job.error}</uws:message></uws:errorSummary>" \
            if job.phase == "ERROR" else ""
        return (f'<?xml version="1.0"?><uws:job xmlns:uws="{UWS_NS}" xmlns:xlink="http://www.w3.org/1999/xlink">'
                f"<uws:jobId>{job.id}</uws:jobId><uws:phase>{job.phase}</uws:phase>"
                f"<uws:results>{result}</uws:results>{err}</uws:job>").encode()

    def _tap_job(self, job_id: str, rest: str) -> None:
        job = self.archive.jobs.get(job_id)
        if job is None:
            return self._send(404, error_votable(f"no job {job_id}"), "application/x-votable+xml")
        if self.command == "DELETE" or (self.command == "POST" and not rest
                                        and self._body_params().get("ACTION") == "DELETE"):
            del self.archive.jobs[job_id]
            self.send_response(303)
            self.send_header("Location", f"{self.server.url}/tap/async")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if rest == "/phase" and self.command == "POST":
            if self._body_params().get("PHASE") == "RUN" and job.phase == "PENDING":
                job.phase = "QUEUED"
            self.send_response(303)
            self.send_header("Location", f"{self.server.url}/tap/async/{job_id}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if rest == "/phase":
            if job.phase in ("QUEUED", "EXECUTING"):
                job.phase = "EXECUTING"
                job.polls_left -= 1
                if job.polls_left <= 0:
                    if job.fail:
                        job.phase, job.error = "ERROR", job.fail
                    else:
                        status, body, _ = self._run_query(job.params)
                        if status == 200:
                            job.phase, job.result = "COMPLETED", body
                        else:
                            job.phase, job.error = "ERROR", re.sub(r"<[^>]+>", " ", body.decode()).split("ERROR\">")[-1].strip()
            return self._send(200, job.phase.encode(), "text/plain", route="phase")
        if rest == "":
            return self._send(200, self._uws(job), "text/xml")
        if rest == "/error":
            if job.phase != "ERROR":
                return self._send(404, b"no error")
            return self._send(200, error_votable(job.error), "application/x-votable+xml")
        if rest == "/results/result":
            if job.phase != "COMPLETED":
                return self._send(404, error_votable("job not completed"), "application/x-votable+xml")
            fmt = job.params.get("FORMAT", "votable").lower()
            ctype = "text/csv" if fmt == "csv" else "application/x-votable+xml"
            return self._send(200, job.result, ctype, route="result")
        self._send(404, b"not found")

    # ---- SkyServer ------------------------------------------------------------------------
    def _skyserver(self) -> None:
        params = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        try:
            table = execute(self.archive.tables, params.get("cmd", ""))
        except QueryError as exc:
            # SkyServer answers failed SQL with an error text, not a #Table1 CSV
            return self._send(200, f"ERROR: {exc}\n".encode(), "text/plain", route="sql")
        tname = _SELECT.match(params["cmd"]).group(3)
        body = b"#Table1\n" + (self.archive.raw_csv.get(tname) or table_to_csv(table))
        self._send(200, body, "text/plain", route="sql")

    # ---- static files ---------------------------------------------------------------------
    def _file(self, name: str, head: bool) -> None:
        f = self.archive.files.get(name)
        if f is None:
            return self._send(404, b"no such file", head=head)
        data = f.data
        route = "checksum" if name.endswith("sum") else "file"
        base = {"ETag": f.etag, "Accept-Ranges": "bytes", "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m and (if_range is None or if_range == f.etag):
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            end = min(end, len(data) - 1)
            if start >= len(data):
                return self._send(416, b"", headers={"Content-Range": f"bytes */{len(data)}"})
            headers = dict(base, **{"Content-Range": f"bytes {start}-{end}/{len(data)}"})
            return self._send(206, data[start:end + 1], "application/octet-stream", headers, route=route, head=head)
        self._send(200, data, "application/octet-stream", base, route="head" if head else route, head=head)


class LoopbackServer(ThreadingHTTPServer):
    """The loopback archive; ``url`` is ``http://127.0.0.1:<port>``."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, archive: Archive):
        super().__init__(("127.0.0.1", 0), Handler)
        self.archive = archive
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request, client_address) -> None:  # resets are intended
        pass

    # ---- test helpers ---------------------------------------------------------------------
    def fault(self, route: str, *fault) -> None:
        """Queue a fault for the next request on ``route``."""
        with self.archive.lock:
            self.archive.faults.setdefault(route, []).append(tuple(fault))

    def add_file(self, name: str, data: bytes) -> StaticFile:
        """Serve ``data`` as /files/<name>, with an ETag derived from its content."""
        f = StaticFile(data, '"' + hashlib.sha1(data).hexdigest()[:16] + '"')
        self.archive.files[name] = f
        return f

    def requests(self, prefix: str = "") -> list[tuple[str, str, dict]]:
        """Logged requests whose path starts with ``prefix``."""
        with self.archive.lock:
            return [r for r in self.archive.log if r[1].startswith(prefix)]

    def clear_log(self) -> None:
        with self.archive.lock:
            self.archive.log.clear()
