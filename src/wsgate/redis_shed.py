"""Shedding after a recovery: a ``limit_conn`` zone kept in Redis (:mod:`wsgate.limits_redis`)
closes the tunnels admitted over its limit while Redis was away.

While Redis is away, ``redis_fail=open`` admits every opening uncounted, and just after it is
back (empty, after a restart) the first acquires see only the counts already rewritten; so a
key can end up over its limit fleet-wide, and the rewrites alone stop new openings but do not
end the tunnels admitted meanwhile.  So each worker keeps the keys it acquired since a
failure began (:attr:`~wsgate.limits_redis.RedisConnZone.suspect`: those admitted while
failing open, and those acquired while the window below is open).  When its link
(:class:`~wsgate.redis_link.Link`) answers on a new connection (after a failure; after Redis
lost its scripts, a restart seen without a failure, through a proxy or a reconnect redis-py
made by itself; or its first connection, since a Redis restarted a moment ago cannot be told
from one that was not), a window of :data:`SHED_ROUNDS` reconcile rounds opens (about 3 s:
every node's rewrite, made by its first batch after it reconnected, within
:data:`~wsgate.redis_link.RETRY_AFTER` of Redis's return, has landed by the second).  In each
of its rounds, after the rewrites of the batch, the worker sends one :data:`CONN_TRIM` script
per suspect key it still holds: it sums the live owners' fields as the acquire does, and
lowers this owner's field at once by ``n = min(total - limit, mine)``, so the other owners
running it after see the reduced total and the fleet does not shed more than its excess.  The
limit is the smallest ``limit_conn N`` among the worker's holders of the key (a zone may be
used with different N in different locations); a holder in a ``limit_conn_dry_run`` location
is never closed.  The worker then ends its ``n`` newest holders of the key
(:meth:`Recovery.shed`): a WebSocket tunnel, over HTTP/1.1 or an HTTP/2 stream (RFC 8441),
gets a Close 1013 "try again later" both ways at its frame boundaries
(:meth:`wsgate.proxy.tunnel.Tunnel.going_away`), and its slot counts as given back from then
on (the per-second rewrite does not count it again while it closes; its release when it ends
changes nothing more).  A request that is not a tunnel (a plain request, or an upgrade whose
101 has not come) is not cut: its part of ``n`` is written back by the next rewrite, and the
window is extended by a round (up to :data:`SHED_ROUNDS_MOST`) to try again.  Each zone logs
one ``[warn]`` line per round that closed tunnels: ``closing N websocket tunnel(s) over the
limit of zone "NAME" after redis recovered``.  A ``redis_fail=closed`` zone admits nothing
while Redis is away: only the acquires made in the window are checked.  Without a failure
nothing is ever closed: a key within its limit fleet-wide (as the acquire keeps it) trims to
nothing, and after a worker's first window no trim is sent at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wsgate.proxy.frames import TRY_AGAIN_LATER
from wsgate.redis_link import OWNER_PREFIX, Done, Op, failure_reason, live_total, script_sha

if TYPE_CHECKING:
    from wsgate.limits_redis import RedisConnZone
    from wsgate.proxy.tunnel import Tunnel
    from wsgate.redis_link import Link

__all__ = [
    "CONN_TRIM",
    "HELD",
    "RELEASED",
    "SHED",
    "SHED_ROUNDS",
    "SHED_ROUNDS_MOST",
    "Recovery",
    "RedisSlot",
]

#: Reconcile rounds after Redis answers on a new connection (after a failure, once it lost
#: its scripts, or the first) in which a worker trims the keys it acquired since the failure
#: began (:data:`CONN_TRIM`): 3, so that every node's rewrite has landed before the last.
SHED_ROUNDS = 3
#: A round whose trim left a holder that is not a tunnel (yet) extends the window by one,
#: up to this many rounds in all.
SHED_ROUNDS_MOST = 10

#: ``limit_conn``'s trim, after a recovery.  KEYS: the key's hash.  ARGV: the owner, the
#: limit, the liveness keys' prefix.  The live owners' total as
#: :data:`~wsgate.limits_redis.CONN_ACQUIRE` sums it (the same Lua,
#: :func:`~wsgate.redis_link.live_total`: dead owners dropped); this owner's
#: field lowered at once by ``min(total - limit, mine)``, which is returned (0: within the
#: limit).
CONN_TRIM = (
    live_total(3)
    + """
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
)

_TRIM_SHA = script_sha(CONN_TRIM)

#: A :class:`RedisSlot`'s states: held; closed over the limit (given back in the count
#: already, its tunnel closing); released (its request or tunnel ended).
HELD, SHED, RELEASED = 0, 1, 2


class RedisSlot:
    """One slot of a :class:`~wsgate.limits_redis.RedisConnZone` held by one request, then
    by its tunnel: what the request keeps in ``conn_slots`` next to the key (a
    :class:`~wsgate.limits.SlotHolder`), so that the zone finds the tunnel to close when
    the key is over its limit after a recovery (:meth:`Recovery.shed`).  Only zones kept in
    Redis make these; a local zone's holder is the zone itself."""

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


