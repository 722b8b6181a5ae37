"""A budget-capped in-memory cache of decoded record batches between two passes over a table.

Fitting a pipeline on a table and then encoding it reads the table twice (statistics pass,
encoding pass); decoding Parquet is the largest cost of both. :class:`BatchCache` keeps the *last*
batches of the first pass that fit in ``preprocess.cache_bytes``, so the second pass decodes only
the rows before them and then replays the cached ones: with a budget of B bytes, memory is at
most B more than streaming (B = 0: plain streaming), and a table that fits is decoded once.

Batches are held exactly as decoded (numpy views of pyarrow's buffers): replayed batches are the
re-decoded ones, so the encoded files are bit-identical with or without a cache. (Narrowing
float32-exact columns to float32 was tried: twice the rows fit, but on a VM where a fresh page
costs ~2.7 ns per 4 bytes the conversion cost more CPU than the decoding it saved.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np

DEFAULT_CACHE_BYTES = 384 * 2**20


class BatchCache:
    """The last record batches offered (each with the table position of its first row and any
    per-batch result worth keeping, e.g. a quarantine verdict) that fit in ``budget`` bytes.

    They always form a suffix of the table: :attr:`start` is the position of the first cached row,
    so a second pass decodes rows ``[0, start)`` and then calls :meth:`replay`."""

    def __init__(self, budget: int | None, total_rows: int, row_bytes: int):
        self.budget = budget  # None: no limit (a table of one batch)
        self.total_rows = total_rows
        self.bytes = 0
        self._batches: deque[tuple[int, int, dict[str, np.ndarray], Any, int]] = deque()
        # batches ending before this can never be part of the cached suffix (rows of at least
        # row_bytes each after them fill the budget): not kept even for a while
        self._first_useful = 0 if budget is None else total_rows - budget // max(row_bytes, 1)

    @property
    def start(self) -> int:
        """Table position of the first cached row (the table's length when nothing is cached)."""
        return self._batches[0][0] if self._batches else self.total_rows

    def offer(self, position: int, rows: int, batch: dict[str, np.ndarray], extra: Any = None, extra_bytes: int = 0) -> None:
        """Keep ``batch`` (``rows`` table rows from ``position``), dropping the oldest batches beyond
        the budget; a batch that cannot be kept empties the cache (what is kept stays a suffix)."""
        if position + rows <= self._first_useful:
            return
        if any(v.dtype == object for v in batch.values()):  # strings: their size is not their nbytes
            self.clear()
            return
        size = sum(v.nbytes for v in batch.values()) + extra_bytes
        if self.budget is not None and size > self.budget:
            self.clear()
            return
        self._batches.append((position, rows, batch, extra, size))
        self.bytes += size
        while self.budget is not None and self.bytes > self.budget:
            self.bytes -= self._batches.popleft()[-1]

    def clear(self) -> None:
        self._batches.clear()
        self.bytes = 0

    def replay(self) -> Iterator[tuple[int, dict[str, np.ndarray], Any]]:
        """The cached (table rows, batch, extra) in table order; each is released as it is handed out."""
        while self._batches:
            _, rows, batch, extra, size = self._batches.popleft()
            self.bytes -= size
            yield rows, batch, extra
