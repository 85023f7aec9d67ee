"""nginx's balancing methods over :mod:`wsgate.upstream.roundrobin`'s peers.

https://nginx.org/en/docs/http/ngx_http_upstream_module.html — ``least_conn``, ``ip_hash``,
``hash KEY [consistent]``, ``random [two [least_conn]]`` — following
``src/http/modules/ngx_http_upstream_{least_conn,ip_hash,hash,random}_module.c``
(NGINX-SEMANTICS.md §7).  Pure: the clock and the random generator are injected.

Every method is a :class:`Balancer` (a :class:`~wsgate.upstream.roundrobin.PeerGroup`)
whose :meth:`Balancer.start` takes the request's balancing key and returns a
:class:`~wsgate.upstream.roundrobin.Selection` subclass, so the proxy keeps calling
``next``/``fail``/``succeed``/``release``/``tries`` unchanged::

    group = make_group(upstream.name, peers_from_config(upstream.servers), upstream)
    sel = group.start(group.key(ctx))

Each subclass replaces only round robin's ``_get_peer`` (one tier's choice), so these stay
shared with round robin exactly as nginx shares ``ngx_http_upstream_rr_peer_data_t``: the
tried set (also used by the round-robin fallback), ``tries``, failure accounting in
``fail``/``succeed``, ``conns`` and ``max_conns``, the single-server case, and the fall-over
to ``backup`` servers (allowed only with round robin and ``least_conn``; the loader rejects
it for the others).  A peer is eligible when it is not yet tried, not ``down``, ``healthy``
(wsgate's active check), not failed within ``fail_timeout`` and below ``max_conns``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from wsgate.config.model import Upstream
from wsgate.config.template import Template
from wsgate.upstream.hashing import (
    IP_HASH_SEED,
    Ring,
    build_ring,
    hash_step,
    ip_hash_key,
    ip_hash_step,
    key_bytes,
)
from wsgate.upstream.roundrobin import Peer, PeerGroup, Selection, eligible, smooth_pick

__all__ = [
    "MAX_HASH_TRIES",
    "Balancer",
    "ConsistentHash",
    "Hash",
    "IpHash",
    "KeySource",
    "LeastConn",
    "Random",
    "RoundRobin",
    "make_group",
]

Clock = Callable[[], float]

#: The hash, ip_hash and random loops give up after this many unusable picks per request
#: and use round robin instead (``if (++hp->tries > 20) return hp->get_rr_peer(...)``).
MAX_HASH_TRIES = 20


class KeySource(Protocol):
    """What a balancer reads from a request (:class:`wsgate.config.variables.RequestContext`)."""

    remote_addr: str

    def lookup(self, name: str) -> str: ...


def _walk(peers: Sequence[Peer], w: int) -> int:
    """The index whose weight range holds ``w`` (``while (w >= peer->weight) ...``)."""
    i = 0
    while w >= peers[i].weight:
        w -= peers[i].weight
        i += 1
    return i


def _no_backups(group: Balancer) -> None:
    # "This parameter cannot be used along with the hash, ip_hash, and random load balancing
    # methods." (``backup``); the loader reports it with file:line, this guards direct use.
    if group.backups:
        raise ValueError(f"balancing method {group.method!r} does not support backup servers")


# -- the groups ---------------------------------------------------------------------------------
class Balancer(PeerGroup):
    """A :class:`PeerGroup` with a balancing method; ``start(key)`` begins one request.

    ``method`` is the ``upstream`` block's method name (``round_robin`` by default).
    """

    __slots__ = ()
    method = "round_robin"

    def key(self, ctx: KeySource) -> str | None:
        """The balancing key for a request, or ``None`` when the method needs none."""
        return None

    def start(self, key: str | None = None) -> Selection:
        return Selection(self)


class RoundRobin(Balancer):
    """Round robin: "By default, requests are distributed between the servers using a
    weighted round-robin balancing method" — :class:`Selection` itself."""

    __slots__ = ()


