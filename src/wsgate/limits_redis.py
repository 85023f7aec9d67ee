"""``limit_conn``/``limit_req`` zones kept in Redis, shared by a fleet of wsgate nodes.

wsgate's own extension (nginx open source has no equivalent; nginx Plus shares a zone between
its nodes with the zone's ``sync`` parameter and the ``zone_sync`` module, eventually
consistent)::

    limit_conn_zone $arg_user zone=users:1m redis=10.0.0.5:6379 redis_fail=closed;
    limit_req_zone  $arg_user zone=calls:1m rate=10r/s redis=unix:/run/redis.sock;

Everything else about such a zone (keys, ``limit_conn N``, ``burst``/``nodelay``/``delay=``,
``limit_*_status``, ``limit_*_log_level``, ``limit_*_dry_run``, the "limiting ..." lines)
is as for a local zone: :mod:`wsgate.http.phases` asks this module instead of the shared
memory of :mod:`wsgate.shm`, through an :class:`~wsgate.http.suspend.Await` decision (the
request waits on the event loop, the same handler then reads the answer).  The ``redis``
package (``redis.asyncio``, redis-py) is imported when a worker first uses such a zone, so a
configuration without ``redis=`` neither imports nor pays for any of this.

Data in Redis (a single Redis 5 or later, not Redis Cluster: the scripts read other owners'
keys)

``wsgate:conn:NAME:KEY``
    a hash per ``limit_conn`` key: one field per *owner* (a worker process,
    ``hostname:pid:start-ms``) holding the slots that worker's requests hold now; its
    ``PEXPIRE`` (:data:`HASH_TTL_MS`) is refreshed while anyone holds a slot.
``wsgate:owner:ID``
    an owner's liveness key, ``SET ... PX`` :data:`~wsgate.redis_link.OWNER_TTL_MS`,
    refreshed every :data:`~wsgate.redis_link.RECONCILE_EVERY` seconds while the worker holds
    a slot (and by each acquire).
``wsgate:req:NAME:KEY``
    a ``limit_req`` key's state, nginx's ``lr->excess`` (milli-requests) and ``lr->last``
    (ms, from Redis's ``TIME``, so the nodes' clocks need not agree), with a ``PEXPIRE`` after
    which the state is drained to nothing (forgetting it then changes no answer).

``limit_conn``: acquiring is one Lua script (:data:`CONN_ACQUIRE`, by ``EVALSHA``): drop the
fields whose owner's liveness key is gone (a crashed node), sum the rest, refuse at the limit
("node->conn >= limit->conn"), else ``HINCRBY`` this owner's field.  A worker keeps its own
true count per key (:attr:`RedisConnZone.counts`); releasing a slot lowers it and marks the
key *dirty*, and a dirty key's field is rewritten with that count (``HSET``, or ``HDEL`` at
0).  The reconcile timer marks every key the worker holds dirty each second, so a Redis that
restarted empty has the fleet's counts back within about a second, and a slot taken while
failing open (not counted in Redis) is counted from then on.

Every command of a worker to one Redis goes through one ordered stream, its
:class:`~wsgate.redis_link.Link` (see :mod:`wsgate.redis_link`): the dirty keys' rewrites go
first in each batch, after every acquire they could overlap has been answered, so the count in
Redis is exact, not eventually so.

``limit_req``: one Lua script (:data:`REQ_SCRIPT`) per lookup or account, nginx's leaky
bucket exactly as :func:`wsgate.limits.lookup_state`/:func:`~wsgate.limits.account_state`;
it returns the excess, and :func:`check_requests_shared` decides delay or refusal with
``burst``/``nodelay``/``delay=`` as :func:`wsgate.limits.check_requests` does.

Failures (see :mod:`wsgate.redis_link`): while its Redis does not answer, a zone with
``redis_fail=open`` (the default) lets requests pass uncounted, and one with
``redis_fail=closed`` answers ``limit_conn_status``/``limit_req_status``; each zone logs at
most one ``[error]`` line per interval and a ``[notice]`` when Redis answers again.  A worker
that exits gives back what it held (:meth:`RedisZones.close`, from
:func:`wsgate.server.worker.serve`); one that is killed leaves it to its liveness key's TTL.

A slot is given back in Redis one round trip after its request (or tunnel) ended: until
then the fleet counts it, a moment longer than a local zone would.

Shedding after a recovery (see :mod:`wsgate.redis_shed`): the tunnels admitted over a
``limit_conn`` while Redis was away (failing open, or just after it came back empty) are
closed with a Close 1013 "try again later", exactly the fleet's excess, the newest first.
A ``limit_conn`` zone keeps, for that, the slots held per key
(:class:`~wsgate.redis_shed.RedisSlot`) and the keys acquired since a failure began
(:attr:`RedisConnZone.suspect`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from wsgate.config.model import LimitConnZone, LimitReqZone, RedisServer
from wsgate.limits import ConnZone, Refused, ReqDecision, ReqZone, ZoneFull, slowest
from wsgate.redis_link import (
    OWNER_PREFIX,
    OWNER_TTL_MS,
    PREFIX,
    Clock,
    Done,
    Health,
    Link,
    Op,
    RedisDown,
    failure_reason,
    ignore,
    live_total,
    script_sha,
)
from wsgate.redis_shed import CONN_TRIM, HELD, RELEASED, Recovery, RedisSlot

if TYPE_CHECKING:
    from wsgate.http.phases import PhaseWorker
    from wsgate.observability.logs import ErrorLogger

__all__ = [
    "CONN_ACQUIRE",
    "HASH_TTL_MS",
    "REQ_SCRIPT",
    "SCRIPTS",
    "ConnWait",
    "RedisConnZone",
    "RedisReqZone",
    "RedisZones",
    "ReqLimit",
    "ReqWait",
    "check_requests_shared",
    "zones_of",
]

#: A ``limit_conn`` key's hash lives this long unless a holder refreshes it.
HASH_TTL_MS = 10000

#: ``limit_conn``'s acquire.  KEYS: the key's hash, this owner's liveness key.  ARGV: the
#: owner, the limit, the liveness TTL (ms), the hash's TTL (ms), the liveness keys' prefix.
#: 1: taken, 0: "limiting connections".
CONN_ACQUIRE = (
    """
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
"""
    + live_total(5)
    + """
