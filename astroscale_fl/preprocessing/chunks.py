"""Cache-sized row chunks and the threads that work on them.

The hot loops of preprocessing (statistics, range checks, the fused impute/scale/clip) walk a
column in chunks of :data:`CHUNK_ROWS` rows, so every temporary stays in the CPU cache instead of
allocating (and page-faulting) a column-sized array per operation. Independent columns run on
:func:`parallel_map`'s threads: numpy releases the GIL inside its loops.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

CHUNK_ROWS = 65_536  # 512 kB per float64 chunk: a few of them fit in L2
MAX_THREADS = 4
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid that made it, pool): a forked child makes its own


def threads() -> int:
    """Worker threads for column-parallel work: the CPUs this process may use, at most MAX_THREADS."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_THREADS, available))


def parallel_map(fn: Callable, items: Iterable, rows: int) -> list:
    """``[fn(item) for item in items]``, on threads when there are ``rows`` enough to pay for them."""
    items = list(items)
    if rows < 4 * CHUNK_ROWS or len(items) < 2 or threads() < 2:
        return [fn(item) for item in items]
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(threads(), thread_name_prefix="astroscale-preprocess"))
    return list(_pool[1].map(fn, items))
