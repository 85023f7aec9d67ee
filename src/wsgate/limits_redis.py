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
    an owner's liveness key, ``SET ... PX`` :data:`OWNER_TTL_MS`, refreshed every
    :data:`RECONCILE_EVERY` seconds while the worker holds a slot (and by each acquire).
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

Every command of a worker to one Redis goes through one ordered stream (:class:`Link`): it
is sent in batches, one pipeline per round trip, and a batch is sent only when the one
before it has answered.  The dirty keys' rewrites are computed when a batch is made and go
first in it, so every acquire they could overlap has been answered and counted: a rewrite
can never undo a concurrent acquire, and the count in Redis is exact, not eventually so.

``limit_req``: one Lua script (:data:`REQ_SCRIPT`) per lookup or account, nginx's leaky
bucket exactly as :func:`wsgate.limits.lookup_state`/:func:`~wsgate.limits.account_state`;
it returns the excess, and :func:`check_requests_shared` decides delay or refusal with
``burst``/``nodelay``/``delay=`` as :func:`wsgate.limits.check_requests` does.

Failures (connection refused, no such socket, a timeout, an error reply): a round trip that
has not answered in :data:`TIMEOUT` seconds (connecting and loading the scripts included)
fails; a request waits at most twice that (its batch and the one in flight before it).
After a failure the link is *down* for :data:`RETRY_AFTER` seconds: requests do not wait
on Redis at all, then the next one (or the reconcile timer) connects again.  While it fails,
a zone with ``redis_fail=open`` (the default, like Envoy's rate-limit filter with
``failure_mode_deny: false``) lets requests pass uncounted, and one with ``redis_fail=closed``
answers ``limit_conn_status``/``limit_req_status``.  Each zone logs at most one ``[error]``
line every :data:`LOG_EVERY` seconds (``redis limit_conn zone "NAME" at ADDRESS
unreachable: REASON, failing open``), and a ``[notice]`` when Redis answers again; a Redis
failure is never an ``[alert]``.  A slot released while Redis is down stays dirty until a
rewrite succeeds: no slot leaks, in Redis or here.  A worker that exits gives back what it
held (:meth:`RedisZones.close`, from :func:`wsgate.server.worker.serve`); one that is killed
leaves it to its liveness key's TTL.

A slot is given back in Redis one round trip after its request (or tunnel) ended: until
then the fleet counts it, a moment longer than a local zone would.

Shedding after a recovery.  While Redis is away, ``redis_fail=open`` admits every opening
uncounted, and just after it is back (empty, after a restart) the first acquires see only
the counts already rewritten; so a key can end up over its limit fleet-wide, and the
rewrites alone stop new openings but do not end the tunnels admitted meanwhile.  So each
worker keeps the keys it acquired since a failure began (:attr:`RedisConnZone.suspect`:
those admitted while failing open, and those acquired while the window below is open).
When its link answers on a new connection (after a failure; after Redis lost its scripts,
a restart seen without a failure, through a proxy or a reconnect redis-py made by itself;
or its first connection, since a Redis restarted a moment ago cannot be told from one that
was not), a window of :data:`SHED_ROUNDS` reconcile rounds opens (about 3 s: every node's
rewrite, made by its first batch after it reconnected, within :data:`RETRY_AFTER` of
Redis's return, has landed by the second).  In each of its rounds, after the rewrites of the
batch, the worker sends one :data:`CONN_TRIM` script per suspect key it still holds: it
sums the live owners' fields as the acquire does, and lowers this owner's field at once by
``n = min(total - limit, mine)``, so the other owners running it after see the reduced
total and the fleet does not shed more than its excess.  The limit is the smallest
``limit_conn N`` among the worker's holders of the key (a zone may be used with different
N in different locations); a holder in a ``limit_conn_dry_run`` location is never closed.
The worker then ends its ``n`` newest holders of the key (:meth:`RedisConnZone.shed`): a
WebSocket tunnel, over HTTP/1.1 or an HTTP/2 stream (RFC 8441), gets a Close 1013 "try
again later" both ways at its frame boundaries
(:meth:`wsgate.proxy.tunnel.Tunnel.going_away`), and its slot counts as given back from
then on (the per-second rewrite does not count it again while it closes; its release when
it ends changes nothing more).  A request that is not a tunnel (a plain request, or an
upgrade whose 101 has not come) is not cut: its part of ``n`` is written back by the next
rewrite, and the window is extended by a round (up to :data:`SHED_ROUNDS_MOST`) to try
again.  Each zone logs one ``[warn]`` line per round that closed tunnels: ``closing N
websocket tunnel(s) over the limit of zone "NAME" after redis recovered``.  A
``redis_fail=closed`` zone admits nothing while Redis is away: only the acquires made in
the window are checked.  Without a failure nothing is ever closed: a key within its limit
fleet-wide (as the acquire keeps it) trims to nothing, and after a worker's first window
no trim is sent at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from wsgate.config.model import LimitConnZone, LimitReqZone, RedisServer
from wsgate.limits import ConnZone, Refused, ReqDecision, ReqZone, ZoneFull
from wsgate.proxy.frames import TRY_AGAIN_LATER

