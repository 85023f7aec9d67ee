"""One worker's link to one Redis, for the limit zones kept there (:mod:`wsgate.limits_redis`):
one ordered stream of commands, the failures and their backoff, the error log's lines, and
redis-py's client.

Every command of a worker to one Redis goes through one ordered stream (:class:`Link`): it
is sent in batches, one pipeline per round trip, and a batch is sent only when the one
before it has answered.  The dirty keys' rewrites are computed when a batch is made and go
first in it, so every acquire they could overlap has been answered and counted: a rewrite
can never undo a concurrent acquire, and the count in Redis is exact, not eventually so.

Failures (connection refused, no such socket, a timeout, an error reply): a round trip that
has not answered in :data:`TIMEOUT` seconds (connecting and loading the scripts included)
fails; a request waits at most twice that (its batch and the one in flight before it).
After a failure the link is *down* for :data:`RETRY_AFTER` seconds: requests do not wait
on Redis at all, then the next one (or the reconcile timer) connects again.  While it fails,
a zone with ``redis_fail=open`` (the default, like Envoy's rate-limit filter with
``failure_mode_deny: false``) lets requests pass uncounted, and one with ``redis_fail=closed``
answers ``limit_conn_status``/``limit_req_status``.  Each zone logs at most one ``[error]``
line every :data:`LOG_EVERY` seconds (``redis limit_conn zone "NAME" at ADDRESS
unreachable: REASON, failing open``), and a ``[notice]`` when Redis answers again
(:class:`Health`); a Redis failure is never an ``[alert]``.  A slot released while Redis is
down stays dirty until a rewrite succeeds: no slot leaks, in Redis or here.  A worker that
exits gives back what it held (:meth:`Link.close`, through
:meth:`wsgate.limits_redis.RedisZones.close`, from :func:`wsgate.server.worker.serve`); one
that is killed leaves it to its liveness key's TTL.

The ``redis`` package (``redis.asyncio``, redis-py) is imported when a link first connects
(:func:`_new_client`), so a configuration without ``redis=`` neither imports nor pays for it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from wsgate.config.model import RedisServer

if TYPE_CHECKING:
    from wsgate.limits_redis import RedisConnZone
    from wsgate.observability.logs import ErrorLogger
    from wsgate.redis_shed import Recovery

__all__ = [
    "LOG_EVERY",
    "OWNER_PREFIX",
    "OWNER_TTL_MS",
    "PREFIX",
    "RECONCILE_EVERY",
    "RETRY_AFTER",
    "REWRITES_PER_BATCH",
    "TIMEOUT",
    "Clock",
    "Done",
    "Health",
    "Link",
    "Op",
    "RedisDown",
    "failure_reason",
    "ignore",
    "live_total",
    "script_sha",
]

#: Seconds a round trip to Redis may take (connecting included) before it counts as failed.
TIMEOUT = 0.5
#: Seconds after a failure during which requests do not wait on Redis (then it is tried again).
RETRY_AFTER = 1.0
#: Seconds between two rewrites of the counts a worker holds (and of its liveness key).
RECONCILE_EVERY = 1.0
#: An owner's liveness key lives this long unless refreshed: a crashed node's slots vanish then.
OWNER_TTL_MS = 5000
#: At most one "unreachable" line per zone this often (seconds).
LOG_EVERY = 10.0
#: Keys rewritten per batch at most (the rest in the next ones): a worker holding many keys
#: sends its reconcile in round trips that each stay well within :data:`TIMEOUT`.
REWRITES_PER_BATCH = 1000

#: Every key wsgate keeps in Redis starts with this.
PREFIX = "wsgate:"
#: An owner's liveness key is this and the owner's id.
OWNER_PREFIX = PREFIX + "owner:"

#: What a command's answer is handed to: the reply, or an exception (never raises).
Done = Callable[[Any], None]
Op = tuple[tuple[Any, ...], Done]
Clock = Callable[[], float]


class RedisDown(Exception):
    """Redis did not answer a command: unreachable, timed out, or an error reply."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def script_sha(text: str) -> str:
    """The SHA-1 ``EVALSHA`` names a script by (Redis's ``SCRIPT LOAD`` gives the same)."""
    return hashlib.sha1(text.encode()).hexdigest()


def live_total(prefix_argv: int) -> str:
    """Lua: ``total``, the slots a ``limit_conn`` key's hash (``KEYS[1]``) holds for the live
    owners, and ``mine``, this owner's (``ARGV[1]``); the fields of an owner whose liveness
    key (``ARGV[prefix_argv]`` and its id) is gone are dropped (a crashed node).  The start
    of :data:`wsgate.limits_redis.CONN_ACQUIRE` and :data:`wsgate.redis_shed.CONN_TRIM`."""
    return f"""
local fields = redis.call('HGETALL', KEYS[1])
local total, mine = 0, 0
for i = 1, #fields, 2 do
  local owner = fields[i]
  local held = tonumber(fields[i + 1])
  if owner == ARGV[1] then
    mine = held
    total = total + held
  elseif redis.call('EXISTS', ARGV[{prefix_argv}] .. owner) == 1 then
    total = total + held
  else
    redis.call('HDEL', KEYS[1], owner)
  end
end
"""


