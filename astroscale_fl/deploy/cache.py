"""On-disk cache of a node's encoded arrays, in its data directory, keyed by pipeline.

Flower starts a fresh ClientApp process for every message, so the in-process tensor cache of
``astroscale_fl.federation.client`` is empty each time: every training message would re-read
``train.parquet`` (pandas + pyarrow) and re-encode it. This cache keeps the encoded arrays in
``<data-dir>/.astroscale-cache/<key>.npz`` (written atomically), keyed by the caller's key (the
pipeline JSON, task, seed, local-validation split) plus the size and mtime of ``train.parquet``,
so new data or a new pipeline (a new run) never reads stale arrays. Only numpy is imported here.

Use from the ClientApp (``client.node_tensors``)::

    from astroscale_fl.deploy.cache import cached_arrays
    arrays = cached_arrays(node_config.get("data-dir"), key, lambda: {"train_x": ..., "train_y": ..., ...})

A read-only data directory just means no cache (the arrays are computed every time).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

CACHE_DIR = ".astroscale-cache"
KEEP = 4  # newest cache files kept per data directory (one per pipeline: runs rarely interleave)


def cache_file(data_dir: str | Path, key: str) -> Path:
    """Where the arrays for ``key`` live (the key includes train.parquet's size and mtime)."""
    data_dir = Path(data_dir)
    try:
        st = (data_dir / "train.parquet").stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        stamp = "missing"
    digest = hashlib.sha256(f"{key}\x00{stamp}".encode()).hexdigest()[:24]
    return data_dir / CACHE_DIR / f"{digest}.npz"


def cached_arrays(data_dir: str | Path | None, key: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays for ``key``: loaded from the node's cache, or computed and stored there."""
    if not data_dir:
        return compute()
    path = cache_file(data_dir, key)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
    arrays = compute()
    try:
        _store(path, arrays)
    except OSError:
        pass  # read-only data directory: no cache
    return arrays


def _store(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(buffer.getbuffer())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    old = sorted(path.parent.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)[KEEP:]
    for stale in old:
        stale.unlink(missing_ok=True)