if TYPE_CHECKING:
    from wsgate.http.phases import PhaseWorker
    from wsgate.observability.logs import ErrorLogger
    from wsgate.proxy.tunnel import Tunnel

__all__ = [
    "CONN_ACQUIRE",
    "CONN_TRIM",
    "HASH_TTL_MS",
    "LOG_EVERY",
    "OWNER_TTL_MS",
    "RECONCILE_EVERY",
    "REQ_SCRIPT",
    "RETRY_AFTER",
    "REWRITES_PER_BATCH",
    "SHED_ROUNDS",
    "SHED_ROUNDS_MOST",
    "TIMEOUT",
    "ConnWait",
    "Link",
    "RedisConnZone",
    "RedisDown",
    "RedisReqZone",
    "RedisSlot",
    "RedisZones",
    "ReqLimit",
    "ReqWait",
    "check_requests_shared",
    "zones_of",
]

#: Seconds a round trip to Redis may take (connecting included) before it counts as failed.
TIMEOUT = 0.5
#: Seconds after a failure during which requests do not wait on Redis (then it is tried again).
RETRY_AFTER = 1.0
#: Seconds between two rewrites of the counts a worker holds (and of its liveness key).
RECONCILE_EVERY = 1.0
#: An owner's liveness key lives this long unless refreshed: a crashed node's slots vanish then.
OWNER_TTL_MS = 5000
#: A ``limit_conn`` key's hash lives this long unless a holder refreshes it.
HASH_TTL_MS = 10000
#: At most one "unreachable" line per zone this often (seconds).
LOG_EVERY = 10.0
#: Keys rewritten per batch at most (the rest in the next ones): a worker holding many keys
#: sends its reconcile in round trips that each stay well within :data:`TIMEOUT`.
REWRITES_PER_BATCH = 1000
#: Reconcile rounds after Redis answers on a new connection (after a failure, once it lost
#: its scripts, or the first) in which a worker trims the keys it acquired since the failure
#: began (:data:`CONN_TRIM`): 3, so that every node's rewrite has landed before the last.
SHED_ROUNDS = 3
#: A round whose trim left a holder that is not a tunnel (yet) extends the window by one,
#: up to this many rounds in all.
SHED_ROUNDS_MOST = 10

PREFIX = "wsgate:"

