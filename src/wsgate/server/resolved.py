"""The addresses ``server NAME resolve`` names resolved to, shared by every worker.

Why shared: nginx keeps a zone's peers in shared memory, so a DNS change reaches every worker
at once and a reload starts from the addresses already known ("preresolve": with the name
server failing after a reload, requests still go to the old addresses).  wsgate's workers
each keep their own peer state (:mod:`wsgate.upstream.roundrobin`), but the *list of
addresses* is one, here: a worker that resolves a name writes the answer, and every worker
builds its group from what is written, rebuilding it when the sequence number moves (one
read of shared memory per request to such an upstream).

Layout: one ``memfd`` mapping (:class:`wsgate.shm.Arena`, made by the master before it
forks, so workers of every generation map the same memory): ``int64 seq``, ``int64 length``,
then ``length`` bytes of JSON ``{"UPSTREAM|HOST": ["ADDR", ...]}``.  Writers and readers take
a ``fcntl`` record lock (:class:`wsgate.shm.ShmLock`; a reader only when ``seq`` moved).  An
in-place upgrade's new master starts with an empty store (its workers resolve again).
"""

from __future__ import annotations

import json

from wsgate.shm import Arena, LockFile, ShmLock

__all__ = ["SIZE", "SharedResolved"]

#: Bytes for the JSON (some thousands of addresses); an update that does not fit is dropped.
SIZE = 256 * 1024


class SharedResolved:
    """A shared map from ``(upstream, host)`` to addresses, with a sequence number."""

    __slots__ = ("arena", "_head", "_start", "_lock", "_locks", "_seen", "_data")

    def __init__(self, size: int = SIZE) -> None:
        self.arena = Arena(size + 16)
        self._head = self.arena.take("q", 2)
        self._start = self.arena.offset()
        self._locks = LockFile()
        self._lock: ShmLock = self._locks.new_lock()
        self._seen = -1
        self._data: dict[str, list[str]] = {}

    def seq(self) -> int:
        """Moves on every change (0: nothing written yet)."""
        return int(self._head[0])

    def read(self) -> dict[str, list[str]]:
        """The whole map (cached until :meth:`seq` moves)."""
        if self._head[0] != self._seen:
            self._lock.acquire()
            try:
                self._seen, self._data = self._head[0], self._load()
            finally:
                self._lock.release()
        return self._data

    def get(self, upstream: str, host: str) -> list[str] | None:
        return self.read().get(f"{upstream}|{host.lower()}")

    def put(self, upstream: str, host: str, addresses: list[str]) -> bool:
        """Write ``host``'s addresses; False when the store is full (nothing changes)."""
        key = f"{upstream}|{host.lower()}"
        self._lock.acquire()
        try:
            data = self._load()
            if data.get(key) == addresses:
                return True
            data[key] = addresses
            raw = json.dumps(data, separators=(",", ":")).encode()
            if len(raw) > self.arena.size - self._start:
                return False
            self.arena.mm[self._start : self._start + len(raw)] = raw
            self._head[1] = len(raw)
            self._head[0] += 1
            return True
        finally:
            self._lock.release()

    def _load(self) -> dict[str, list[str]]:
        n = int(self._head[1])
        if n == 0:
            return {}
        loaded: dict[str, list[str]] = json.loads(self.arena.mm[self._start : self._start + n])
        return loaded

    def in_worker(self) -> None:
        """A forked worker lets the master's descriptor go (the mapping stays): the shared
        memory's ``close_descriptors`` closes every ``memfd`` of the process."""
        self.arena.fd = -1
