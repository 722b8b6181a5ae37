"""A node's rows as encoded arrays: statistics, quarantine, local validation share, tensor files.

A deployed node's table (``<data-dir>/train.parquet``, or a directory ``<data-dir>/train/`` of
Parquet files) is never loaded whole: its statistics and its encoding stream record batches, and
the encoded rows live in memory-mapped tensor files under ``<data-dir>/.astroscale-cache/``,
keyed by the table's fingerprint and the pipeline (:func:`astroscale_fl.data.tensor_files.cached_tensors`).
A simulated node's rows (its partition of the task frame) go through the same functions as one batch
(:mod:`astroscale_fl.data.node_data` picks the path).

The local validation share is defined by row id (:mod:`astroscale_fl.data.holdout`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from astroscale_fl.data.holdout import ID, LOCAL_VAL_FRACTION, is_local_val
from astroscale_fl.data.tensor_files import cached_tensors
from astroscale_fl.preprocessing import ColumnStatistics, Pipeline
from astroscale_fl.preprocessing.stream import ROW, columns_of, fingerprint, iter_batches

CACHE_DIR = ".astroscale-cache"


def content_digest(table: Path) -> str:
    """Identity of a Parquet table's content that survives a copy or a move: each file's path
    relative to the table, its size, and its Parquet footer (schema, row counts, column
    statistics), hashed. Cheap (the footers only; a CSV is hashed whole, in 1 MiB blocks); memoised by the stat-based
    :func:`~astroscale_fl.preprocessing.stream.fingerprint`, so an edited table is read again."""
    return _content_digest(str(table), fingerprint(table))


@functools.lru_cache(maxsize=1024)
def _content_digest(table: str, _stat_key: str) -> str:
    root = Path(table)
    digest = hashlib.sha256()
    for f in sorted(root.rglob("*.parquet")) if root.is_dir() else [root]:
        size = f.stat().st_size
        digest.update(f"{f.relative_to(root) if root.is_dir() else ''}\x00{size}\x00".encode())
        with open(f, "rb") as handle:
            if size >= 12:  # ... <footer> <footer length, 4 bytes LE> "PAR1"
                handle.seek(size - 8)
                tail = handle.read(8)
                footer_len = int.from_bytes(tail[:4], "little")
                if tail[4:] == b"PAR1" and footer_len <= size - 12:
                    handle.seek(size - 8 - footer_len)
                    digest.update(handle.read())
                    continue
                handle.seek(0)
            for block in iter(lambda: handle.read(1 << 20), b""):  # not Parquet (a CSV): all of it, streamed
                digest.update(block)
    return digest.hexdigest()[:24]


def _columns(pipeline: Pipeline, table: Path) -> list[str]:
    names = pipeline.inputs + [pipeline.target.target]
    return names + ([ID] if ID in columns_of(table) else [])


def _batches(pipeline: Pipeline, table: Path, chunk_rows: int | None) -> Iterable[dict[str, np.ndarray]]:
    return iter_batches(table, _columns(pipeline, table), chunk_rows, role="node data")


def statistics(pipeline: Pipeline, batches: Iterable[dict[str, np.ndarray]], seed: int) -> tuple[ColumnStatistics, int, int]:
    """(statistics of the training share's valid rows, training rows, quarantined rows)."""
    total, rows, quarantined = None, 0, 0
    for batch in batches:
        train = ~is_local_val(batch, seed)
        batch = {k: v[train] for k, v in batch.items()}
        rows += len(batch[ROW]) if ROW in batch else len(next(iter(batch.values())))
        quarantined += int(pipeline.quarantine(batch)[0].sum())
        part = pipeline.compute_statistics(batch)
        total = part if total is None else total.update(part)
    return total, rows, quarantined


def table_statistics(cfg, table: Path, pipeline: Pipeline) -> tuple[ColumnStatistics, int, int]:
    """The statistics a deployed node's table contributes to the federated fit (streamed)."""
    return statistics(pipeline, _batches(pipeline, table, cfg.preprocess.chunk_rows), int(cfg.seed))


def encode_frame(pipeline: Pipeline, frame, training: bool) -> tuple[np.ndarray, np.ndarray]:
    """(features, target) of an in-memory frame's valid rows (outlier drops in training only)."""
    keep = ~pipeline.quarantine(frame)[0]
    if training:
        keep &= ~pipeline.outlier_rows(frame)
    rows = frame.loc[keep] if hasattr(frame, "loc") else {k: v[keep] for k, v in frame.items()}
    return pipeline.transform_features(rows, validated=True), pipeline.transform_target(rows)


def frame_arrays(pipeline: Pipeline, train, val) -> dict[str, np.ndarray]:
    """``train_x``, ``train_y``, ``val_x``, ``val_y`` of a node's in-memory (training, validation) frames."""
    (tx, ty), (vx, vy) = encode_frame(pipeline, train, True), encode_frame(pipeline, val, False)
    return {"train_x": tx, "train_y": ty, "val_x": vx, "val_y": vy}


def table_arrays(cfg, data_dir: str, table: Path, pipeline: Pipeline) -> dict[str, np.ndarray]:
    """``train_x``, ``train_y``, ``val_x``, ``val_y`` of a deployed node's table: memory-mapped
    tensor files under ``<data_dir>/.astroscale-cache``."""
    seed = int(cfg.seed)
    cache = Path(data_dir) / CACHE_DIR
    id_column = ID if ID in _columns(pipeline, table) else None
    out = {}
    for share, want_val in (("train", False), ("val", True)):
        tensors = cached_tensors(cache, table, pipeline, f"{share}:{seed}:{LOCAL_VAL_FRACTION}",
                                 lambda b, v=want_val: is_local_val(b, seed) == v, cfg.preprocess.chunk_rows, id_column,
                                 training=not want_val)
        out[f"{share}_x"], out[f"{share}_y"] = tensors["features"], tensors["target"]
    return out