if total >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""
)

#: ``limit_req``: ``ngx_http_limit_req_lookup`` (ARGV[1] ``lookup``: ``{busy, excess}``) or
#: ``ngx_http_limit_req_account`` (``account``: the excess).  KEYS: the key's state.  ARGV:
#: the mode, the rate (milli-requests per second), the burst (milli-requests), ``1`` to
#: account at once (the last limit), and optionally the time in ms (tests inject it): else
#: the clock is Redis's, in milliseconds, the same for every node.
REQ_SCRIPT = """
local now = tonumber(ARGV[5])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local rate = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'e', 'l')
local excess, last = tonumber(state[1]), tonumber(state[2])
local function store(e, l)
  redis.call('HSET', KEYS[1], 'e', e, 'l', l)
  local ttl = math.floor((e + 1000) * 1000 / rate) + 1000
  redis.call('PEXPIRE', KEYS[1], math.min(ttl, 1000000000000))
end
if not excess then
  if ARGV[1] == 'account' then
    store(0, now)
    return 0
  end
  if ARGV[4] == '1' then store(0, now) else store(0, 0) end
  return {0, 0}
end
local ms = now - last
if ms < -60000 then ms = 1 elseif ms < 0 then ms = 0 end
local new = excess - math.floor(rate * ms / 1000) + 1000
if new < 0 then new = 0 end
local at = last
if ms ~= 0 then at = now end
if ARGV[1] == 'account' then
  store(new, at)
  return new
end
if new > tonumber(ARGV[3]) then
  return {1, new}
end
if ARGV[4] == '1' then store(new, at) end
return {0, new}
"""


#: Every script a link loads on a new connection (:class:`~wsgate.redis_link.Link`).
SCRIPTS = (CONN_ACQUIRE, REQ_SCRIPT, CONN_TRIM)
_ACQUIRE_SHA = script_sha(CONN_ACQUIRE)
_REQ_SHA = script_sha(REQ_SCRIPT)


class _Unavailable(Exception):
    """A ``limit_req`` zone failing closed: the request is refused."""

    def __init__(self, zone: str) -> None:
        self.zone = zone
        super().__init__(zone)