#: ``limit_conn``'s acquire.  KEYS: the key's hash, this owner's liveness key.  ARGV: the
#: owner, the limit, the liveness TTL (ms), the hash's TTL (ms), the liveness keys' prefix.
#: 1: taken, 0: "limiting connections".
CONN_ACQUIRE = """
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
local fields = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #fields, 2 do
  local owner = fields[i]
  if owner == ARGV[1] or redis.call('EXISTS', ARGV[5] .. owner) == 1 then
    total = total + tonumber(fields[i + 1])
  else
    redis.call('HDEL', KEYS[1], owner)
  end
end
if total >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

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

#: ``limit_conn``'s trim, after a recovery.  KEYS: the key's hash.  ARGV: the owner, the
#: limit, the liveness keys' prefix.  The live owners' total as :data:`CONN_ACQUIRE` sums it
#: (dead owners dropped); this owner's field lowered at once by ``min(total - limit,
#: mine)``, which is returned (0: within the limit).
CONN_TRIM = """
local fields = redis.call('HGETALL', KEYS[1])
local total, mine = 0, 0
for i = 1, #fields, 2 do
  local owner = fields[i]
  local held = tonumber(fields[i + 1])
  if owner == ARGV[1] then
    mine = held
    total = total + held
  elseif redis.call('EXISTS', ARGV[3] .. owner) == 1 then
    total = total + held
  else
    redis.call('HDEL', KEYS[1], owner)
  end
end
local n = math.min(total - tonumber(ARGV[2]), mine)
if n <= 0 then
  return 0
end
if n == mine then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HINCRBY', KEYS[1], ARGV[1], -n)
end
return n
"""

_SCRIPTS = (CONN_ACQUIRE, REQ_SCRIPT, CONN_TRIM)
_SHA = {text: hashlib.sha1(text.encode()).hexdigest() for text in _SCRIPTS}

#: What a command's answer is handed to: the reply, or an exception (never raises).
Done = Callable[[Any], None]
Op = tuple[tuple[Any, ...], Done]
Clock = Callable[[], float]


class RedisDown(Exception):
    """Redis did not answer a command: unreachable, timed out, or an error reply."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class _Unavailable(Exception):
    """A ``limit_req`` zone failing closed: the request is refused."""

    def __init__(self, zone: str) -> None:
        self.zone = zone
        super().__init__(zone)


def _ignore(reply: Any) -> None:
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError) and not str(exc):
        return f"timed out ({TIMEOUT * 1000:.0f} ms)"
    return (str(exc) or type(exc).__name__).rstrip(".")


class _Health:
    """A zone's view of its Redis for the error log: one ``[error]`` line at most every
    :data:`LOG_EVERY` seconds while it fails, a ``[notice]`` when it answers again after a
    failure that was logged."""

    __slots__ = (
        "kind",
        "name",
        "server",
        "closed",
        "_log",
        "_clock",
        "failing",
        "_logged",
        "_announced",
    )

    def __init__(
        self, kind: str, name: str, server: RedisServer, log: ErrorLogger, clock: Clock
    ) -> None:
        self.kind = kind
        self.name = name
        self.server = server
        #: ``redis_fail=closed``.
        self.closed = False
        self._log = log
        self._clock = clock
        self.failing = False
        #: When the last ``[error]`` line was written (None: never).
        self._logged: float | None = None
        #: The failure going on was logged (its end gets a ``[notice]``).
        self._announced = False

    def down(self, reason: str) -> None:
        now = self._clock()
        self.failing = True
        if self._logged is None or now - self._logged >= LOG_EVERY:
            how = "closed" if self.closed else "open"
            self._log.log(
                "error",
                f'redis {self.kind} zone "{self.name}" at {self.server} unreachable: {reason}, '
                f"failing {how}",
            )
            self._logged = now
            self._announced = True

    def log(self, level: str, message: str) -> None:
        self._log.log(level, message)

    def up(self) -> None:
        if not self.failing:
            return
        self.failing = False
        if self._announced:
            self._announced = False
            self._log.log(
                "notice", f'redis {self.kind} zone "{self.name}" at {self.server} reachable again'
            )


