"""Idle upstream connections kept for reuse: the ``keepalive`` directive of an ``upstream`` block.

Pure data structure (no sockets, no event loop): the connections are opaque values, time comes
from an injected clock, and closing is an injected callback.  The asyncio side
(:mod:`wsgate.proxy.endpoint`) arms one timer at :meth:`KeepalivePool.next_deadline` and calls
:meth:`KeepalivePool.expire`; it also calls :meth:`KeepalivePool.discard` when the upstream
closes an idle connection.

Follows https://nginx.org/en/docs/http/ngx_http_upstream_module.html#keepalive and
``src/http/modules/ngx_http_upstream_keepalive_module.c``:

* "The connections parameter sets the maximum number of idle keepalive connections to upstream
  servers that are preserved in the cache of each worker process.  When this number is exceeded,
  the least recently used connections are closed."  The cap is per upstream block (one pool per
  peer group), not per server; a lookup takes the most recently cached connection *to that
  server* (nginx walks its cache queue from the head, where it inserts).
* ``keepalive_requests``: "After the maximum number of requests is made, the connection is
  closed" (checked when the connection is given back, as nginx's ``c->requests >= requests``).
* ``keepalive_time``: "After this time is reached, the connection is closed following the
  subsequent request processing" (checked when given back, from the connection's creation).
* ``keepalive_timeout``: "Sets a timeout during which an idle keepalive connection to an
  upstream server will stay open."
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Kept", "KeepalivePool"]

C = TypeVar("C")

Clock = Callable[[], float]


@dataclass(slots=True, eq=False)
class Kept(Generic[C]):
    """One upstream connection the pool may hold, with what its limits need.

    ``requests`` counts requests sent on it (the caller increments it per request);
    ``reused`` is true when the connection came out of the pool (it served a request before).
    """

    conn: C
    key: Hashable
    created: float
    requests: int = 0
    idle_since: float = 0.0

    @property
    def reused(self) -> bool:
        return self.requests > 0


class KeepalivePool(Generic[C]):
    """Idle connections of one upstream group, least recently used first.

    ``size`` is ``keepalive N``; ``requests``, ``timeout`` and ``lifetime`` are
    ``keepalive_requests`` (1000), ``keepalive_timeout`` (60 s) and ``keepalive_time`` (1 h).
    ``close(conn)`` is called for every connection the pool drops on its own (over the cap,
    idle too long, or :meth:`close_all`); a connection :meth:`put` refuses or
    :meth:`discard` removes is the caller's to close.
    """

    __slots__ = ("size", "requests", "timeout", "lifetime", "clock", "_close", "_lru", "_by_key")

    def __init__(
        self,
        size: int,
        *,
        requests: int = 1000,
        timeout: float = 60.0,
        lifetime: float = 3600.0,
        clock: Clock,
        close: Callable[[C], None],
    ) -> None:
        self.size = size
        self.requests = requests
        self.timeout = timeout
        self.lifetime = lifetime
        self.clock = clock
        self._close = close
        self._lru: OrderedDict[Kept[C], None] = OrderedDict()
        self._by_key: dict[Hashable, list[Kept[C]]] = {}

    def __len__(self) -> int:
        return len(self._lru)

    def idle(self, key: Hashable) -> int:
        """How many idle connections to ``key`` are cached."""
        return len(self._by_key.get(key, ()))

    def new(self, key: Hashable, conn: C) -> Kept[C]:
        """Wrap a freshly opened connection to ``key`` (not cached until :meth:`put`)."""
        return Kept(conn, key, self.clock())

    def take(self, key: Hashable) -> Kept[C] | None:
        """The most recently cached idle connection to ``key``, removed from the pool, or None.

        Entries past ``keepalive_timeout`` (a timer may fire late) are closed, not returned.
        """
        stack = self._by_key.get(key)
        now = self.clock()
        while stack:
            kept = stack.pop()
            del self._lru[kept]
            if now - kept.idle_since >= self.timeout:
                self._close(kept.conn)
                continue
            if not stack:
                del self._by_key[key]
            return kept
        self._by_key.pop(key, None)
        return None

    def put(self, kept: Kept[C]) -> bool:
        """Cache ``kept`` after a complete exchange; False means "close it" (a limit is reached).

        Going over ``size`` closes the least recently used idle connection of the group.
        """
        if self.size <= 0 or kept.requests >= self.requests:
            return False
        now = self.clock()
        if now - kept.created > self.lifetime:
            return False
        kept.idle_since = now
        self._lru[kept] = None
        self._by_key.setdefault(kept.key, []).append(kept)
        while len(self._lru) > self.size:
            oldest = next(iter(self._lru))
            self._remove(oldest)
            self._close(oldest.conn)
        return True

    def discard(self, kept: Kept[C]) -> bool:
        """Forget ``kept`` (the upstream closed it, or sent bytes nobody asked for)."""
        if kept not in self._lru:
            return False
        self._remove(kept)
        return True

    def expire(self) -> None:
        """Close every connection idle for ``keepalive_timeout`` or longer."""
        now = self.clock()
        while self._lru:
            oldest = next(iter(self._lru))
            if now - oldest.idle_since < self.timeout:
                return
            self._remove(oldest)
            self._close(oldest.conn)

    def next_deadline(self) -> float | None:
        """When the least recently used idle connection times out, or None when empty."""
        if not self._lru:
            return None
        return next(iter(self._lru)).idle_since + self.timeout

    def drop_oldest(self, count: int) -> int:
        """Close up to ``count`` idle connections, least recently used first (room for a new
        connection under ``worker_connections``); returns how many were closed."""
        closed = 0
        while self._lru and closed < count:
            oldest = next(iter(self._lru))
            self._remove(oldest)
            self._close(oldest.conn)
            closed += 1
        return closed

    def close_all(self) -> None:
        """Close every idle connection (reload, stop)."""
        while self._lru:
            oldest = next(iter(self._lru))
            self._remove(oldest)
            self._close(oldest.conn)

    def _remove(self, kept: Kept[C]) -> None:
        del self._lru[kept]
        stack = self._by_key[kept.key]
        stack.remove(kept)
        if not stack:
            del self._by_key[kept.key]
