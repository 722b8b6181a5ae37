"""Tensor files: a table's rows encoded once as float32 NPY files, then memory-mapped.

:func:`encode_table` streams a Parquet file / directory (or CSV) in record batches: it fits the
pipeline from merged batch statistics (unless given a fitted one), quarantines rows that fail
validation, and appends each batch's encoded rows to ``features.npy``, ``target.npy`` (when the
table has the target) and ``row_ids.npy``, so memory stays at one batch whatever the table's size.
When fitting, the encoding pass replays the last batches of the statistics pass that fit in
``preprocess.cache_bytes`` (:mod:`.batch_cache`) and decodes only the rows before them; a table of
one batch is decoded once. Files are written into one temporary directory and moved into place
at the end (:func:`astroscale_fl.atomic.atomic_files`); a crash leaves no file that looks whole,
and the next write removes a dead writer's temporary directory.

:func:`cached_tensors` keeps those files in a node's cache directory, keyed by the table's
fingerprint and the pipeline's state, and opens them with ``np.load(mmap_mode="r")``: a later
round, run or restart reuses them; a changed table or pipeline gets new files.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from astroscale_fl.atomic import atomic_files, write_text
from astroscale_fl.data.batch_cache import DEFAULT_CACHE_BYTES, BatchCache
from astroscale_fl.errors import DataError, short_list
from astroscale_fl.preprocessing import Pipeline
from astroscale_fl.preprocessing.stream import (
    ROW,
    columns_of,
    count_rows,
    default_chunk_rows,
    fingerprint,
    iter_batches,
)

FEATURES, TARGET, ROW_IDS, QUARANTINE, PIPELINE = "features.npy", "target.npy", "row_ids.npy", "quarantine.parquet", "preprocessing.json"
ARROW = "features.arrow"
_HEADER = 128  # bytes of NPY header we reserve, so the final shape is written in place at the end
Selector = Callable[[dict[str, np.ndarray]], np.ndarray]


def _quietly(cleanup: Callable[[], object]) -> None:
    """Run a clean-up step after another error, whose error is the one to report."""
    try:
        cleanup()
    except Exception:  # noqa: BLE001 - cleaning up after another error
        pass


class NpyAppender:
    """Append rows to a ``.npy`` file whose row count is known only at the end.

    Each batch is written by a background thread (the write releases the GIL) while the next
    batch is encoded; one batch at most is in flight, so memory stays at a batch."""

    def __init__(self, path: Path, dtype: str, width: int | None):
        self.path, self.dtype, self.width, self.rows = path, np.dtype(dtype), width, 0
        self._file = open(path, "wb")
        self._file.write(b"\0" * _HEADER)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="npy-writer")
        self._pending: Future | None = None

    def append(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        data = memoryview(np.ascontiguousarray(rows, dtype=self.dtype)).cast("B")  # no bytes copy
        self._wait()
        self._pending = self._writer.submit(self._file.write, data)
        self.rows += len(rows)

    def _wait(self) -> None:
        """Finish the write in flight (raising its error, e.g. a full disk)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        self._wait()
        self._writer.shutdown()
        shape = (self.rows,) if self.width is None else (self.rows, self.width)
        header = f"{{'descr': '{self.dtype.str}', 'fortran_order': False, 'shape': {shape}, }}"
        header = header.ljust(_HEADER - 10 - 1) + "\n"
        self._file.seek(0)
        self._file.write(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1"))
        self._file.close()

    def abort(self) -> None:
        _quietly(self._wait)
        self._writer.shutdown()
        self._file.close()
        self.path.unlink(missing_ok=True)


@dataclass
class Summary:
    """What one encoding pass did."""

    rows_in: int
    written: int
    quarantined: int
    dropped_outliers: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows_in / max(self.seconds, 1e-9)

    def line(self) -> str:
        return (f"rows in {self.rows_in:,} / written {self.written:,} / quarantined {self.quarantined:,}"
                f"{f' / outliers dropped {self.dropped_outliers:,}' if self.dropped_outliers else ''}"
                f" in {self.seconds:.1f} s ({self.rows_per_second:,.0f} records/s)")


def _select(batch: dict[str, np.ndarray], select: Selector | None) -> dict[str, np.ndarray]:
    if select is None:
        return batch
    keep = select(batch)
    return batch if keep.all() else {k: v[keep] for k, v in batch.items()}


def encode_table(path: str | Path, pipeline: Pipeline, out_dir: str | Path, *, fit: bool = True, chunk_rows: int | None = None,
                 id_column: str | None = None, select: Selector | None = None, training: bool = True,
                 progress: Callable[[int], None] | None = None, arrow: bool = False, cache_bytes: int | None = None) -> Summary:
    """Encode the (selected) rows of ``path`` into tensor files in ``out_dir``; fit first when ``fit``.

    ``training``: rows ``preprocess.outlier_action=drop`` marks are left out (prediction keeps them).
    ``progress`` is called with the number of rows read, twice per row when fitting.
    ``arrow``: also write ``features.arrow`` (:class:`ArrowAppender`) for consumers that want columns.
    ``cache_bytes``: when fitting, the decoded batches of the statistics pass kept for the encoding
    pass (:class:`BatchCache`; None: :data:`DEFAULT_CACHE_BYTES`, 0: none); a table of one batch is
    always decoded once.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    target = pipeline.target.target
    present = columns_of(path)
    with_target = target in present
    columns = list(dict.fromkeys(pipeline.inputs + ([target] if with_target else []) + ([id_column] if id_column else [])))
    missing = [c for c in columns if c not in present]
    if missing:
        raise DataError(f"{path}: missing column(s) {short_list(missing)}; columns are {short_list(present, 20)}")
    if arrow:
        check_arrow_names(pipeline.features)
    numeric = [c for c in pipeline.inputs + ([target] if with_target else []) if c != pipeline.time_column]

    def decoded(stop: int | None = None):
        """(table position, table rows, selected batch) per batch of the rows before ``stop`` (all when None)."""
        position = 0
        for batch in iter_batches(path, columns, chunk_rows, numeric=numeric):
            rows = len(batch[ROW])
            if stop is not None and position + rows > stop:
                batch, rows = {k: v[: stop - position] for k, v in batch.items()}, stop - position
            ids = np.asarray(batch[id_column]) if id_column else None
            if ids is not None and ids.dtype.kind in "iuf" and np.isfinite(ids).all():
                batch[ROW] = ids.astype(np.int64)  # integer ids are the row ids; others keep table positions
            if progress:
                progress(rows)
            yield position, rows, _select(batch, select)
            position += rows
            if stop is not None and position >= stop:
                return  # before the scanner decodes another batch

    cache = None
    if fit:
        if not with_target:
            raise DataError(f"{path}: no target column {target!r} to fit preprocessing on (give --preprocessing JSON)")
        if Path(path).suffix.lower() != ".csv":
            total_rows, batch_rows = count_rows(path), chunk_rows or default_chunk_rows(len(columns))
            budget = None if total_rows <= batch_rows else DEFAULT_CACHE_BYTES if cache_bytes is None else int(cache_bytes)
            cache = BatchCache(budget, total_rows, 8 * len(columns) + 9)  # a row: float64 columns, row id, verdict
        stats = None
        for position, rows, batch in decoded():
            verdict = pipeline.quarantine(batch, True)  # reused by the encoding pass when the batch is cached
            stats = pipeline.compute_statistics(batch, verdict[0], into=stats)
            if cache is not None:
                cache.offer(position, rows, batch, verdict, verdict[0].nbytes + verdict[1].nbytes + verdict[2].nbytes)
        if stats is None:
            raise DataError(f"{path}: no data rows (header only?); nothing to fit preprocessing on")
        if not stats.count[stats.columns.index(target)]:
            raise DataError(f"{path}: task.target {target!r}: every value is empty / NaN (or its row fails validation); "
                            f"nothing to fit preprocessing on")
        pipeline.fit_statistics(stats)

    def encode_pass():
        stop = cache.start if cache is not None else None
        if stop != 0:
            yield from ((batch, None) for _, _, batch in decoded(stop))
        for rows, batch, verdict in cache.replay() if cache is not None else ():
            if progress:
                progress(rows)
            yield batch, verdict

    with atomic_files(out_dir, last=FEATURES) as tmp:  # out_dir gets every file, or none (not even the folder)
        writers, quarantine, rows_in, dropped = _encode_into(tmp, pipeline, encode_pass(), with_target, training, arrow)
    written = writers["x"].rows
    return Summary(rows_in, written, quarantine.rows, dropped, time.perf_counter() - start)


def _encode_into(out_dir: Path, pipeline: Pipeline, batches, with_target: bool, training: bool, arrow: bool):
    """Write the tensor files of ``batches`` (batch, verdict or None) into ``out_dir``."""
    target = pipeline.target.target
    writers = {"x": NpyAppender(out_dir / FEATURES, "<f4", len(pipeline.features)),
               "ids": NpyAppender(out_dir / ROW_IDS, "<i8", None)}
    if with_target:
        writers["y"] = NpyAppender(out_dir / TARGET, "<f4", None)
    if arrow:
        writers["arrow"] = ArrowAppender(out_dir / ARROW, pipeline.features, target if with_target else None)
    quarantine = _QuarantineWriter(out_dir / QUARANTINE)
    rows_in = dropped = 0
    # two output buffers, alternating: the features.npy writer holds at most one batch in flight,
    # and reused pages spare the kernel a fresh-page fault per 4 kB of every batch's output
    buffers: list[np.ndarray] = [np.empty((0, len(pipeline.features)), dtype=np.float32)] * 2
    try:
        for batch, verdict in batches:
            rows_in += len(batch[ROW])
            failing, names, reasons = verdict or pipeline.quarantine(batch, with_target)
            quarantine.append(batch[ROW][failing], names, reasons)
            keep = ~failing
            if training and keep.any():
                outliers = pipeline.outlier_rows(batch) & keep
                dropped += int(outliers.sum())
                keep &= ~outliers
            keep = None if keep.all() else keep  # failing rows are skipped by the transform, not copied out
            kept = len(batch[ROW]) if keep is None else int(np.count_nonzero(keep))
            if len(buffers[0]) < kept:
                buffers = [np.empty((kept, len(pipeline.features)), dtype=np.float32) for _ in range(2)]
            buffers.reverse()
            features = pipeline.transform_features(batch, out=buffers[0][:kept], validated=True, keep=keep)
            ids = batch[ROW] if keep is None else batch[ROW][keep]
            target_rows = pipeline.transform_target(batch, keep=keep) if with_target else None
            writers["x"].append(features)
            writers["ids"].append(ids)
            if with_target:
                writers["y"].append(target_rows)
            if arrow:
                writers["arrow"].append(features, target_rows, ids)
        for w in writers.values():
            w.close()
        quarantine.close()
        write_text(out_dir / PIPELINE, json.dumps(pipeline.state_dict(), indent=1))
    except BaseException:
        for w in writers.values():
            w.abort()
        quarantine.abort()
        raise
    return writers, quarantine, rows_in, dropped


class ArrowAppender:
    """The encoded rows as an Arrow IPC file (Feather v2, uncompressed, so it memory-maps): one
    float32 column per feature (named as the model sees them), ``target`` when the table has it,
    and ``row_id``, appended one record batch at a time."""

    def __init__(self, path: Path, features: list[str], target: str | None):
        import pyarrow as pa

        check_arrow_names(features)
        fields = [pa.field(name, pa.float32()) for name in features]
        fields += [pa.field("target", pa.float32(), metadata={"column": target})] if target else []
        self.path, self.features, self.target = path, list(features), target
        self.schema = pa.schema(fields + [pa.field("row_id", pa.int64())])
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, self.schema)

    def append(self, features: np.ndarray, target: np.ndarray | None, row_ids: np.ndarray) -> None:
        import pyarrow as pa

        arrays = [pa.array(np.ascontiguousarray(features[:, j])) for j in range(features.shape[1])]
        arrays += [pa.array(target)] if self.target else []
        self._writer.write_batch(pa.record_batch(arrays + [pa.array(row_ids)], schema=self.schema))

    def close(self) -> None:
        self._writer.close()
        self._sink.close()

    def abort(self) -> None:
        _quietly(self.close)
        self.path.unlink(missing_ok=True)


def check_arrow_names(features: list[str]) -> None:
    """A feature named like the Arrow file's own ``target`` / ``row_id`` columns cannot be written."""
    clash = [c for c in ("target", "row_id") if c in features]
    if clash:
        raise DataError(f"--arrow: feature column(s) {clash} clash with the {ARROW} file's own target/row_id columns")


def open_arrow(directory: str | Path):
    """``features.arrow`` of ``directory`` as a pyarrow Table over a memory map (no copy)."""
    import pyarrow as pa

    return pa.ipc.open_file(pa.memory_map(str(Path(directory) / ARROW), "r")).read_all()


class _QuarantineWriter:
    """Quarantined rows (row id, column, reason) streamed into a Parquet file."""

    def __init__(self, path: Path):
        self.path, self.rows, self._writer = path, 0, None

    def _schema(self):
        import pyarrow as pa

        return pa.schema([("row_id", pa.int64()), ("column", pa.string()), ("reason", pa.string())])

    def append(self, ids: np.ndarray, names: np.ndarray, reasons: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, self._schema())
        if len(ids):
            self._writer.write_table(pa.table({"row_id": ids.astype(np.int64), "column": names.astype(str), "reason": reasons.astype(str)},
                                              schema=self._schema()))
            self.rows += len(ids)

    def close(self) -> None:
        if self._writer is None:
            self.append(np.zeros(0, np.int64), np.zeros(0, object), np.zeros(0, object))
        self._writer.close()

    def abort(self) -> None:
        if self._writer is not None:
            _quietly(self._writer.close)
        self.path.unlink(missing_ok=True)


def open_tensors(directory: str | Path) -> dict[str, np.ndarray]:
    """The tensor files of ``directory``, memory-mapped (``target`` only when written)."""
    directory = Path(directory)
    # copy-on-write maps: torch.from_numpy needs writable arrays; nothing is ever written back
    out = {"features": np.load(directory / FEATURES, mmap_mode="c"), "row_ids": np.load(directory / ROW_IDS, mmap_mode="c")}
    if (directory / TARGET).is_file():
        out["target"] = np.load(directory / TARGET, mmap_mode="c")
    return out


def cache_key(path: str | Path, pipeline: Pipeline, *parts: str) -> str:
    """Key of a table's tensor files: its fingerprint, the pipeline's state and the caller's selection."""
    text = "\x00".join([fingerprint(path), json.dumps(pipeline.state_dict(), sort_keys=True), *parts])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cached_tensors(cache_dir: str | Path, path: str | Path, pipeline: Pipeline, selection_key: str, select: Selector | None,
                   chunk_rows: int | None = None, id_column: str | None = None, training: bool = True) -> dict[str, np.ndarray]:
    """Memory-mapped tensor files of the selected rows of ``path`` under the fitted ``pipeline``,
    written into ``cache_dir/<key>/`` on first use."""
    final = Path(cache_dir) / cache_key(path, pipeline, selection_key, str(id_column), str(training))
    if not (final / FEATURES).is_file():  # another process writing the same key writes the same files
        encode_table(path, pipeline, final, fit=False, chunk_rows=chunk_rows, id_column=id_column, select=select, training=training)
    return open_tensors(final)
