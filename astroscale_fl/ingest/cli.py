"""``astroscale-fl ingest``: fetch a survey catalog from its public archive into the common schema.

Call :func:`main` with the arguments after ``ingest``; or run ``python -m astroscale_fl.ingest.cli``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from astroscale_fl.errors import USER_ERROR_EXIT, AstroScaleError, UserArgumentParser, one_line
from astroscale_fl.ingest.pipeline import DEFAULT_CACHE, DEFAULT_OUT, IngestOptions, run_ingest
from astroscale_fl.ingest.schema import MAPPABLE

SOURCES = ("gaia", "sdss", "apogee", "rave", "hst", "jwst")

EPILOG = """\
sources and protocols:
  gaia    Gaia DR3 gaiadr3.gaia_source, IVOA TAP (sync for small results, async jobs otherwise)
  sdss    SDSS DR17 spectroscopic objects, SkyServer SQL search (CSV)
  apogee  APOGEE DR17 allStar FITS, ranged concurrent resumable download + column extraction
  rave    RAVE DR6, TAP
  hst     HST observations, MAST CAOM TAP (ObsCore)
  jwst    JWST observations, MAST CAOM TAP (ObsCore)
Defaults (endpoint, table, columns, limits, retry policy) live in conf/source/<source>.yaml.

outputs (in --out):
  <source>.parquet             common schema (units in field metadata, provenance in schema metadata)
  <source>.provenance.json     source, release, endpoint, query, retrieval time, checksums, counts
  <source>.quarantine.csv      rejected rows with a `reason` column (only when rows were rejected)

examples:
  astroscale-fl ingest --source gaia --limit 50000 --where "parallax > 10"
  astroscale-fl ingest --source sdss --columns z snr teff --out data/node1
  astroscale-fl ingest --source apogee --resume
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``astroscale-fl ingest``."""
    p = UserArgumentParser(
        prog="astroscale-fl ingest",
        description="Download a survey catalog from its public archive, verify it, and write it as "
                    "Parquet in the common AstroScale schema (with provenance and a quarantine of "
                    "rejected rows). Retries, rate limits, resumable downloads and a local cache are built in.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--source", required=True, choices=SOURCES, help="archive to ingest from")
    p.add_argument("--limit", type=int, metavar="N",
                   help="at most N rows (default: the source's default_limit; 0 = no limit)")
    p.add_argument("--where", metavar="EXPR",
                   help="extra filter in the archive's language (ADQL for TAP, SQL for SkyServer; "
                        "for apogee: '<column> <op> <number>' conditions joined by AND on common names)")
    p.add_argument("--columns", nargs="+", metavar="COL",
                   help=f"common-schema columns to fetch (source_id, ra, dec always included); "
                        f"any of: {', '.join(MAPPABLE)}")
    p.add_argument("--endpoint", metavar="URL", help="override the service base URL from the source YAML")
    p.add_argument("--out", type=Path, metavar="DIR", help=f"output directory (default: {DEFAULT_OUT}/<source>)")
    p.add_argument("--cache-dir", type=Path, metavar="DIR", help=f"download/query cache (default: {DEFAULT_CACHE})")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: keep partial downloads and re-attach to a pending TAP job")
    p.add_argument("--format", choices=("csv", "votable"), help="TAP result format (default from the YAML)")
    p.add_argument("--mode", choices=("auto", "sync", "async"), default="auto",
                   help="TAP query mode (auto: sync up to sync_max_rows, async above)")
    p.add_argument("--no-cache", action="store_true", help="ignore cached results (the new result is still cached)")
    p.add_argument("--timeout", type=float, metavar="S", help="per-request read timeout in seconds")
    p.add_argument("--retries", type=int, metavar="N", help="attempts per request before giving up (>= 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default when stderr is not a terminal)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``astroscale-fl ingest``; returns the exit status (2 for user errors)."""
    args = build_parser().parse_args(argv)
    columns = None
    if args.columns:
        columns = [c.strip() for item in args.columns for c in item.split(",") if c.strip()]
    opts = IngestOptions(
        source=args.source, limit=args.limit, where=args.where, columns=columns, endpoint=args.endpoint,
        out=args.out, cache_dir=args.cache_dir, resume=args.resume, format=args.format, mode=args.mode,
        use_cache=not args.no_cache, timeout_s=args.timeout, max_attempts=args.retries,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    try:
        result = run_ingest(opts)
    except AstroScaleError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        print("interrupted (rerun with --resume to continue)", file=sys.stderr)
        return 130
    where = "cache" if result.from_cache else f"{result.requests} request(s)"
    print(f"{args.source}: {result.rows} rows -> {result.parquet} ({where})")
    if result.quarantine:
        print(f"{args.source}: {result.rejected} rejected rows -> {result.quarantine}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
