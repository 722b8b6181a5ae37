"""SDSS SkyServer SQL search (``SearchTools/SqlSearch?cmd=<SQL>&format=csv``).

SkyServer answers CSV whose first line is a ``#Table1`` marker, then the header and the rows.
A failed query comes back as text or HTML without that marker; it is reported as an error with
the service's message rather than parsed. The query text comes from
:func:`astroscale_fl.ingest.tap.build_adql`: ADQL's ``SELECT TOP n`` is SQL Server's too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from astroscale_fl.errors import DataError
from astroscale_fl.ingest.download import Fetched, fetch_to_file
from astroscale_fl.ingest.transport import HttpStatusError, HttpTransport, describe_body

TABLE_MARKER = b"#Table1"


async def query(transport: HttpTransport, endpoint: str, sql: str, dest: Path,
                on_bytes: Callable[[int], None] | None = None) -> tuple[Fetched, int]:
    """Run ``sql``; stream the CSV into ``dest``. Returns the fetch and the lines to skip."""
    what = f"SkyServer query to {endpoint}"
    try:
        fetched = await fetch_to_file(transport, "GET", endpoint, dest, what=what,
                                      params={"cmd": sql, "format": "csv"}, on_bytes=on_bytes)
    except HttpStatusError as exc:
        raise DataError(f"{what}: HTTP {exc.response.status_code}: {describe_body(exc.response.content)}") from None
    with open(dest, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(TABLE_MARKER):
        return fetched, 1
    dest.unlink(missing_ok=True)
    raise DataError(f"{what} failed: {describe_body(head) or 'empty answer'}")