class RedisConnZone(ConnZone):
    """A ``limit_conn_zone`` kept in Redis, as one worker sees it.  ``counts`` (of
    :class:`~wsgate.limits.ConnZone`) is what this worker's requests hold, per key;
    ``dirty`` the keys whose field in Redis must be rewritten with it; ``holders`` the
    slots held per key, oldest first; ``suspect`` the keys to trim in a recovery window
    (:class:`~wsgate.redis_shed.Recovery`, which closes the tunnels over the limit)."""

    __slots__ = (
        "link",
        "health",
        "dirty",
        "_owner_key",
        "holders",
        "suspect",
        "to_trim",
        "shed_count",
    )

    def __init__(self, name: str, link: Link, health: Health) -> None:
        super().__init__(name)
        self.link = link
        self.health = health
        self.dirty: set[str] = set()
        self._owner_key = OWNER_PREFIX + link.owner
        #: The slots held per key, oldest first (``counts`` minus those shed).
        self.holders: dict[str, list[RedisSlot]] = {}
        #: Keys acquired since a failure began, or while a recovery window is open.
        self.suspect: set[str] = set()
        #: This round's keys whose trim is not sent yet.
        self.to_trim: list[str] = []
        #: Tunnels closed by the trims answered in this turn of the loop (one log line).
        self.shed_count = 0
        link.conn_zones.append(self)

    def hash_key(self, key: str) -> str:
        """The key's hash in Redis (``wsgate:conn:NAME:KEY``)."""
        return f"{PREFIX}conn:{self.name}:{key}"

    def acquire(self, key: str, limit: int) -> Literal[True] | Refused:
        raise NotImplementedError("a zone kept in Redis is asked with acquire_shared()")

    async def acquire_shared(
        self, key: str, limit: int, taken: Callable[[RedisSlot], None]
    ) -> Literal[True] | Refused:
        """``ngx_http_limit_conn_handler`` against the fleet's count.  ``taken`` is given
        the slot when it is the request's (before this returns, so that a request cancelled
        meanwhile still releases it)."""
        link = self.link
        args = (
            "EVALSHA",
            _ACQUIRE_SHA,
            2,
            self.hash_key(key),
            self._owner_key,
            link.owner,
            limit,
            OWNER_TTL_MS,
            HASH_TTL_MS,
            OWNER_PREFIX,
        )
        waiter: asyncio.Future[Literal[True] | Refused] = asyncio.get_running_loop().create_future()

        def done(reply: Any) -> None:
            got: Literal[True] | Refused
            if isinstance(reply, Exception):
                self.dirty.add(key)  # it may have been counted: rewrite the true count
                link.kick()
                got = self._failing(failure_reason(reply), key, limit, taken, waiter.cancelled())
            else:
                self.health.up()
                got = True if reply == 1 else Refused.LIMIT
                if got is True:
                    if waiter.cancelled():  # counted in Redis, held by nobody
                        self.dirty.add(key)
                        link.kick()
                    else:
                        self._take(key, limit, taken)
            if not waiter.cancelled():
                waiter.set_result(got)

        if not link.submit(args, done):
            return self._failing(link.reason, key, limit, taken, False)
        return await waiter

    def _take(self, key: str, limit: int, taken: Callable[[RedisSlot], None]) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
        slot = RedisSlot(self, limit)
        held = self.holders.get(key)
        if held is None:
            self.holders[key] = [slot]
        else:
            held.append(slot)
        if self.link.recovery.suspicious:
            self.suspect.add(key)  # checked in the recovery window's rounds
        taken(slot)
        self.link.arm()  # the reconcile timer: this worker holds a slot

    def _failing(
        self, reason: str, key: str, limit: int, taken: Callable[[RedisSlot], None], gone: bool
    ) -> Literal[True] | Refused:
        """Redis did not answer: ``redis_fail=open`` lets the request pass, with its slot
        counted here only (a rewrite counts it in Redis once it answers again, and the
        recovery window checks its key)."""
        self.health.down(reason)
        if self.health.closed:
            return Refused.UNAVAILABLE
        if not gone:
            self.dirty.add(key)
            self.suspect.add(key)
            self._take(key, limit, taken)
        return True

    def give_back(self, slot: RedisSlot, key: str) -> None:
        """``slot``'s request or tunnel ended: it holds nothing any more.  Once only; a slot
        shed over the limit was given back in the count when it was closed."""
        state = slot.state
        if state == RELEASED:
            return
        slot.state = RELEASED
        slot.tunnel = None
        held = self.holders.get(key)
        if held is not None:
            try:
                held.remove(slot)
            except ValueError:  # pragma: no cover - every slot taken is in holders
                pass
            if not held:
                del self.holders[key]
        if state == HELD:
            self.release(key)

    def release(self, key: str) -> None:
        """``ngx_http_limit_conn_cleanup``: one slot less here; the key's field is rewritten
        with the true count in the next batch (or, while Redis is down, once it is back)."""
        held = self.counts.get(key, 0) - 1
        if held <= 0:
            self.counts.pop(key, None)
        else:
            self.counts[key] = held
        self.dirty.add(key)
        self.link.kick()

    def held_keys(self) -> set[str]:
        """Every key whose field in Redis may be this worker's."""
        return set(self.counts) | self.dirty

    def flush(self, most: int) -> list[str]:
        """Up to ``most`` dirty keys, no longer dirty: the link rewrites them first in the
        batch it is making (:meth:`rewrite`)."""
        if len(self.dirty) <= most:
            keys = list(self.dirty)
            self.dirty = set()
        else:
            keys = [self.dirty.pop() for _ in range(most)]
        return keys

    def rewrite(self, key: str, owner: str) -> list[Op]:
        """``key``'s field set to this worker's true count (``HDEL`` at 0)."""
        name = self.hash_key(key)
        held = self.counts.get(key, 0)
        if held:
            return [
                (("HSET", name, owner, held), self._written(key)),
                (("PEXPIRE", name, HASH_TTL_MS), ignore),
            ]
        return [(("HDEL", name, owner), self._written(key))]

    def _written(self, key: str) -> Done:
        def done(reply: Any) -> None:
            if isinstance(reply, Exception):
                self.dirty.add(key)
                self.health.down(failure_reason(reply))
            else:
                self.health.up()

        return done