class Link:
    """One Redis as one worker talks to it: a client (one connection), and one ordered
    stream of commands sent in batches, a pipeline per round trip, the next batch only once
    the one before it answered (see the module's docstring for why the order matters).

    :meth:`submit` queues a command (False: the link is down, nothing queued); a batch
    starts with the rewrites of every :class:`RedisConnZone`'s dirty keys (and this owner's
    liveness key), made when the batch is, then, in a recovery window's rounds, the trims
    of the keys acquired since the failure began (see the module's docstring)."""

    __slots__ = (
        "server",
        "owner",
        "loop",
        "_clock",
        "_client",
        "_loaded",
        "_queue",
        "_writer",
        "_closing",
        "_timer",
        "_refresh",
        "conn_zones",
        "down_until",
        "reason",
        "broken",
        "shed_rounds",
        "_rounds",
    )

    def __init__(
        self, server: RedisServer, owner: str, loop: asyncio.AbstractEventLoop, clock: Clock
    ) -> None:
        self.server = server
        self.owner = owner
        self.loop = loop
        self._clock = clock
        self._client: Any = None
        #: The scripts are known to the server of the current connection.
        self._loaded = False
        self._queue: list[Op] = []
        self._writer: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        #: The reconcile timer (armed while a zone holds a slot or has a dirty key).
        self._timer: asyncio.TimerHandle | None = None
        #: Refresh the liveness key in the next batch.
        self._refresh = False
        self.conn_zones: list[RedisConnZone] = []
        #: Loop time until which the link is down (requests do not wait on it).
        self.down_until = float("-inf")
        self.reason = ""
        #: A round trip failed and none has answered since (a recovery window opens then).
        self.broken = False
        #: Reconcile rounds left in the recovery window (0: no window).
        self.shed_rounds = 0
        #: Rounds of the window so far (:data:`SHED_ROUNDS_MOST`).
        self._rounds = 0

    @property
    def down(self) -> bool:
        return self._clock() < self.down_until

    def submit(self, args: tuple[Any, ...], done: Done) -> bool:
        """Queue one command; ``done`` gets its reply, or a :class:`RedisDown`."""
        if self.down:
            return False
        self._queue.append((args, done))
        self._start()
        return True

    def kick(self) -> None:
        """Send the dirty keys' rewrites soon, and keep the reconcile timer running."""
        self.arm()
        if not self.down:
            self._start()

    @property
    def suspicious(self) -> bool:
        """A slot taken now may put its key over the limit fleet-wide: Redis is failing, or
        answers again since less than the window (the fleet's counts may not all be back)."""
        return self.broken or self.shed_rounds > 0

    # -- the recovery window ---------------------------------------------------------------
    def _recovered(self) -> None:
        """Redis answers on a new connection (after a failure, after it lost its scripts,
        or the first): open the window."""
        self.shed_rounds = SHED_ROUNDS
        self._rounds = 0
        self.arm()  # the window's rounds run even while nothing is held

    def extend(self) -> None:
        """A trim left holders not cut (requests that are not tunnels yet): one more round,
        within :data:`SHED_ROUNDS_MOST`."""
        if not self.broken and self._rounds < SHED_ROUNDS_MOST:
            self.shed_rounds = max(self.shed_rounds, 1)
            self.arm()

    def _trim_round(self) -> None:
        """One round of the window: each zone's suspect keys still held are trimmed in the
        batch this tick makes (after its rewrites); the last round forgets them."""
        self.shed_rounds -= 1
        self._rounds += 1
        for zone in self.conn_zones:
            zone.suspect.intersection_update(zone.holders)
            zone.to_trim = list(zone.suspect)
            if not self.shed_rounds:
                zone.suspect = set()

    def _close_window(self) -> None:
        self.shed_rounds = 0
        for zone in self.conn_zones:
            zone.suspect = set()
            zone.to_trim = []

    # -- the reconcile timer ---------------------------------------------------------------
    def arm(self, delay: float = RECONCILE_EVERY) -> None:
        """Keep the reconcile timer running (a zone holds a slot or has a dirty key)."""
        if self._timer is None:
            self._timer = self.loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        """Every :data:`RECONCILE_EVERY` s while something is held: rewrite it all, and the
        liveness key; while the link is down, again as soon as it may be tried."""
        self._timer = None
        busy = False
        for zone in self.conn_zones:
            if zone.counts:
                zone.dirty.update(zone.counts)
                busy = True
            busy = busy or bool(zone.dirty)
        if not busy:
            if self.shed_rounds > 0 and not self.broken:
                self._trim_round()  # nothing held, nothing to trim: the window runs on
                self.arm()
            return
        self._refresh = True
        wait = self.down_until - self._clock()
        if wait > 0:
            for zone in self.conn_zones:  # failing: forget the keys no longer held
                if zone.suspect:
                    zone.suspect.intersection_update(zone.holders)
            self.arm(min(wait + 0.01, RECONCILE_EVERY))
            return
        if self.shed_rounds > 0 and not self.broken:
            self._trim_round()
        self.arm()
        self._start()

    # -- the writer ------------------------------------------------------------------------
    def _start(self) -> None:
        if self._writer is None:
            self._writer = self.loop.create_task(self._write())

    def _front(self) -> list[Op]:
        ops: list[Op] = []
        budget = REWRITES_PER_BATCH
        for zone in self.conn_zones:
            if zone.dirty and budget > 0:
                written = zone.flush(budget)
                budget -= len(written)
                for key in written:
                    ops += zone.rewrite(key, self.owner)
        for zone in self.conn_zones:  # after every rewrite: this owner's fields are true
            if zone.to_trim and budget > 0:
                keys = zone.to_trim[:budget]
                del zone.to_trim[:budget]
                budget -= len(keys)
                ops += zone.trims(keys, self.owner)
        if ops or self._refresh:
            self._refresh = False
            key = PREFIX + "owner:" + self.owner
            ops.insert(0, (("SET", key, "1", "PX", OWNER_TTL_MS), _ignore))
        return ops

    async def _write(self) -> None:
        batch: list[Op] = []
        retries = 0
        try:
            while True:
                batch = self._queue
                self._queue = []
                if self.down:
                    _fail(batch, self.reason)
                    batch = []
                    return
                fresh = not self._loaded
                if fresh:
                    # A new connection, perhaps to a Redis that restarted empty: what this
                    # worker holds is written before anything else is asked.
                    self._rewrite_all()
                batch = self._front() + batch
                if not batch:
                    return
                if self._client is None:  # made (and redis-py imported) outside the timeout
                    self._client = _new_client(self.server)
                try:
                    replies = await asyncio.wait_for(self._send(batch), TIMEOUT)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # every failure of Redis or of the client
                    self._failed(_reason(exc))
                    _fail(batch, self.reason)
                    batch = []
                    continue
                done, batch = batch, []
                if fresh or self.broken:
                    # Answered on a new connection (after a failure, after Redis lost its
                    # scripts, or the first: a Redis restarted a moment ago cannot be told
                    # from one that was not): the recovery window opens.
                    self.broken = False
                    self._recovered()
                again = [i for i, reply in enumerate(replies) if _noscript(reply)]
                if again and retries < 3:
                    # The server lost its scripts (a restart, SCRIPT FLUSH): those commands
                    # did nothing; sent again in the next batch, after the rewrites (and
                    # it may have lost the counts too: that batch opens a recovery window).
                    retries += 1
                    self._loaded = False
                    self._queue[:0] = [done[i] for i in again]
                    skip = set(again)
                    done = [op for i, op in enumerate(done) if i not in skip]
                    replies = [r for i, r in enumerate(replies) if i not in skip]
                else:
                    retries = 0
                for (_, callback), reply in zip(done, replies, strict=True):
                    callback(reply)
        finally:
            self._writer = None
            # Cancelled (the loop is closing) or a bug: nobody may wait forever.
            _fail(batch + self._queue, self.reason or "stopped")
            self._queue = []

    def _rewrite_all(self) -> None:
        for zone in self.conn_zones:
            zone.dirty.update(zone.counts)

    async def _send(self, batch: list[Op]) -> list[Any]:
        client = self._client
        if not self._loaded:
            await _load_scripts(client)
            self._loaded = True
        pipe = client.pipeline(transaction=False)
        for args, _ in batch:
            pipe.execute_command(*args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def close(self) -> None:
        """The process is done with this Redis: once the batch in flight has answered, give
        back every slot this owner holds or may hold (``HDEL`` its fields, ``DEL`` its
        liveness key) rather than leave them to the liveness TTL, then close the connection.
        Bounded by :data:`TIMEOUT` twice; with Redis down the TTL does it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ops: list[Op] = []
        for zone in self.conn_zones:
            ops += [(("HDEL", zone._hash(k), self.owner), _ignore) for k in zone.held_keys()]
            zone.counts.clear()
            zone.dirty.clear()
        self._close_window()
        if self._writer is not None:
            await asyncio.wait([self._writer], timeout=TIMEOUT)
        if self.conn_zones and not self.down and self._writer is None:
            ops.append((("DEL", PREFIX + "owner:" + self.owner), _ignore))
            if self._client is None:
                self._client = _new_client(self.server)
            try:
                await asyncio.wait_for(self._send(ops), TIMEOUT)
            except Exception:  # the liveness TTL gives them back
                pass
        client, self._client = self._client, None
        if client is not None:
            await _close(client)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _failed(self, reason: str) -> None:
        self.down_until = self._clock() + RETRY_AFTER
        self.reason = reason
        self._loaded = False
        # A window under way starts again once Redis answers (its suspect keys are kept).
        self.broken = True
        self.shed_rounds = 0
        for zone in self.conn_zones:
            zone.suspect.update(zone.to_trim)
            zone.to_trim = []
        client, self._client = self._client, None
        if client is not None:  # a fresh connection next time
            task = self.loop.create_task(_close(client))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if any(zone.counts or zone.dirty for zone in self.conn_zones):
            self.arm()


def _noscript(reply: Any) -> bool:
    """A ``NOSCRIPT`` error reply (redis-py's ``NoScriptError``, already imported by then)."""
    from redis.exceptions import NoScriptError

    return isinstance(reply, NoScriptError)


def _fail(batch: list[Op], reason: str) -> None:
    for _, callback in batch:
        callback(RedisDown(reason))


def _new_client(server: RedisServer) -> Any:
    """redis-py's asyncio client, imported here: only a worker using a ``redis=`` zone pays
    for the import.  Its own retries are off: a failure is reported at once, and the link
    decides when to try again."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    options: dict[str, Any] = {
        "socket_timeout": TIMEOUT,
        "socket_connect_timeout": TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
        "client_name": "wsgate",
    }
    if server.path:
        return Redis(unix_socket_path=server.path, **options)
    return Redis(host=server.host, port=server.port, **options)


async def _load_scripts(client: Any) -> None:
    pipe = client.pipeline(transaction=False)
    for text in _SCRIPTS:
        pipe.script_load(text)
    for text, sha in zip(_SCRIPTS, await pipe.execute(), strict=True):
        got = sha.decode() if isinstance(sha, bytes) else str(sha)
        if got != _SHA[text]:  # pragma: no cover - Redis hashes scripts with SHA-1
            raise RedisDown(f"SCRIPT LOAD gave {got}")


async def _close(client: Any) -> None:
    try:
        close = getattr(client, "aclose", None) or client.close
        await asyncio.wait_for(close(), 1.0)
    except Exception:  # a connection that failed may fail to close too
        pass


#: A :class:`RedisSlot`'s states: held; closed over the limit (given back in the count
#: already, its tunnel closing); released (its request or tunnel ended).
HELD, SHED, RELEASED = 0, 1, 2


class RedisSlot:
    """One slot of a :class:`RedisConnZone` held by one request, then by its tunnel: what
    the request keeps in ``conn_slots`` next to the key (a
    :class:`~wsgate.limits.SlotHolder`), so that the zone finds the tunnel to close when
    the key is over its limit after a recovery (:meth:`RedisConnZone.shed`).  Only zones
    kept in Redis make these; a local zone's holder is the zone itself."""

    __slots__ = ("zone", "limit", "tunnel", "state")

    def __init__(self, zone: RedisConnZone, limit: int) -> None:
        self.zone = zone
        #: The request's ``limit_conn N``; 0 in a ``limit_conn_dry_run`` location (never
        #: closed, no limit of its own).
        self.limit = limit
        #: The request's tunnel once it has one (:func:`wsgate.proxy.relay.start_tunnel`).
        self.tunnel: Tunnel | None = None
        self.state = HELD

    def release(self, key: str) -> None:
        """The request, or its tunnel, ended (``release_slots``, ``TunnelEnd.release``)."""
        self.zone.give_back(self, key)


class RedisConnZone(ConnZone):
    """A ``limit_conn_zone`` kept in Redis, as one worker sees it.  ``counts`` (of
    :class:`~wsgate.limits.ConnZone`) is what this worker's requests hold, per key;
    ``dirty`` the keys whose field in Redis must be rewritten with it; ``holders`` the
    slots held per key, oldest first; ``suspect`` the keys to trim in a recovery window."""

    __slots__ = ("link", "health", "dirty", "_owner_key", "holders", "suspect", "to_trim", "_shed")

    def __init__(self, name: str, link: Link, health: _Health) -> None:
        super().__init__(name)
        self.link = link
        self.health = health
        self.dirty: set[str] = set()
        self._owner_key = PREFIX + "owner:" + link.owner
        #: The slots held per key, oldest first (``counts`` minus those shed).
        self.holders: dict[str, list[RedisSlot]] = {}
        #: Keys acquired since a failure began, or while a recovery window is open.
        self.suspect: set[str] = set()
        #: This round's keys whose trim is not sent yet.
        self.to_trim: list[str] = []
        #: Tunnels closed by the trims answered in this turn of the loop (one log line).
        self._shed = 0
        link.conn_zones.append(self)

    def _hash(self, key: str) -> str:
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
            _SHA[CONN_ACQUIRE],
            2,
            self._hash(key),
            self._owner_key,
            link.owner,
            limit,
            OWNER_TTL_MS,
            HASH_TTL_MS,
            PREFIX + "owner:",
        )
        waiter: asyncio.Future[Literal[True] | Refused] = asyncio.get_running_loop().create_future()

        def done(reply: Any) -> None:
            got: Literal[True] | Refused
            if isinstance(reply, Exception):
                self.dirty.add(key)  # it may have been counted: rewrite the true count
                link.kick()
                got = self._failing(_reason(reply), key, limit, taken, waiter.cancelled())
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
        if self.link.suspicious:
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

    # -- shedding after a recovery (see the module's docstring) ----------------------------
    def trims(self, keys: list[str], owner: str) -> list[Op]:
        """The :data:`CONN_TRIM` of each of ``keys`` this worker still holds, with the
        smallest ``limit_conn N`` among its holders (dry-run holders have none)."""
        ops: list[Op] = []
        prefix = PREFIX + "owner:"
        for key in keys:
            limits = [s.limit for s in self.holders.get(key, ()) if s.state == HELD and s.limit]
            if limits:
                args = ("EVALSHA", _SHA[CONN_TRIM], 1, self._hash(key), owner, min(limits), prefix)
                ops.append((args, self._trimmed(key)))
        return ops

    def _trimmed(self, key: str) -> Done:
        def done(reply: Any) -> None:
            if isinstance(reply, Exception):
                self.suspect.add(key)  # trimmed in the next window
                self.health.down(_reason(reply))
            else:
                self.health.up()
                if int(reply) > 0:
                    self.shed(key, int(reply))

        return done

    def shed(self, key: str, n: int) -> int:
        """The trim lowered this worker's field of ``key`` by ``n``: close the tunnels among
        its ``n`` newest holders with a Close 1013 (their slots count as given back from
        now on), and return how many.  A holder that is not a tunnel, or in a dry-run
        location, is not cut: the next rewrite writes its slot back and the window gets
        one more round for it."""
        held = [s for s in self.holders.get(key, ()) if s.state == HELD]
        cut = 0
        for slot in reversed(held[-n:]):  # the newest first
            tunnel = slot.tunnel
            if tunnel is None or not slot.limit:
                continue
            slot.state = SHED
            self.release(key)  # one slot less here, and the key's field rewritten
            tunnel.going_away(TRY_AGAIN_LATER)  # its release, later, changes no count
            cut += 1
        self.dirty.add(key)  # the field as this worker holds it now (what was not cut)
        self.link.kick()
        if cut < n:
            self.suspect.add(key)
            self.link.extend()
        if cut:
            if not self._shed:
                self.link.loop.call_soon(self._log_shed)
            self._shed += cut
        return cut

    def _log_shed(self) -> None:
        n, self._shed = self._shed, 0
        self.health.log(
            "warn",
            f'closing {n} websocket tunnel(s) over the limit of zone "{self.name}" '
            "after redis recovered",
        )

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
        name = self._hash(key)
        held = self.counts.get(key, 0)
        if held:
            return [
                (("HSET", name, owner, held), self._written(key)),
                (("PEXPIRE", name, HASH_TTL_MS), _ignore),
            ]
        return [(("HDEL", name, owner), self._written(key))]

    def _written(self, key: str) -> Done:
        def done(reply: Any) -> None:
            if isinstance(reply, Exception):
                self.dirty.add(key)
                self.health.down(_reason(reply))
            else:
                self.health.up()

        return done


class RedisReqZone:
    """A ``limit_req_zone`` kept in Redis: the state lives there only.  ``lookup`` and
    ``account`` are :class:`~wsgate.limits.ReqZone`'s, awaited, on Redis's clock."""

    __slots__ = ("name", "rate", "link", "health")

    def __init__(self, name: str, rate: int, link: Link, health: _Health) -> None:
        self.name = name
        self.rate = rate
        self.link = link
        self.health = health

    async def _call(self, key: str, *argv: Any) -> Any:
        """The script's reply; on a failure, ``None`` (fail open) or :class:`_Unavailable`."""
        link = self.link
        args = ("EVALSHA", _SHA[REQ_SCRIPT], 1, f"{PREFIX}req:{self.name}:{key}", *argv)
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(reply: Any) -> None:
            if not waiter.cancelled():
                waiter.set_result(reply)

        reply: Any = RedisDown(link.reason)
        if link.submit(args, done):
            reply = await waiter
        if isinstance(reply, Exception):
            self.health.down(_reason(reply))
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
    try:
        for i, (zone, key, burst, _) in enumerate(limits):
            if isinstance(zone, RedisReqZone):
                busy, excess = await zone.lookup(key, burst, i == last)
            else:
                try:
                    busy, excess = zone.lookup(key, burst, now, i == last)
                except ZoneFull:
                    return ReqDecision(rejected=zone.name, no_memory=True)
            if busy:
                return ReqDecision(rejected=zone.name, excess=excess)
        zone, _, _, delay = limits[last]
        best = ReqDecision(excess=excess, zone=zone.name)
        if excess > delay:
            ms = (excess - delay) * 1000 // zone.rate
            best = ReqDecision(excess=excess, delay_ms=ms, zone=zone.name)
        for zone, key, _, delay in limits[:last]:
            if isinstance(zone, RedisReqZone):
                exc = await zone.account(key)
            else:
                exc = zone.account(key, now)
            if exc <= delay:
                continue
            ms = (exc - delay) * 1000 // zone.rate
            if ms > best.delay_ms:
                best = ReqDecision(excess=exc, delay_ms=ms, zone=zone.name)
    except _Unavailable as exc:
        return ReqDecision(rejected=exc.zone, unavailable=True)
    return best


class RedisZones:
    """The zones kept in Redis of one worker process, by name and address, with one
    :class:`Link` per Redis.  The owner id is this process's."""

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
            link = self.links[server] = Link(server, self.owner, self._loop, self._clock)
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
            health = _Health("limit_conn", spec.name, spec.redis, self._log, self._clock)
            zone = RedisConnZone(spec.name, self._link(spec.redis), health)
            self.conn[spec.name, spec.redis] = zone
        zone.health.closed = spec.redis_fail_closed  # a reload may change it
        return zone

    def req_zone(self, spec: LimitReqZone) -> RedisReqZone:
        assert spec.redis is not None
        zone = self.req.get((spec.name, spec.redis))
        if zone is None:
            health = _Health("limit_req", spec.name, spec.redis, self._log, self._clock)
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
