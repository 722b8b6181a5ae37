"""One ingest run: fetch (or take from cache) -> parse -> normalise -> write outputs atomically.

Outputs in the output directory: ``<source>.parquet`` (common schema, provenance in the schema
metadata), ``<source>.provenance.json`` and, when rows were rejected, ``<source>.quarantine.csv``
(``line``, ``reason``, ``record``). The Parquet file is renamed into place last, so a failed run
never leaves a file that looks complete; a run with no rejected rows removes a stale quarantine.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from astroscale_fl.atomic import atomic_path, check_directory_target, write_json
from astroscale_fl.errors import DataError
from astroscale_fl.ingest import apogee, skyserver
from astroscale_fl.ingest.cache import Cache, file_sha256, key_hash
from astroscale_fl.ingest.download import ChecksumError, download_resumable, fetch_checksum, file_digest
from astroscale_fl.ingest.parse import Parsed, empty_rejected, read_csv, read_votable
from astroscale_fl.ingest.progress import Reporter
from astroscale_fl.ingest.schema import COLUMN_TYPES, REQUIRED, SCHEMA_VERSION, normalise, with_provenance
from astroscale_fl.ingest.sources import SourceConfig, load_source
from astroscale_fl.ingest.tap import TapClient, build_adql
from astroscale_fl.ingest.transport import HttpTransport

DEFAULT_OUT = Path("data/ingest")
DEFAULT_CACHE = Path("data/ingest/.cache")


@dataclass
class IngestOptions:
    """What the user asked for (CLI flags); None means 'use the source's default'."""

    source: str
    limit: int | None = None  # 0 = no limit
    where: str | None = None
    columns: list[str] | None = None
    endpoint: str | None = None
    out: Path | None = None
    cache_dir: Path | None = None
    resume: bool = False
    format: str | None = None
    mode: str = "auto"  # auto | sync | async (TAP)
    use_cache: bool = True
    timeout_s: float | None = None
    max_attempts: int | None = None
    progress: bool = False


@dataclass
class Acquired:
    """Raw result on disk plus what is known about how it was obtained."""

    path: Path
    kind: str  # csv | votable | fits
    query: str
    sha256: str
    size: int
    from_cache: bool
    retrieved_at: str
    mode: str = ""
    skip_rows: int = 0
    cache_key: dict | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class IngestResult:
    """Paths written and row counts of a finished run."""

    parquet: Path
    provenance: Path
    quarantine: Path | None
    rows: int
    rejected: int
    from_cache: bool
    requests: int


def select_columns(cfg: SourceConfig, wanted: list[str] | None) -> dict[str, str]:
    """The source's column mapping, restricted to ``wanted`` (id and position always kept)."""
    if not wanted:
        return dict(cfg.columns)
    unknown = [c for c in wanted if c not in cfg.columns]
    if unknown:
        raise DataError(f"--columns: {unknown} not available from {cfg.name}; choose from {sorted(cfg.columns)}")
    keep = list(REQUIRED) + [c for c in wanted if c not in REQUIRED]
    return {c: cfg.columns[c] for c in keep}