def ignore(reply: Any) -> None:
    return None


def failure_reason(exc: BaseException) -> str:
    """What the error log says a failure was."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError) and not str(exc):
        return f"timed out ({TIMEOUT * 1000:.0f} ms)"
    return (str(exc) or type(exc).__name__).rstrip(".")


class Health:
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
    starts with the rewrites of every :class:`~wsgate.limits_redis.RedisConnZone`'s dirty
    keys (and this owner's liveness key), made when the batch is, then, in a recovery
    window's rounds, the trims of the keys acquired since the failure began
    (:class:`~wsgate.redis_shed.Recovery`, made by ``recovery`` from this link).  Each new
    connection loads ``scripts`` before anything else is sent."""

    __slots__ = (
        "server",
        "owner",
        "loop",
        "_clock",
        "_scripts",
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
        "recovery",
    )

    def __init__(
        self,
        server: RedisServer,
        owner: str,
        loop: asyncio.AbstractEventLoop,
        clock: Clock,
        scripts: Sequence[str],
        recovery: Callable[[Link], Recovery],
    ) -> None:
        self.server = server
        self.owner = owner
        self.loop = loop
        self._clock = clock
        self._scripts = tuple(scripts)
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
        #: The recovery window after a failure or a new connection.
        self.recovery = recovery(self)

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

    # -- the reconcile timer ---------------------------------------------------------------
    def arm(self, delay: float = RECONCILE_EVERY) -> None:
        """Keep the reconcile timer running (a zone holds a slot or has a dirty key)."""
        if self._timer is None:
            self._timer = self.loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        """Every :data:`RECONCILE_EVERY` s while something is held: rewrite it all, and the
        liveness key; while the link is down, again as soon as it may be tried."""
        self._timer = None
        self._rewrite_all()
        busy = any(zone.dirty for zone in self.conn_zones)  # counts are dirty now
        recovery = self.recovery
        if not busy:
            if recovery.due:
                recovery.round()  # nothing held, nothing to trim: the window runs on
                self.arm()
            return
        self._refresh = True
        wait = self.down_until - self._clock()
        if wait > 0:
            recovery.forget_released()
            self.arm(min(wait + 0.01, RECONCILE_EVERY))
            return
        if recovery.due:
            recovery.round()
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
        ops += self.recovery.trims(budget)  # after every rewrite: this owner's fields are true
        if ops or self._refresh:
            self._refresh = False
            key = OWNER_PREFIX + self.owner
            ops.insert(0, (("SET", key, "1", "PX", OWNER_TTL_MS), ignore))
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
                    self._failed(failure_reason(exc))
                    _fail(batch, self.reason)
                    batch = []
                    continue
                done, batch = batch, []
                if fresh or self.broken:
                    # Answered on a new connection (after a failure, after Redis lost its
                    # scripts, or the first: a Redis restarted a moment ago cannot be told
                    # from one that was not): the recovery window opens.
                    self.broken = False
                    self.recovery.open()
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
            await _load_scripts(client, self._scripts)
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
            ops += [(("HDEL", zone.hash_key(k), self.owner), ignore) for k in zone.held_keys()]
            zone.counts.clear()
            zone.dirty.clear()
        self.recovery.close()
        if self._writer is not None:
            await asyncio.wait([self._writer], timeout=TIMEOUT)
        if self.conn_zones and not self.down and self._writer is None:
            ops.append((("DEL", OWNER_PREFIX + self.owner), ignore))
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
        self.recovery.failed()
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
    if server.password:  # redis_auth=FILE: redis-py sends AUTH [username] password
        options["password"] = server.password
        if server.username:
            options["username"] = server.username
    if server.path:
        return Redis(unix_socket_path=server.path, **options)
    return Redis(host=server.host, port=server.port, **options)


async def _load_scripts(client: Any, scripts: Sequence[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for text in scripts:
        pipe.script_load(text)
    for text, sha in zip(scripts, await pipe.execute(), strict=True):
        got = sha.decode() if isinstance(sha, bytes) else str(sha)
        if got != script_sha(text):  # pragma: no cover - Redis hashes scripts with SHA-1
            raise RedisDown(f"SCRIPT LOAD gave {got}")


async def _close(client: Any) -> None:
    try:
        close = getattr(client, "aclose", None) or client.close
        await asyncio.wait_for(close(), 1.0)
    except Exception:  # a connection that failed may fail to close too
        pass
