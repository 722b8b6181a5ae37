"""A small thread-safe LRU cache for what simulated nodes read and encode.

In-process simulation serves many nodes from one process and several at once. Most nodes need
no cache (their rows are gathered from the task table encoded once, ``data.task_table``); a
pipeline that encodes node by node (imputation along a node's own rows, a per-node isolation
forest) keeps each node's encoded rows here, the most recently used up to a byte budget, so a
thousand-node federation does not hold a second copy of the table.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

Value = TypeVar("Value")


class NodeCache(Generic[Value]):
    """LRU of ``key -> value`` holding at most ``max_bytes`` (as ``size_of`` counts them)."""

    def __init__(self, max_bytes: int, size_of: Callable[[Value], int]):
        self.max_bytes = max_bytes
        self.size_of = size_of
        self._entries: OrderedDict[str, tuple[Value, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str, compute: Callable[[], Value]) -> Value:
        """The cached value of ``key``, computing (outside the lock) and storing it on a miss."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key][0]
        value = compute()
        size = self.size_of(value)
        with self._lock:
            if key not in self._entries:
                self._entries[key] = (value, size)
                self._bytes += size
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)