class Recovery:
    """The recovery window of one :class:`~wsgate.redis_link.Link` (see the module's
    docstring), over the link's ``limit_conn`` zones: which rounds are left, the trims a
    round adds to the link's batch, and the tunnels closed when a trim answers.  The keys to
    check are each zone's (``suspect``, and ``to_trim`` within a round)."""

    __slots__ = ("link", "shed_rounds", "_rounds")

    def __init__(self, link: Link) -> None:
        self.link = link
        #: Reconcile rounds left in the window (0: no window).
        self.shed_rounds = 0
        #: Rounds of the window so far (:data:`SHED_ROUNDS_MOST`).
        self._rounds = 0

    @property
    def suspicious(self) -> bool:
        """A slot taken now may put its key over the limit fleet-wide: Redis is failing, or
        answers again since less than the window (the fleet's counts may not all be back)."""
        return self.link.broken or self.shed_rounds > 0

    @property
    def due(self) -> bool:
        """The reconcile timer's tick runs a round of the window."""
        return self.shed_rounds > 0 and not self.link.broken

    # -- the window's rounds, driven by the link ------------------------------------------
    def open(self) -> None:
        """Redis answers on a new connection (after a failure, after it lost its scripts,
        or the first): open the window."""
        self.shed_rounds = SHED_ROUNDS
        self._rounds = 0
        self.link.arm()  # the window's rounds run even while nothing is held

    def extend(self) -> None:
        """A trim left holders not cut (requests that are not tunnels yet): one more round,
        within :data:`SHED_ROUNDS_MOST`."""
        if not self.link.broken and self._rounds < SHED_ROUNDS_MOST:
            self.shed_rounds = max(self.shed_rounds, 1)
            self.link.arm()

    def round(self) -> None:
        """One round of the window: each zone's suspect keys still held are trimmed in the
        batch this tick makes (after its rewrites); the last round forgets them."""
        self.shed_rounds -= 1
        self._rounds += 1
        for zone in self.link.conn_zones:
            zone.suspect.intersection_update(zone.holders)
            zone.to_trim = list(zone.suspect)
            if not self.shed_rounds:
                zone.suspect = set()

    def forget_released(self) -> None:
        """While the link is down: forget the suspect keys no longer held."""
        for zone in self.link.conn_zones:
            if zone.suspect:
                zone.suspect.intersection_update(zone.holders)

    def failed(self) -> None:
        """A round trip failed: a window under way starts again once Redis answers (its
        suspect keys are kept, those of the round in flight too)."""
        self.shed_rounds = 0
        for zone in self.link.conn_zones:
            zone.suspect.update(zone.to_trim)
            zone.to_trim = []

    def close(self) -> None:
        self.shed_rounds = 0
        for zone in self.link.conn_zones:
            zone.suspect = set()
            zone.to_trim = []

    # -- the trims and what they shed ------------------------------------------------------
    def trims(self, budget: int) -> list[Op]:
        """This round's trims not sent yet, ``budget`` keys at most (the rest in the next
        batches), for the batch the link is making after its rewrites."""
        ops: list[Op] = []
        for zone in self.link.conn_zones:
            if zone.to_trim and budget > 0:
                keys = zone.to_trim[:budget]
                del zone.to_trim[:budget]
                budget -= len(keys)
                ops += self.trim(zone, keys)
        return ops

    def trim(self, zone: RedisConnZone, keys: list[str]) -> list[Op]:
        """The :data:`CONN_TRIM` of each of ``keys`` this worker still holds, with the
        smallest ``limit_conn N`` among its holders (dry-run holders have none)."""
        ops: list[Op] = []
        owner = self.link.owner
        for key in keys:
            limits = [s.limit for s in zone.holders.get(key, ()) if s.state == HELD and s.limit]
            if limits:
                name = zone.hash_key(key)
                args = ("EVALSHA", _TRIM_SHA, 1, name, owner, min(limits), OWNER_PREFIX)
                ops.append((args, self._trimmed(zone, key)))
        return ops

    def _trimmed(self, zone: RedisConnZone, key: str) -> Done:
        def done(reply: Any) -> None:
            if isinstance(reply, Exception):
                zone.suspect.add(key)  # trimmed in the next window
                zone.health.down(failure_reason(reply))
            else:
                zone.health.up()
                if int(reply) > 0:
                    self.shed(zone, key, int(reply))

        return done

    def shed(self, zone: RedisConnZone, key: str, n: int) -> int:
        """The trim lowered this worker's field of ``key`` by ``n``: close the tunnels among
        its ``n`` newest holders with a Close 1013 (their slots count as given back from
        now on), and return how many.  A holder that is not a tunnel, or in a dry-run
        location, is not cut: the next rewrite writes its slot back and the window gets
        one more round for it."""
        held = [s for s in zone.holders.get(key, ()) if s.state == HELD]
        cut = 0
        for slot in reversed(held[-n:]):  # the newest first
            tunnel = slot.tunnel
            if tunnel is None or not slot.limit:
                continue
            slot.state = SHED
            zone.release(key)  # one slot less here, and the key's field rewritten
            tunnel.going_away(TRY_AGAIN_LATER)  # its release, later, changes no count
            cut += 1
        zone.dirty.add(key)  # the field as this worker holds it now (what was not cut)
        self.link.kick()
        if cut < n:
            zone.suspect.add(key)
            self.extend()
        if cut:
            if not zone.shed_count:
                self.link.loop.call_soon(self._log_shed, zone)
            zone.shed_count += cut
        return cut

    def _log_shed(self, zone: RedisConnZone) -> None:
        n, zone.shed_count = zone.shed_count, 0
        zone.health.log(
            "warn",
            f'closing {n} websocket tunnel(s) over the limit of zone "{zone.name}" '
            "after redis recovered",
        )