class LeastConn(Balancer):
    """``least_conn``: "a request is passed to the server with the least number of active
    connections, taking into account weights of servers.  If there are several such servers,
    they are tried in turn using a weighted round-robin balancing method."

    Active connections are ``Peer.conns``: in-flight requests and open tunnels.
    """

    __slots__ = ()
    method = "least_conn"

    def start(self, key: str | None = None) -> Selection:
        return _LeastConnSelection(self)


class _LeastConnSelection(Selection):
    __slots__ = ()

    def _get_peer(self, now: int) -> Peer | None:
        # ngx_http_upstream_get_least_conn_peer: the lowest conns/weight (cross-multiplied);
        # on a tie, smooth WRR over the tied peers starting from the first of them.
        tier, tried = self._tier, self._tried
        best: Peer | None = None
        best_i = 0
        many = False
        for i, p in enumerate(tier):
            if tried >> i & 1 or not eligible(p, now):
                continue
            if best is None or p.conns * best.weight < best.conns * p.weight:
                best, best_i, many = p, i, False
            elif p.conns * best.weight == best.conns * p.weight:
                many = True
        if best is None:
            return None
        total = 0
        if many:
            first = best
            for i in range(best_i, len(tier)):
                p = tier[i]
                if tried >> i & 1 or p.conns * first.weight != first.conns * p.weight:
                    continue
                if not eligible(p, now):
                    continue
                p.current_weight += p.effective_weight
                total += p.effective_weight
                if p.effective_weight < p.weight:
                    p.effective_weight += 1
                if p.current_weight > best.current_weight:
                    best, best_i = p, i
        best.current_weight -= total
        self._tried |= 1 << best_i
        if now - best.checked > best.fail_timeout:
            best.checked = now
        return best


class IpHash(Balancer):
    """``ip_hash``: "The first three octets of the client IPv4 address, or the entire IPv6
    address, are used as a hashing key.  The method ensures that requests from the same
    client will always be passed to the same server except when this server is unavailable."

    The key is ``$remote_addr``; ``down`` servers keep their place in the modulus ("If one of
    the servers needs to be temporarily removed, it should be marked with the down parameter
    in order to preserve the current hashing of client IP addresses").
    """

    __slots__ = ("total_weight",)
    method = "ip_hash"

    def __init__(self, name: str, peers: Sequence[Peer], clock: Clock = time.monotonic) -> None:
        super().__init__(name, peers, clock=clock)
        _no_backups(self)
        self.total_weight = sum(p.weight for p in self.peers)

    def key(self, ctx: KeySource) -> str | None:
        return ctx.remote_addr

    def start(self, key: str | None = None) -> Selection:
        """``key``: the client address text; ``None`` hashes like a unix-domain client."""
        return _IpHashSelection(self, ip_hash_key(key or ""))


class _IpHashSelection(Selection):
    __slots__ = ("_addr", "_hash", "_hash_tries")

    def __init__(self, group: IpHash, addr: bytes) -> None:
        super().__init__(group)
        self._addr = addr
        self._hash = IP_HASH_SEED
        self._hash_tries = 0

    def _get_peer(self, now: int) -> Peer | None:
        # ngx_http_upstream_get_ip_hash_peer; the hash carries over to a retry.
        if self._hash_tries > MAX_HASH_TRIES:
            return super()._get_peer(now)
        assert isinstance(self.group, IpHash)
        total = self.group.total_weight
        tier = self._tier
        h = self._hash
        while True:
            h = ip_hash_step(h, self._addr)
            i = _walk(tier, h % total)
            if not self._tried >> i & 1 and eligible(tier[i], now):
                break
            self._hash_tries += 1
            if self._hash_tries > MAX_HASH_TRIES:
                return super()._get_peer(now)
        self._hash = h
        return self._take(i, now)