class RedisReqZone:
    """A ``limit_req_zone`` kept in Redis: the state lives there only.  ``lookup`` and
    ``account`` are :class:`~wsgate.limits.ReqZone`'s, awaited, on Redis's clock."""

    __slots__ = ("name", "rate", "link", "health")

    def __init__(self, name: str, rate: int, link: Link, health: Health) -> None:
        self.name = name
        self.rate = rate
        self.link = link
        self.health = health

    async def _call(self, key: str, *argv: Any) -> Any:
        """The script's reply; on a failure, ``None`` (fail open) or :class:`_Unavailable`."""
        link = self.link
        args = ("EVALSHA", _REQ_SHA, 1, f"{PREFIX}req:{self.name}:{key}", *argv)
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(reply: Any) -> None:
            if not waiter.cancelled():
                waiter.set_result(reply)

        reply: Any = RedisDown(link.reason)
        if link.submit(args, done):
            reply = await waiter
        if isinstance(reply, Exception):
            self.health.down(failure_reason(reply))
            if self.health.closed:
                raise _Unavailable(self.name)
            return None
        self.health.up()
        return reply

    async def lookup(self, key: str, burst: int, account: bool) -> tuple[bool, int]:
        """``ngx_http_limit_req_lookup``: ``(busy, excess)``; failing open, ``(False, 0)``."""
        reply = await self._call(key, "lookup", self.rate, burst, 1 if account else 0)
        if reply is None:
            return False, 0
        return bool(reply[0]), int(reply[1])

    async def account(self, key: str) -> int:
        """``ngx_http_limit_req_account``: the new excess; failing open, 0."""
        reply = await self._call(key, "account", self.rate, 0, 0)
        return 0 if reply is None else int(reply)


ReqLimit = tuple[ReqZone | RedisReqZone, str, int, int]


