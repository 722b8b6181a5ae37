"""The fit pass's decoded record batches, replayed for the encoding pass of ``encode_table``.

Fitting and encoding are two passes over a table; decoding Parquet is most of their cost. The
second pass reads the first pass's decoded batches instead, when that keeps memory bounded:

- ``memory``: the table is one batch: memory stays at that one batch;
- ``spill``: the decoded columns fit in a quarter of the memory available now, so the page cache
  holds a scratch file of them (written and read back with plain ``write``/``readinto``: a copy,
  ~10x cheaper than decoding, and page cache is not the process's memory);
- otherwise (larger tables, non-numeric columns) the encoding pass decodes the table again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

SPILL_SHARE = 0.25  # of MemAvailable


def available_memory() -> int:
    """Bytes of memory available to new work (``MemAvailable``; 0 when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class DecodedBatches:
    """Decoded batches kept by :meth:`keep` during one pass and given back by :meth:`replay`."""

    def __init__(self, spill: Path | None):
        self.spill = spill
        self.usable = True
        self._batches: list[dict[str, np.ndarray]] = []
        self._layout: list[list[tuple[str, np.dtype, tuple[int, ...]]]] = []
        self._file = open(spill, "w+b") if spill is not None else None

    @classmethod
    def plan(cls, rows: int, num_columns: int, chunk_rows: int, spill: Path) -> DecodedBatches | None:
        """How a table of ``rows`` x ``num_columns`` read ``chunk_rows`` at a time is reused (None: decoded twice)."""
        if rows <= chunk_rows:
            return cls(None)
        if rows * (num_columns + 1) * 8 <= SPILL_SHARE * available_memory():
            return cls(spill)
        return None

    def keep(self, batch: dict[str, np.ndarray]) -> None:
        if not self.usable:
            return
        if self._file is None:
            self._batches.append(batch)
            return
        if any(np.asarray(v).dtype.kind not in "iufb" for v in batch.values()):  # strings: not worth a format
            self.discard()
            return
        entry = []
        for name, values in batch.items():
            values = np.ascontiguousarray(values)
            self._file.write(memoryview(values).cast("B"))
            entry.append((name, values.dtype, values.shape))
        self._layout.append(entry)

    def replay(self) -> Iterator[dict[str, np.ndarray]]:
        """The kept batches in order (each released once handed out)."""
        if self._file is None:
            while self._batches:
                yield self._batches.pop(0)
            return
        self._file.flush()
        self._file.seek(0)
        for entry in self._layout:
            batch = {}
            for name, dtype, shape in entry:
                batch[name] = values = np.empty(shape, dtype=dtype)
                if self._file.readinto(memoryview(values).cast("B")) != values.nbytes:
                    raise OSError(f"{self.spill}: scratch file shorter than written")
            yield batch

    def discard(self) -> None:
        """Drop what was kept (and the scratch file); later :meth:`keep` calls keep nothing."""
        self.usable = False
        self._batches.clear()
        if self._file is not None:
            self._file.close()
            self.spill.unlink(missing_ok=True)
            self._file = None