class Hash(Balancer):
    """``hash KEY``: "the client-server mapping is based on the hashed key value.  The key
    can contain text, variables, and their combinations."

    The hash is Cache::Memcached's; an empty key means round robin, as in nginx.
    """

    __slots__ = ("hash_key", "total_weight")
    method = "hash"

    def __init__(
        self,
        name: str,
        peers: Sequence[Peer],
        hash_key: Template | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(name, peers, clock=clock)
        _no_backups(self)
        self.hash_key = hash_key
        self.total_weight = sum(p.weight for p in self.peers)

    def key(self, ctx: KeySource) -> str | None:
        return self.hash_key.render(ctx.lookup) if self.hash_key is not None else None

    def start(self, key: str | None = None) -> Selection:
        """``key``: the rendered ``hash`` key; empty or ``None`` selects by round robin."""
        if not key:
            return Selection(self)
        return _HashSelection(self, key_bytes(key))


class _HashSelection(Selection):
    __slots__ = ("_key", "_hash", "_rehash", "_hash_tries")

    def __init__(self, group: Hash, key: bytes) -> None:
        super().__init__(group)
        self._key = key
        self._hash = 0
        self._rehash = 0
        self._hash_tries = 0

    def _get_peer(self, now: int) -> Peer | None:
        # ngx_http_upstream_get_hash_peer; hash and rehash carry over to a retry.
        if self._hash_tries > MAX_HASH_TRIES:
            return super()._get_peer(now)
        assert isinstance(self.group, Hash)
        total = self.group.total_weight
        tier = self._tier
        while True:
            self._hash = (self._hash + hash_step(self._key, self._rehash)) & 0xFFFFFFFF
            self._rehash += 1
            i = _walk(tier, self._hash % total)
            if not self._tried >> i & 1 and eligible(tier[i], now):
                return self._take(i, now)
            self._hash_tries += 1
            if self._hash_tries > MAX_HASH_TRIES:
                return super()._get_peer(now)


class ConsistentHash(Hash):
    """``hash KEY consistent``: "the ketama consistent hashing method will be used instead.
    This method ensures that only a few keys will be remapped to different servers when a
    server is added to or removed from the group."

    The ring is nginx's (see :func:`wsgate.upstream.hashing.build_ring`), so wsgate and
    nginx map each key to the same ``server`` line.
    """

    __slots__ = ("ring",)
    method = "hash consistent"

    def __init__(
        self,
        name: str,
        peers: Sequence[Peer],
        hash_key: Template | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(name, peers, hash_key, clock)
        self.ring: Ring = build_ring((p.name or p.address, p.weight) for p in self.peers)

    def start(self, key: str | None = None) -> Selection:
        if not key or not self.ring:
            return Selection(self)
        data = key_bytes(key)
        return _ConsistentSelection(self, self.ring.find(data))


class _ConsistentSelection(Selection):
    __slots__ = ("_point", "_hash_tries")

    def __init__(self, group: ConsistentHash, point: int) -> None:
        super().__init__(group)
        self._point = point
        self._hash_tries = 0

    def _get_peer(self, now: int) -> Peer | None:
        # ngx_http_upstream_get_chash_peer: the peers written as the point's server, by
        # smooth WRR among them; none eligible: the next point (the point carries over).
        if self._hash_tries > MAX_HASH_TRIES:
            return super()._get_peer(now)
        assert isinstance(self.group, ConsistentHash)
        ring = self.group.ring
        while True:
            name = ring.names[self._point % len(ring)]
            i = smooth_pick(self._tier, self._tried, now, name)
            if i >= 0:
                return self._take(i, now)
            self._point += 1
            self._hash_tries += 1
            if self._hash_tries > MAX_HASH_TRIES:
                return super()._get_peer(now)


class Random(Balancer):
    """``random [two [least_conn]]``: "a request is passed to a randomly selected server,
    taking into account weights of servers.  The optional two parameter instructs nginx to
    randomly select two servers and then choose a server using the specified method.  The
    default method is least_conn which passes a request to a server with the least number of
    active connections."

    ``rng`` is injectable (``random.Random``); nginx uses ``random()``.
    """

    __slots__ = ("two", "rng", "ranges", "total_weight")
    method = "random"

    def __init__(
        self,
        name: str,
        peers: Sequence[Peer],
        two: bool = False,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(name, peers, clock=clock)
        _no_backups(self)
        self.two = two
        self.rng = rng if rng is not None else random.Random()
        ranges: list[int] = []
        total = 0
        for p in self.peers:  # ngx_http_upstream_update_random: down peers included
            ranges.append(total)
            total += p.weight
        self.ranges: tuple[int, ...] = tuple(ranges)
        self.total_weight = total

    def peek(self) -> int:
        """``ngx_http_upstream_peek_random_peer``: a weighted draw, as a peer index."""
        x = self.rng.randrange(self.total_weight)
        i, j = 0, len(self.ranges)
        while j - i > 1:
            k = (i + j) // 2
            if x < self.ranges[k]:
                j = k
            else:
                i = k
        return i

    def start(self, key: str | None = None) -> Selection:
        return _Random2Selection(self) if self.two else _RandomSelection(self)


class _RandomSelection(Selection):
    __slots__ = ("_hash_tries",)

    def __init__(self, group: Random) -> None:
        super().__init__(group)
        self._hash_tries = 0

    def _get_peer(self, now: int) -> Peer | None:
        # ngx_http_upstream_get_random_peer
        if self._hash_tries > MAX_HASH_TRIES:
            return super()._get_peer(now)
        assert isinstance(self.group, Random)
        group, tier = self.group, self._tier
        while True:
            i = group.peek()
            if not self._tried >> i & 1 and eligible(tier[i], now):
                return self._take(i, now)
            self._hash_tries += 1
            if self._hash_tries > MAX_HASH_TRIES:
                return super()._get_peer(now)


class _Random2Selection(_RandomSelection):
    __slots__ = ()

    def _get_peer(self, now: int) -> Peer | None:
        # ngx_http_upstream_get_random2_peer: two distinct eligible draws; the second wins
        # unless it has more conns per weight than the first.
        if self._hash_tries > MAX_HASH_TRIES:
            return Selection._get_peer(self, now)
        assert isinstance(self.group, Random)
        group, tier = self.group, self._tier
        prev = -1
        while True:
            i = group.peek()
            if i != prev and not self._tried >> i & 1 and eligible(tier[i], now):
                if prev >= 0:
                    p, q = tier[i], tier[prev]
                    if p.conns * q.weight > q.conns * p.weight:
                        i = prev
                    return self._take(i, now)
                prev = i
            self._hash_tries += 1
            if self._hash_tries > MAX_HASH_TRIES:
                return Selection._get_peer(self, now)


# -- construction -------------------------------------------------------------------------------
def make_group(
    name: str,
    peers: Sequence[Peer],
    upstream: Upstream | None = None,
    clock: Clock = time.monotonic,
    rng: random.Random | None = None,
) -> Balancer:
    """The :class:`Balancer` for an ``upstream`` block's method (``None``: an implicit
    ``proxy_pass`` host, which nginx balances by round robin)."""
    method = upstream.method if upstream is not None else "round_robin"
    if upstream is None or method == "round_robin":
        return RoundRobin(name, peers, clock=clock)
    if method == "least_conn":
        return LeastConn(name, peers, clock=clock)
    if method == "ip_hash":
        return IpHash(name, peers, clock=clock)
    if method == "hash":
        cls = ConsistentHash if upstream.consistent else Hash
        return cls(name, peers, upstream.hash_key, clock=clock)
    if method == "random":
        return Random(name, peers, two=upstream.random_two, clock=clock, rng=rng)
    raise ValueError(f"unknown balancing method {method!r}")
