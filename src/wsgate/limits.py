"""``limit_conn`` and ``limit_req``: per-key zone state and nginx's accounting, with no I/O.

https://nginx.org/en/docs/http/ngx_http_limit_conn_module.html and
https://nginx.org/en/docs/http/ngx_http_limit_req_module.html; the arithmetic follows
``ngx_http_limit_req_module.c`` (``ngx_http_limit_req_lookup``/``_account``): the excess is
kept in milli-requests, ``excess = lr->excess - ctx->rate * ms / 1000 + 1000``, rejected when
``excess > burst``, delayed by ``(excess - delay) * 1000 / rate`` milliseconds.  Time is a
millisecond count passed in by the caller (nginx's ``ngx_current_msec``), so tests need no clock.

:class:`ConnZone` and :class:`ReqZone` keep a zone's state in a dict of one process and
expose only small calls (``acquire``/``release``, ``lookup``/``account``);
:mod:`wsgate.shm` subclasses them with zones in shared memory, sized by ``zone=NAME:10m``
and shared by every worker.  The arithmetic lives here once, in pure functions
(:func:`drained`, :func:`lookup_state`, :func:`account_state`, :func:`expired`) that both use,
and :func:`slowest` (the delay) that :func:`check_requests` and the Redis zones' twin use.
The dict zones never fill up; ``limit_req`` keys idle for 60 s whose excess has drained are
forgotten as nginx does (:meth:`ReqZone.prune`), ``limit_conn`` keys when their count reaches
zero.  A full shared zone is reported as nginx does: :meth:`ConnZone.acquire` returns
:attr:`Refused.NO_MEMORY`, and :func:`check_requests` a :class:`ReqDecision` with
``no_memory`` set.

A zone declared with wsgate's ``redis=`` is kept in Redis instead, shared by every wsgate
node (:mod:`wsgate.limits_redis`, created in a worker on first use as
:attr:`LimitRegistry.remote`); it refuses with :attr:`Refused.UNAVAILABLE` or a
:class:`ReqDecision` with ``unavailable`` set when Redis cannot be reached and the zone
fails closed.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from wsgate.errors import WsgateError

if TYPE_CHECKING:
    from wsgate.limits_redis import RedisZones

__all__ = [
    "NEVER",
    "ConnZone",
    "LimitRegistry",
    "Refused",
    "ReqDecision",
    "ReqZone",
    "SlotHolder",
    "ZoneFull",
    "account_state",
    "check_requests",
    "drained",
    "expired",
    "lookup_state",
    "slowest",
]


#: ``lr->last = 0``: a time long enough ago that any excess has drained.
NEVER = -(2**62)


class Refused(enum.Enum):
    """Why :meth:`ConnZone.acquire` refused a slot.  Members are false, so
    ``if zone.acquire(key, limit):`` reads as a yes/no question."""

    #: "node->conn >= limit->conn": the handler logs "limiting connections by zone".
    LIMIT = "limit"
    #: The zone has no room for a new key (nginx: ``ngx_slab_alloc`` failed, logged by the
    #: slab allocator at crit as ``ngx_slab_alloc() failed: no memory in limit_conn_zone
    #: "NAME"``); nginx answers ``limit_conn_status`` without the "limiting" line.
    NO_MEMORY = "no memory"
    #: A zone kept in Redis (wsgate's ``redis=``) could not reach it and fails closed; the
    #: zone logs that itself (once per interval), the request gets ``limit_conn_status``.
    UNAVAILABLE = "unavailable"

    def __bool__(self) -> bool:
        return False


class ZoneFull(WsgateError):
    """A shared ``limit_req`` zone had no room for a new key even after evicting its oldest
    state (nginx: ``could not allocate node in limit_req zone "NAME"``).  Raised by a shared
    zone's ``lookup``; :func:`check_requests` turns it into ``ReqDecision(no_memory=True)``."""

    def __init__(self, zone: str) -> None:
        self.zone = zone
        super().__init__(f'could not allocate node in limit_req zone "{zone}"')