def check_options(opts: IngestOptions) -> None:
    """One line for the first flag out of its range (before any file is written or request made)."""
    if opts.timeout_s is not None and not (math.isfinite(opts.timeout_s) and opts.timeout_s > 0):
        raise DataError(f"--timeout: expected a number of seconds > 0, got {opts.timeout_s}")
    if opts.max_attempts is not None and opts.max_attempts < 1:
        raise DataError(f"--retries: expected attempts per request >= 1, got {opts.max_attempts}")
    if opts.limit is not None and opts.limit < 0:
        raise DataError(f"--limit must be >= 0, got {opts.limit}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_ingest(opts: IngestOptions) -> IngestResult:
    """Run one ingest described by ``opts`` and return what was written."""
    cfg = load_source(opts.source)
    if opts.endpoint:
        cfg = replace(cfg, endpoint=opts.endpoint)
    if opts.format:
        cfg = replace(cfg, format=opts.format)
    check_options(opts)
    if opts.timeout_s is not None:
        cfg.transport.timeout_s = opts.timeout_s
    if opts.max_attempts is not None:
        cfg.transport.max_attempts = opts.max_attempts
    limit = cfg.default_limit if opts.limit is None else (opts.limit or None)
    columns = select_columns(cfg, opts.columns)
    if cfg.protocol == "file":
        apogee.parse_where(opts.where, columns)
    out_dir = check_directory_target(opts.out or DEFAULT_OUT / cfg.name, "--out")
    cache = Cache(check_directory_target(opts.cache_dir or DEFAULT_CACHE, "--cache-dir"), cfg.cache_ttl_s)
    cache.remove_stale_tmp()

    try:
        acquired, requests, parsed, norm = _fetch_and_parse(cfg, opts, columns, limit, cache)
    finally:
        cache.remove_empty_work_dirs()

    quarantine = _quarantine(parsed.rejected, norm.quarantine)
    provenance = {
        "source": cfg.name,
        "survey": cfg.survey,
        "release": cfg.release,
        "protocol": cfg.protocol,
        "endpoint": cfg.endpoint,
        "query": acquired.query,
        "mode": acquired.mode,
        "format": acquired.kind,
        "limit": limit,
        "where": opts.where,
        "columns": columns,
        "retrieved_at": acquired.retrieved_at,
        "written_at": _now(),
        "from_cache": acquired.from_cache,
        "raw_sha256": acquired.sha256,
        "raw_bytes": acquired.size,
        "rows": norm.table.num_rows,
        "rejected": quarantine.num_rows,
        "notes": acquired.notes + parsed.notes,
        "schema_version": SCHEMA_VERSION,
        "config": str(cfg.path),
    }
    return _write_outputs(cfg.name, out_dir, norm.table, quarantine, provenance, acquired.from_cache, requests)


def _fetch_and_parse(cfg: SourceConfig, opts: IngestOptions, columns: dict[str, str], limit: int | None,
                     cache: Cache):
    """The raw result (from the archive or the cache), parsed and normalised; a fresh result is cached."""
    with Reporter(opts.progress) as rep:
        acquired, requests = asyncio.run(_acquire(cfg, opts, columns, limit, cache, rep))
        task = rep.add(f"parse {acquired.kind}", total=acquired.size)
        origin = f"{cfg.name} result {acquired.query[:80]!r}" if acquired.kind != "fits" else str(acquired.path)
        try:
            if acquired.kind == "fits":
                table = apogee.extract_fits(acquired.path, cfg.hdu, columns, origin=f"{cfg.filename} (source {cfg.name}, {cfg.path})")
                table = apogee.where_filter(table, opts.where)
                if limit:
                    table = table.slice(0, limit)
                parsed = Parsed(table, empty_rejected(), [])
            elif acquired.kind == "votable":
                parsed = read_votable(acquired.path, origin=origin)
            else:
                parsed = read_csv(acquired.path, COLUMN_TYPES, origin=origin, skip_rows=acquired.skip_rows)
            unexpected = [c for c in parsed.table.column_names if c not in columns]
            if unexpected:
                raise DataError(f"{origin}: unexpected column(s) {unexpected}; asked for {list(columns)}")
            norm = normalise(parsed.table, cfg.survey, origin=origin, null_values=cfg.null_values)
        except BaseException:
            if not acquired.from_cache and acquired.kind != "fits":
                acquired.path.unlink(missing_ok=True)
            raise
        rep.update(task, completed=acquired.size)
        if not acquired.from_cache and acquired.kind != "fits" and opts.use_cache:
            cache.put(acquired.cache_key, acquired.path, sha256=acquired.sha256,
                      meta={"retrieved_at": acquired.retrieved_at, "query": acquired.query})
        elif not acquired.from_cache and acquired.kind != "fits":
            acquired.path.unlink(missing_ok=True)
    return acquired, requests, parsed, norm


def _quarantine(parse_rejects: pa.Table, value_rejects: pa.Table) -> pa.Table:
    records = pa.array([], pa.string())
    if value_rejects.num_rows:
        parts = [pc.fill_null(pc.cast(value_rejects.column(c), pa.string()), "")
                 for c in value_rejects.column_names if c != "reason"]
        records = pc.binary_join_element_wise(*parts, ",") if len(parts) > 1 else parts[0]
    second = pa.table({"line": pa.nulls(value_rejects.num_rows, pa.int64()),
                       "reason": value_rejects.column("reason").cast(pa.string()),
                       "record": records})
    return pa.concat_tables([parse_rejects.cast(second.schema), second])


def _write_outputs(name: str, out_dir: Path, table: pa.Table, quarantine: pa.Table, provenance: dict,
                   from_cache: bool, requests: int) -> IngestResult:
    parquet = out_dir / f"{name}.parquet"
    prov_path = out_dir / f"{name}.provenance.json"
    q_path = out_dir / f"{name}.quarantine.csv"
    with atomic_path(parquet) as tmp:
        pq.write_table(with_provenance(table, provenance), tmp, compression="zstd")
        provenance = dict(provenance, parquet_sha256=file_sha256(tmp))
        if quarantine.num_rows:
            with atomic_path(q_path) as qtmp:
                pacsv.write_csv(quarantine, qtmp)
        else:
            q_path.unlink(missing_ok=True)
        write_json(prov_path, provenance)
    return IngestResult(parquet, prov_path, q_path if quarantine.num_rows else None, table.num_rows,
                        quarantine.num_rows, from_cache, requests)


async def _acquire(cfg: SourceConfig, opts: IngestOptions, columns: dict[str, str], limit: int | None,
                   cache: Cache, rep: Reporter) -> tuple[Acquired, int]:
    async with HttpTransport(cfg.transport) as transport:
        if cfg.protocol == "file":
            acquired = await _acquire_file(cfg, opts, transport, cache, rep)
        else:
            acquired = await _acquire_query(cfg, opts, columns, limit, transport, cache, rep)
        return acquired, transport.requests_made


async def _acquire_query(cfg, opts, columns, limit, transport: HttpTransport, cache: Cache, rep) -> Acquired:
    where = [cfg.base_where, opts.where or ""]
    query = build_adql(cfg.table, columns, limit=limit, where=where)
    kind = cfg.format if cfg.protocol == "tap" else "csv"
    key = {"protocol": cfg.protocol, "endpoint": cfg.endpoint.rstrip("/"), "query": query, "format": kind}
    if opts.use_cache:
        hit = cache.get(key)
        if hit is not None:
            rep.log(f"cache hit for {cfg.name} query ({hit.size} bytes)")
            return Acquired(hit.path, kind, query, hit.sha256, hit.size, True,
                            hit.meta.get("retrieved_at", ""), "cache", 1 if cfg.protocol == "skyserver" else 0,
                            key)
    khash = key_hash(key)
    dest = cache.root / "tmp" / f"{khash}.{os.getpid()}.{kind}"
    task = rep.add(f"{cfg.name}: query", total=None)

    def on_bytes(n: int) -> None:
        rep.advance(task, n)

    retrieved_at = _now()
    skip = 0
    try:
        if cfg.protocol == "skyserver":
            fetched, skip = await skyserver.query(transport, cfg.endpoint, query, dest, on_bytes)
            mode = "sql"
        else:
            client = TapClient(transport, cfg.endpoint, result_format=kind,
                               status=lambda msg: rep.update(task, description=f"{cfg.name}: {msg}"))
            mode = opts.mode
            if mode == "auto":
                mode = "sync" if limit and limit <= cfg.sync_max_rows else "async"
            if mode == "sync":
                fetched = await client.sync(query, limit, dest, on_bytes)
            else:
                fetched = await _run_async_job(client, cfg, opts, query, limit, dest, cache, khash, on_bytes)
    except BaseException:  # failed or interrupted (Ctrl-C cancels the task): no partial result left in tmp/
        dest.unlink(missing_ok=True)
        raise
    return Acquired(fetched.path, kind, query, fetched.sha256, fetched.size, False, retrieved_at, mode, skip, key)


async def _run_async_job(client: TapClient, cfg: SourceConfig, opts: IngestOptions, query: str, limit,
                         dest: Path, cache: Cache, khash: str, on_bytes):
    """Create (or with --resume, re-attach to) an async job, wait, fetch, delete."""
    state = cache.root / "jobs" / f"{khash}.json"
    job = None
    if opts.resume and state.exists():
        try:
            job = json.loads(state.read_text())["job"]
            phase = await client.phase(job)
        except (ValueError, KeyError, DataError):
            job = None
        else:
            if phase in ("ERROR", "ABORTED", "ARCHIVED"):
                await client.delete_job(job)
                job = None
    if job is None:
        job = await client.create_job(query, limit)
        write_json(state, {"job": job, "query": query, "created_at": _now()})
        await client.run_job(job)
    else:
        phase = await client.phase(job)
        if phase == "PENDING":
            await client.run_job(job)
    s = cfg.transport
    phase = await client.wait(job, s.job_timeout_s, s.poll_min_s, s.poll_max_s)
    if phase != "COMPLETED":
        message = await client.error_message(job) if phase == "ERROR" else phase.lower()
        await client.delete_job(job)
        state.unlink(missing_ok=True)
        raise DataError(f"TAP job {job} at {cfg.endpoint} ended in {phase}: {message}")
    try:
        fetched = await client.fetch_result(job, dest, on_bytes)
    except DataError as exc:
        if "error document" in str(exc):
            await client.delete_job(job)
            state.unlink(missing_ok=True)
        raise
    await client.delete_job(job)
    state.unlink(missing_ok=True)
    return fetched


async def _acquire_file(cfg: SourceConfig, opts: IngestOptions, transport: HttpTransport, cache: Cache,
                        rep) -> Acquired:
    url = f"{cfg.endpoint.rstrip('/')}/{cfg.filename}"
    key = {"protocol": "file", "url": url}
    query = f"GET {url}"
    if opts.use_cache:
        hit = cache.get(key)
        if hit is not None:
            rep.log(f"cache hit for {url}")
            return Acquired(hit.path, "fits", query, hit.sha256, hit.size, True,
                            hit.meta.get("retrieved_at", ""), "cache", 0, key, hit.meta.get("notes", []))
    expected = None
    notes = []
    if cfg.checksum:
        algo, _, expected = cfg.checksum.partition(":")
        expected = expected.lower()
    elif cfg.checksum_file:
        algo = cfg.checksum_algorithm
        expected = await fetch_checksum(transport, f"{cfg.endpoint.rstrip('/')}/{cfg.checksum_file}", cfg.filename)
    else:
        algo = ""
        notes.append("no published checksum configured; verified length and ETag only")
    part = cache.partial_path(key)
    task = rep.add(f"{cfg.name}: {cfg.filename}", total=None)
    retrieved_at = _now()
    resume = opts.resume
    for attempt in range(2):
        fetched = await download_resumable(
            transport, url, part, resume=resume, segment_size=max(1, int(float(cfg.segment_mb) * (1 << 20))),
            on_bytes=lambda n: rep.advance(task, n), on_total=lambda t: rep.update(task, total=t, completed=0))
        if expected is None:
            break
        actual = fetched.sha256 if algo == "sha256" else await asyncio.to_thread(file_digest, part, algo)
        if actual == expected:
            notes.append(f"{algo} checksum verified ({expected})")
            break
        part.unlink(missing_ok=True)
        if attempt == 1:
            raise ChecksumError(f"{url}: {algo} checksum mismatch after download (expected {expected}, "
                                f"got {actual}); the partial file was deleted")
        rep.log(f"{algo} mismatch for {url}; downloading again from scratch")
        resume = False
    entry = cache.put(key, part, sha256=fetched.sha256,
                      meta={"retrieved_at": retrieved_at, "etag": fetched.headers.get("ETag"), "notes": notes})
    if fetched.resumed_from:
        notes.append(f"resumed from byte {fetched.resumed_from}")
    return Acquired(entry.path, "fits", query, fetched.sha256, fetched.size, False, retrieved_at, "ranged", 0,
                    key, notes)
