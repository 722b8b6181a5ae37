"""A small thread-safe LRU cache for what simulated nodes read and encode.

In-process simulation serves many nodes from one process and several at once; a node's rows
are a selection of the task table, so holding them for every node of a thousand-node
federation would copy the table. The cache keeps the most recently used entries up to a byte
budget: nodes that train each round stay encoded, the rest are re-read when next addressed.
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