async def check_requests_shared(limits: Sequence[ReqLimit], now: int) -> ReqDecision:
    """:func:`wsgate.limits.check_requests` over a list with zones kept in Redis: the same
    steps in the same order (the first limit over its burst refuses and nothing is accounted;
    otherwise every zone is accounted and the longest delay wins); a zone in Redis that fails
    closed refuses with ``unavailable`` set.  ``now`` is for the local zones."""
    last = len(limits) - 1
    excess = 0
    accounted: list[int] = []
    try:
        for i, (zone, key, burst, _) in enumerate(limits):
            if isinstance(zone, RedisReqZone):
                busy, excess = await zone.lookup(key, burst, i == last)
            else:
                busy, excess = zone.lookup(key, burst, now, i == last)
            if busy:
                return ReqDecision(rejected=zone.name, excess=excess)
        for zone, key, _, _ in limits[:last]:
            if isinstance(zone, RedisReqZone):
                accounted.append(await zone.account(key))
            else:
                accounted.append(zone.account(key, now))
    except ZoneFull as full:  # only a local zone's lookup may raise it
        return ReqDecision(rejected=full.zone, no_memory=True)
    except _Unavailable as exc:
        return ReqDecision(rejected=exc.zone, unavailable=True)
    return slowest(limits, [*accounted, excess])


class RedisZones:
    """The zones kept in Redis of one worker process, by name and address, with one
    :class:`~wsgate.redis_link.Link` per Redis.  The owner id is this process's."""

    __slots__ = ("owner", "_log", "_clock", "_loop", "links", "conn", "req")

    def __init__(self, error_log: ErrorLogger, clock: Clock, owner: str = "") -> None:
        #: ``hostname:pid:start-ms``: unique to this process, even after a pid is reused.
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{int(time.time() * 1000)}"
        self._log = error_log
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self.links: dict[RedisServer, Link] = {}
        self.conn: dict[tuple[str, RedisServer], RedisConnZone] = {}
        self.req: dict[tuple[str, RedisServer], RedisReqZone] = {}

    def _link(self, server: RedisServer) -> Link:
        link = self.links.get(server)
        if link is None:
            link = Link(server, self.owner, self._loop, self._clock, SCRIPTS, Recovery)
            self.links[server] = link
        return link

    async def close(self) -> None:
        """Give back what this process holds and close every link (a worker that is done:
        :func:`wsgate.server.worker.serve`)."""
        for link in self.links.values():
            await link.close()

    def conn_zone(self, spec: LimitConnZone) -> RedisConnZone:
        assert spec.redis is not None
        zone = self.conn.get((spec.name, spec.redis))
        if zone is None:
            health = Health("limit_conn", spec.name, spec.redis, self._log, self._clock)
            zone = RedisConnZone(spec.name, self._link(spec.redis), health)
            self.conn[spec.name, spec.redis] = zone
        zone.health.closed = spec.redis_fail_closed  # a reload may change it
        return zone

    def req_zone(self, spec: LimitReqZone) -> RedisReqZone:
        assert spec.redis is not None
        zone = self.req.get((spec.name, spec.redis))
        if zone is None:
            health = Health("limit_req", spec.name, spec.redis, self._log, self._clock)
            zone = RedisReqZone(spec.name, spec.rate, self._link(spec.redis), health)
            self.req[spec.name, spec.redis] = zone
        zone.rate = spec.rate
        zone.health.closed = spec.redis_fail_closed
        return zone


def zones_of(worker: PhaseWorker) -> RedisZones:
    """The worker's zones kept in Redis, made by the first request that uses one."""
    registry = worker.limits
    zones = registry.remote
    if zones is None:
        zones = registry.remote = RedisZones(worker.error_log, worker.clock)
    return zones


class ConnWait:
    """A request's wait for a ``limit_conn`` zone in Redis (``Request.conn_wait``): the
    handler goes on at ``index`` of the location's ``limit_conn`` list with ``result``."""

    __slots__ = ("index", "zone", "key", "limit", "taken", "result")

    def __init__(
        self,
        index: int,
        zone: RedisConnZone,
        key: str,
        limit: int,
        taken: Callable[[RedisSlot], None],
    ) -> None:
        self.index = index
        self.zone = zone
        self.key = key
        self.limit = limit
        self.taken = taken
        self.result: Literal[True] | Refused = Refused.UNAVAILABLE

    async def run(self) -> None:
        self.result = await self.zone.acquire_shared(self.key, self.limit, self.taken)


class ReqWait:
    """A request's wait for its ``limit_req`` list with zones in Redis
    (``Request.req_wait``): the handler goes on with ``decision``."""

    __slots__ = ("limits", "now", "decision")

    def __init__(self, limits: list[ReqLimit], now: int) -> None:
        self.limits = limits
        self.now = now
        self.decision = ReqDecision()

    async def run(self) -> None:
        self.decision = await check_requests_shared(self.limits, self.now)
