"""``limit_conn`` and ``limit_req``: per-key zone state and nginx's accounting, with no I/O.

https://nginx.org/en/docs/http/ngx_http_limit_conn_module.html and
https://nginx.org/en/docs/http/ngx_http_limit_req_module.html; the arithmetic follows
``ngx_http_limit_req_module.c`` (``ngx_http_limit_req_lookup``/``_account``): the excess is
kept in milli-requests, ``excess = lr->excess - ctx->rate * ms / 1000 + 1000``, rejected when
``excess > burst``, delayed by ``(excess - delay) * 1000 / rate`` milliseconds.  Time is a
millisecond count passed in by the caller (nginx's ``ngx_current_msec``), so tests need no clock.

wsgate runs one process, so a zone is a dict in memory.  :class:`ConnZone` and
:class:`ReqZone` keep the state and expose only small calls (``acquire``/``release``,
``lookup``/``account``) that a shared-memory version could implement for several workers.
The zone size (``zone=NAME:10m``) is parsed and checked but nothing is evicted by size (nginx
evicts the oldest states when a zone is full); ``limit_req`` keys idle for 60 s whose excess
has drained are forgotten as nginx does (:meth:`ReqZone.prune`), ``limit_conn`` keys when
their count reaches zero.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConnZone",
    "LimitRegistry",
    "ReqDecision",
    "ReqZone",
    "check_requests",
]


#: ``lr->last = 0``: a time long enough ago that any excess has drained.
_NEVER = -(2**62)


class ConnZone:
    """``limit_conn_zone``: how many requests hold a slot, per key.

    "Not all connections are counted. A connection is counted only if it has a request being
    processed by the server and the whole request header has already been read."  A slot is
    released when the request ends; for a WebSocket tunnel, when the tunnel closes.
    """

    __slots__ = ("name", "counts")

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: dict[str, int] = {}

    def acquire(self, key: str, limit: int) -> bool:
        """Take a slot for ``key`` unless ``limit`` are held (``node->conn >= limit->conn``)."""
        held = self.counts.get(key, 0)
        if held >= limit:
            return False
        self.counts[key] = held + 1
        return True

    def release(self, key: str) -> None:
        """Give back a slot taken by :meth:`acquire` (nginx's ``ngx_http_limit_conn_cleanup``)."""
        held = self.counts.get(key, 0) - 1
        if held <= 0:
            self.counts.pop(key, None)
        else:
            self.counts[key] = held

    def held(self, key: str) -> int:
        return self.counts.get(key, 0)


class ReqZone:
    """``limit_req_zone``: per key, the excess (milli-requests) and the time it was last set.

    ``rate`` is in milli-requests per second as nginx stores it: ``rate=Nr/s`` is ``N * 1000``
    and ``rate=Nr/m`` is ``N * 1000 // 60`` (integer division, as nginx).
    """

    __slots__ = ("name", "rate", "nodes", "pruned")

    def __init__(self, name: str, rate: int) -> None:
        self.name = name
        self.rate = rate
        self.pruned = 0
        #: key → [excess, last] in milli-requests and milliseconds.
        self.nodes: dict[str, list[int]] = {}

    def _excess(self, node: list[int], now: int) -> tuple[int, int]:
        ms = now - node[1]
        if ms < -60000:
            ms = 1
        elif ms < 0:
            ms = 0
        return max(node[0] - self.rate * ms // 1000 + 1000, 0), ms

    def lookup(self, key: str, burst: int, now: int, account: bool) -> tuple[bool, int]:
        """``ngx_http_limit_req_lookup``: ``(busy, excess)``.

        ``busy`` is ``excess > burst`` (both in milli-requests).  With ``account`` the new
        excess is stored at once (nginx does so for the last limit); otherwise
        :meth:`account` stores it once every limit has agreed.  A first request for a key
        has excess 0.
        """
        if abs(now - self.pruned) >= 60000:
            self.prune(now)
        node = self.nodes.get(key)
        if node is None:
            # nginx: "lr->excess = 0;" and "lr->last = now" when accounted at once, else
            # "lr->last = 0" so that the later account also finds no excess.
            self.nodes[key] = [0, now if account else _NEVER]
            return False, 0
        excess, ms = self._excess(node, now)
        if excess > burst:
            return True, excess
        if account:
            node[0] = excess
            if ms:
                node[1] = now
        return False, excess

    def account(self, key: str, now: int) -> int:
        """``ngx_http_limit_req_account`` for one limit: store and return the new excess."""
        node = self.nodes.get(key)
        if node is None:  # pragma: no cover - lookup always creates it
            self.nodes[key] = [0, now]
            return 0
        excess, ms = self._excess(node, now)
        if ms:
            node[1] = now
        node[0] = excess
        return excess

    def prune(self, now: int) -> None:
        """``ngx_http_limit_req_expire``: forget keys idle for 60 s whose excess has drained
        (``excess = lr->excess - ctx->rate * ms / 1000; if (excess > 0) return;``)."""
        self.pruned = now
        rate = self.rate
        drained = [
            k
            for k, (excess, last) in self.nodes.items()
            if abs(now - last) >= 60000 and excess - rate * abs(now - last) // 1000 <= 0
        ]
        for k in drained:
            del self.nodes[k]


@dataclass(frozen=True, slots=True)
class ReqDecision:
    """What :func:`check_requests` decided for one request.

    ``rejected`` names the zone whose burst was exceeded (then ``excess`` is its excess);
    otherwise ``delay_ms`` is the wait (0: none) and ``zone``/``excess`` the limit that set it.
    """

    rejected: str | None = None
    excess: int = 0
    delay_ms: int = 0
    zone: str = ""


def check_requests(limits: list[tuple[ReqZone, str, int, int]], now: int) -> ReqDecision:
    """``ngx_http_limit_req_handler`` for one request over its ``limit_req`` list.

    ``limits`` holds ``(zone, key, burst, delay)`` in configuration order, with ``burst`` and
    ``delay`` in milli-requests (``nodelay`` is a delay larger than any burst) and keys
    already non-empty.  The first limit over its burst rejects the request and nothing is
    accounted.  Otherwise every zone is accounted and the longest delay wins:
    ``max_delay = (excess - delay) * 1000 / rate``.  nginx accounts in a dry run too, so the
    caller applies ``limit_req_dry_run`` only to the outcome.
    """
    if not limits:
        return ReqDecision()
    last = len(limits) - 1
    excess = 0
    for i, (zone, key, burst, _) in enumerate(limits):
        busy, excess = zone.lookup(key, burst, now, i == last)
        if busy:
            return ReqDecision(rejected=zone.name, excess=excess)
    zone, _, _, delay = limits[last]
    best = ReqDecision(excess=excess, zone=zone.name)
    if excess > delay:
        ms = (excess - delay) * 1000 // zone.rate
        best = ReqDecision(excess=excess, delay_ms=ms, zone=zone.name)
    for zone, key, _, delay in limits[:last]:
        exc = zone.account(key, now)
        if exc <= delay:
            continue
        ms = (exc - delay) * 1000 // zone.rate
        if ms > best.delay_ms:
            best = ReqDecision(excess=exc, delay_ms=ms, zone=zone.name)
    return best


class LimitRegistry:
    """The zones of one wsgate process, by name; kept across reloads as nginx keeps a shared
    zone whose name and size did not change."""

    __slots__ = ("conn", "req")

    def __init__(self) -> None:
        self.conn: dict[str, ConnZone] = {}
        self.req: dict[str, ReqZone] = {}

    def conn_zone(self, name: str) -> ConnZone:
        zone = self.conn.get(name)
        if zone is None:
            zone = self.conn[name] = ConnZone(name)
        return zone

    def req_zone(self, name: str, rate: int) -> ReqZone:
        zone = self.req.get(name)
        if zone is None:
            zone = self.req[name] = ReqZone(name, rate)
        zone.rate = rate
        return zone
