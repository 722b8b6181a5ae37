"""Content-addressed local cache with expiry.

Layout under the cache directory::

    objects/<aa>/<sha256>        the bytes, named by their SHA-256 (stored once)
    index/<key-hash>.json        request key -> object, size, created/expires time, metadata
    partial/<key-hash>.part      in-progress downloads (+ ``.part.json`` resume state)
    tmp/<key-hash>.<pid>.<kind>  a query result being fetched (deleted when the fetch fails or is
                                 interrupted; left by a killed process, removed by the next ingest)
    jobs/<key-hash>.json         a pending TAP async job (for ``--resume``)

``tmp/`` and ``jobs/`` are removed when a run leaves them empty.

A *key* describes what was asked for (endpoint, query, format, or a file URL); a hit returns
the stored object without any network request. Entries are written atomically, so a crash
never leaves an index entry pointing at a partial object.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from astroscale_fl.atomic import pid_alive, write_json


def key_hash(key: dict | str) -> str:
    """Stable SHA-256 hex digest of a request key."""
    text = key if isinstance(key, str) else json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: Path, chunk: int = 8 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class CacheEntry:
    """A cache hit: the object path and the entry's recorded metadata."""

    path: Path
    sha256: str
    size: int
    created: float
    meta: dict


class Cache:
    """Content-addressed cache; ``ttl_s`` is the default lifetime of new entries."""

    def __init__(self, root: Path, ttl_s: float = 7 * 86400):
        self.root = Path(root)
        self.ttl_s = ttl_s

    def _index(self, key: dict | str) -> Path:
        return self.root / "index" / f"{key_hash(key)}.json"

    def object_path(self, sha256: str) -> Path:
        """Where the object with this SHA-256 lives."""
        return self.root / "objects" / sha256[:2] / sha256

    def partial_path(self, key: dict | str) -> Path:
        """Where an in-progress download for ``key`` is kept between attempts and runs."""
        return self.root / "partial" / f"{key_hash(key)}.part"

    def get(self, key: dict | str) -> CacheEntry | None:
        """Return the live entry for ``key``, or None (missing, expired, or object gone)."""
        index = self._index(key)
        try:
            entry = json.loads(index.read_text())
        except (OSError, ValueError):
            return None
        if entry.get("expires", 0) < time.time():
            return None
        obj = self.object_path(entry["sha256"])
        try:
            if obj.stat().st_size != entry["size"]:
                return None
        except OSError:
            return None
        return CacheEntry(obj, entry["sha256"], entry["size"], entry["created"], entry.get("meta", {}))

    def remove_stale_tmp(self) -> int:
        """Delete ``tmp/<key>.<pid>.<kind>`` query results of processes that no longer run (an ingest
        killed mid-download); return how many were removed."""
        removed = 0
        for path in (self.root / "tmp").glob("*.*.*"):
            pid = path.name.split(".")[1]
            if pid.isdigit() and not pid_alive(int(pid)):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def remove_empty_work_dirs(self) -> None:
        """Remove ``tmp/`` and ``jobs/`` when a run leaves them empty (a failed fetch, a finished job)."""
        for name in ("tmp", "jobs"):
            try:
                (self.root / name).rmdir()
            except OSError:  # missing, or holds another run's files
                pass

    def put(self, key: dict | str, src: Path, *, sha256: str | None = None, meta: dict | None = None,
            move: bool = True, ttl_s: float | None = None) -> CacheEntry:
        """Store the file ``src`` under ``key`` (moved, or copied if ``move`` is False)."""
        sha256 = sha256 or file_sha256(src)
        obj = self.object_path(sha256)
        obj.parent.mkdir(parents=True, exist_ok=True)
        size = src.stat().st_size
        if not (obj.exists() and obj.stat().st_size == size):
            tmp = obj.with_name(f".{obj.name}.{os.getpid()}.tmp")
            if move:
                os.replace(src, tmp)
            else:
                shutil.copyfile(src, tmp)
            os.replace(tmp, obj)
        elif move:
            src.unlink(missing_ok=True)
        now = time.time()
        ttl = self.ttl_s if ttl_s is None else ttl_s
        entry = {"key": key, "sha256": sha256, "size": size, "created": now, "expires": now + ttl,
                 "meta": meta or {}}
        write_json(self._index(key), entry)
        return CacheEntry(obj, sha256, size, now, meta or {})
