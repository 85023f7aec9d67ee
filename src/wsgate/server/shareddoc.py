"""A small JSON document in shared memory, with a sequence number: what every worker of
every generation reads and any of them (or the master) writes.

Layout: one ``memfd`` mapping (:class:`wsgate.shm.Arena`, made by the master before it
forks, so workers of every generation map the same memory): ``int64 seq``, ``int64 length``,
then ``length`` bytes of JSON.  Writers and readers take a ``fcntl`` record lock
(:class:`wsgate.shm.ShmLock`; a reader only when ``seq`` moved, so an unchanged document
costs one read of shared memory).  Used for ``server ... resolve`` addresses
(:mod:`wsgate.server.resolved`) and upstream drains (:mod:`wsgate.server.control`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from wsgate.shm import Arena, LockFile, ShmLock

__all__ = ["SharedDoc"]


class SharedDoc:
    """A shared JSON object with a sequence number that moves on every change."""

    __slots__ = ("arena", "_head", "_start", "_lock", "_locks", "_seen", "_data")

    def __init__(self, size: int) -> None:
        self.arena = Arena(size + 16)
        self._head = self.arena.take("q", 2)
        self._start = self.arena.offset()
        self._locks = LockFile()
        self._lock: ShmLock = self._locks.new_lock()
        self._seen = -1
        self._data: dict[str, Any] = {}

    def seq(self) -> int:
        """Moves on every change (0: nothing written yet)."""
        return int(self._head[0])

    def read(self) -> dict[str, Any]:
        """The whole document (cached until :meth:`seq` moves; do not change it)."""
        if self._head[0] != self._seen:
            self._lock.acquire()
            try:
                self._seen, self._data = self._head[0], self._load()
            finally:
                self._lock.release()
        return self._data

    def update(self, change: Callable[[dict[str, Any]], bool]) -> bool:
        """Apply ``change`` to a fresh copy of the document under the lock and write it if
        ``change`` returns True; False when it did not fit (nothing changes)."""
        self._lock.acquire()
        try:
            data = self._load()
            if not change(data):
                return True
            raw = json.dumps(data, separators=(",", ":")).encode()
            if len(raw) > self.arena.size - self._start:
                return False
            self.arena.mm[self._start : self._start + len(raw)] = raw
            self._head[1] = len(raw)
            self._head[0] += 1
            return True
        finally:
            self._lock.release()

    def _load(self) -> dict[str, Any]:
        n = int(self._head[1])
        if n == 0:
            return {}
        loaded: dict[str, Any] = json.loads(self.arena.mm[self._start : self._start + n])
        return loaded

    def in_worker(self) -> None:
        """A forked worker lets the master's descriptor go (the mapping stays): the shared
        memory's ``close_descriptors`` closes every ``memfd`` of the process."""
        self.arena.fd = -1