def drained(excess: int, last: int, rate: int, now: int) -> tuple[int, int]:
    """The excess one more request leaves, and the milliseconds since ``last``:
    ``excess = lr->excess - ctx->rate * ms / 1000 + 1000`` (at least 0), with a clock that went
    back by up to a minute counted as 0 ms and further back as 1 ms, as nginx does."""
    ms = now - last
    if ms < -60000:
        ms = 1
    elif ms < 0:
        ms = 0
    return max(excess - rate * ms // 1000 + 1000, 0), ms


def lookup_state(
    excess: int, last: int, rate: int, burst: int, now: int, account: bool
) -> tuple[bool, int, int, int]:
    """``ngx_http_limit_req_lookup`` for a key that has a state ``(excess, last)``:
    ``(busy, new excess, excess to store, last to store)``.  ``busy`` stores nothing; ``account``
    stores the new excess and, if time moved, ``now``."""
    new, ms = drained(excess, last, rate, now)
    if new > burst:
        return True, new, excess, last
    if account:
        return False, new, new, now if ms else last
    return False, new, excess, last


def account_state(excess: int, last: int, rate: int, now: int) -> tuple[int, int]:
    """``ngx_http_limit_req_account`` for one state: the excess and last to store."""
    new, ms = drained(excess, last, rate, now)
    return new, now if ms else last


def expired(excess: int, last: int, rate: int, now: int) -> bool:
    """``ngx_http_limit_req_expire``'s test: idle for a minute and drained ("if (ms < 60000)
    return; excess = lr->excess - ctx->rate * ms / 1000; if (excess > 0) return;")."""
    ms = abs(now - last)
    return ms >= 60000 and excess - rate * ms // 1000 <= 0


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

    def acquire(self, key: str, limit: int) -> Literal[True] | Refused:
        """Take a slot for ``key`` unless ``limit`` are held (``node->conn >= limit->conn``):
        ``True``, or a false :class:`Refused` saying why."""
        held = self.counts.get(key, 0)
        if held >= limit:
            return Refused.LIMIT
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


class SlotHolder(Protocol):
    """What a request keeps for each ``limit_conn`` slot it holds, next to the key
    (``Request.conn_slots``, then a tunnel's ``TunnelEnd.conn_slots``): a :class:`ConnZone`
    (the key says which slot), or a zone kept in Redis's
    :class:`~wsgate.redis_shed.RedisSlot` (the slot itself, which knows the tunnel holding
    it).  ``release(key)`` is called once, when the request or its tunnel ends."""

    def release(self, key: str) -> None: ...


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
            self.nodes[key] = [0, now if account else NEVER]
            return False, 0
        busy, excess, node[0], node[1] = lookup_state(
            node[0], node[1], self.rate, burst, now, account
        )
        return busy, excess

    def account(self, key: str, now: int) -> int:
        """``ngx_http_limit_req_account`` for one limit: store and return the new excess."""
        node = self.nodes.get(key)
        if node is None:  # pragma: no cover - lookup always creates it
            self.nodes[key] = [0, now]
            return 0
        node[0], node[1] = account_state(node[0], node[1], self.rate, now)
        return node[0]

    def prune(self, now: int) -> None:
        """``ngx_http_limit_req_expire``: forget keys idle for 60 s whose excess has drained
        (``excess = lr->excess - ctx->rate * ms / 1000; if (excess > 0) return;``)."""
        self.pruned = now
        rate = self.rate
        gone = [k for k, (excess, last) in self.nodes.items() if expired(excess, last, rate, now)]
        for k in gone:
            del self.nodes[k]


@dataclass(frozen=True, slots=True)
class ReqDecision:
    """What :func:`check_requests` decided for one request.

    ``rejected`` names the zone whose burst was exceeded (then ``excess`` is its excess);
    otherwise ``delay_ms`` is the wait (0: none) and ``zone``/``excess`` the limit that set it.
    ``no_memory``: ``rejected`` names a shared zone that had no room for the key; nginx then
    logs ``could not allocate node in limit_req zone "NAME"`` at alert instead of "limiting
    requests", and answers ``limit_req_status`` (or lets the request pass in a dry run).
    ``unavailable``: ``rejected`` names a zone kept in Redis that could not be reached and
    fails closed (the zone logs that itself, once per interval).
    """

    rejected: str | None = None
    excess: int = 0
    delay_ms: int = 0
    zone: str = ""
    no_memory: bool = False
    unavailable: bool = False


def check_requests(limits: list[tuple[ReqZone, str, int, int]], now: int) -> ReqDecision:
    """``ngx_http_limit_req_handler`` for one request over its ``limit_req`` list.

    ``limits`` holds ``(zone, key, burst, delay)`` in configuration order, with ``burst`` and
    ``delay`` in milli-requests (``nodelay`` is a delay larger than any burst) and keys
    already non-empty.  The first limit over its burst rejects the request and nothing is
    accounted.  Otherwise every zone is accounted and the longest delay wins:
    ``max_delay = (excess - delay) * 1000 / rate``.  nginx accounts in a dry run too, so the
    caller applies ``limit_req_dry_run`` only to the outcome.  A shared zone that has no room
    for a key (:class:`ZoneFull`) rejects the request like a burst, with ``no_memory`` set
    (nginx's ``NGX_ERROR`` from the lookup).
    """
    if not limits:
        return ReqDecision()
    last = len(limits) - 1
    excess = 0
    try:
        for i, (zone, key, burst, _) in enumerate(limits):
            busy, excess = zone.lookup(key, burst, now, i == last)
            if busy:
                return ReqDecision(rejected=zone.name, excess=excess)
    except ZoneFull as full:  # only a lookup may raise it
        return ReqDecision(rejected=full.zone, no_memory=True)
    accounted = [zone.account(key, now) for zone, key, _, _ in limits[:last]]
    return slowest(limits, [*accounted, excess])


class _RateZone(Protocol):
    """What :func:`slowest` reads of a ``limit_req`` zone (a local or a Redis one)."""

    @property
    def name(self) -> str: ...

    @property
    def rate(self) -> int: ...


def slowest(limits: Sequence[tuple[_RateZone, str, int, int]], excesses: list[int]) -> ReqDecision:
    """The decision for a request that every one of ``limits`` (``(zone, key, burst,
    delay)``) let through, from the excess each left (``excesses``, in the same order: the
    last limit's from its lookup, the others' from their accounts).  The longest delay wins,
    ``max_delay = (excess - delay) * 1000 / rate`` milliseconds, counted for the last limit
    first, then for the others in order (as ``ngx_http_limit_req_account`` does); with none,
    the decision names the last limit and its excess.  :func:`check_requests` and
    :func:`wsgate.limits_redis.check_requests_shared` both end with it."""
    last = len(limits) - 1
    best = ReqDecision(excess=excesses[last], zone=limits[last][0].name)
    for i in (last, *range(last)):
        zone, _, _, delay = limits[i]
        excess = excesses[i]
        if excess <= delay:
            continue
        ms = (excess - delay) * 1000 // zone.rate
        if ms > best.delay_ms:
            best = ReqDecision(excess=excess, delay_ms=ms, zone=zone.name)
    return best


class LimitRegistry:
    """The zones of one wsgate process, by name; kept across reloads as nginx keeps a shared
    zone whose name and size did not change."""

    __slots__ = ("conn", "req", "remote")

    def __init__(self) -> None:
        self.conn: dict[str, ConnZone] = {}
        self.req: dict[str, ReqZone] = {}
        #: The zones kept in Redis (``redis=``), made in a worker by the first request that
        #: uses one (:func:`wsgate.limits_redis.zones_of`); None: none used yet.
        self.remote: RedisZones | None = None

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
