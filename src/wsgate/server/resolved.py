"""The addresses ``server NAME resolve`` names resolved to, shared by every worker.

Why shared: nginx keeps a zone's peers in shared memory, so a DNS change reaches every worker
at once and a reload starts from the addresses already known ("preresolve": with the name
server failing after a reload, requests still go to the old addresses).  wsgate's workers
each keep their own peer state (:mod:`wsgate.upstream.roundrobin`), but the *list of
addresses* is one, here: a worker that resolves a name writes the answer, and every worker
builds its group from what is written, rebuilding it when the sequence number moves (one
read of shared memory per request to such an upstream).

The store is a :class:`wsgate.server.shareddoc.SharedDoc`: ``{"UPSTREAM|HOST": ["ADDR",
...]}``.  An in-place upgrade's new master starts with an empty store (its workers resolve
again).
"""

from __future__ import annotations

from typing import Any

from wsgate.server.shareddoc import SharedDoc

__all__ = ["SIZE", "SharedResolved"]

#: Bytes for the JSON (some thousands of addresses); an update that does not fit is dropped.
SIZE = 256 * 1024


class SharedResolved:
    """A shared map from ``(upstream, host)`` to addresses, with a sequence number."""

    __slots__ = ("doc",)

    def __init__(self, size: int = SIZE) -> None:
        self.doc = SharedDoc(size)

    def seq(self) -> int:
        """Moves on every change (0: nothing written yet)."""
        return self.doc.seq()

    def read(self) -> dict[str, list[str]]:
        """The whole map (cached until :meth:`seq` moves)."""
        return self.doc.read()

    def get(self, upstream: str, host: str) -> list[str] | None:
        return self.read().get(f"{upstream}|{host.lower()}")

    def put(self, upstream: str, host: str, addresses: list[str]) -> bool:
        """Write ``host``'s addresses; False when the store is full (nothing changes)."""
        key = f"{upstream}|{host.lower()}"

        def change(data: dict[str, Any]) -> bool:
            if data.get(key) == addresses:
                return False
            data[key] = addresses
            return True

        return self.doc.update(change)

    def in_worker(self) -> None:
        """A forked worker lets the master's descriptor go (the mapping stays)."""
        self.doc.in_worker()
