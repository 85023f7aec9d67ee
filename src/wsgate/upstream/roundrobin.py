"""nginx's smooth weighted round robin with passive health accounting.

Pure and single-threaded (one :class:`PeerGroup` per worker, like nginx's per-worker peer
state without a shared zone); time comes from an injected clock and, as in nginx, is compared
in whole seconds.  Follows ``src/http/ngx_http_upstream_round_robin.c``
(``ngx_http_upstream_get_peer``, ``ngx_http_upstream_free_round_robin_peer``) and
https://nginx.org/en/docs/http/ngx_http_upstream_module.html#server; see NGINX-SEMANTICS.md §7.

Per request the caller does::

    sel = group.start()
    peer = sel.next()            # None: "no live upstreams" (502)
    ... connect; on error:  if sel.fail(peer): log warn "upstream server temporarily disabled"
                            then, if sel.tries and proxy_next_upstream allows, sel.next() again
    ... on success:         sel.succeed(peer); when the connection closes: sel.release(peer)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from wsgate.config.model import UpstreamServer

__all__ = ["Peer", "PeerGroup", "Selection", "eligible", "peers_from_config", "smooth_pick"]

Clock = Callable[[], float]


@dataclass(slots=True, eq=False)
class Peer:
    """One upstream address and its shared runtime state (``ngx_http_upstream_rr_peer_t``).

    "By default, requests are distributed between the servers using a weighted round-robin
    balancing method" (upstream module).  Defaults are nginx's: ``weight=1 max_fails=1
    fail_timeout=10s max_conns=0``.  ``eq=False``: peers are compared by identity.
    """

    address: str
    host: str
    port: int
    weight: int = 1
    max_fails: int = 1
    fail_timeout: float = 10.0
    down: bool = False
    backup: bool = False
    max_conns: int = 0
    #: ``drain`` (nginx 1.29.6+): "only requests bound to the server will be proxied to it";
    #: wsgate binds none, so a draining peer takes no new connection (set from the server
    #: line and at run time by :mod:`wsgate.server.control`).
    drain: bool = False
    #: The ``server`` address as written in the configuration (``unix:/path`` for a socket);
    #: the consistent-hash ring is built from it, as in nginx.
    name: str = ""
    #: The group's name (set by :class:`PeerGroup`): drains name a server by it and address.
    upstream: str = ""
    #: False while an active ``health_check`` holds the peer out of rotation.
    healthy: bool = field(default=True, init=False)
    current_weight: int = field(default=0, init=False)
    effective_weight: int = field(default=0, init=False)
    fails: int = field(default=0, init=False)
    #: Whole seconds of the last failure.
    accessed: int = field(default=0, init=False)
    #: Whole seconds of the last failure, or of the first pick after ``fail_timeout``.
    checked: int = field(default=0, init=False)
    conns: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.effective_weight = self.weight

    def connection_closed(self) -> None:
        """One connection picked for this peer has ended: ``conns``-- (never below 0)."""
        if self.conns > 0:
            self.conns -= 1

    def __str__(self) -> str:
        return self.address


def _display(server: UpstreamServer) -> str:
    if server.is_unix:
        return server.address
    host, port = server.host, server.port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peers_from_config(servers: Iterable[UpstreamServer]) -> list[Peer]:
    """Peers for ``upstream`` servers (or a ``proxy_pass`` host's addresses), in config order,
    with every parameter of the ``server`` line."""
    return [
        Peer(
            address=_display(s),
            host=s.host,
            port=s.port,
            weight=s.weight,
            max_fails=s.max_fails,
            fail_timeout=s.fail_timeout,
            down=s.down,
            backup=s.backup,
            max_conns=s.max_conns,
            drain=s.drain,
            name=s.address,
        )
        for s in servers
    ]


def eligible(p: Peer, now: int) -> bool:
    """nginx's checks, in its order, less the tried set: ``down`` (draining included: nginx
    stores ``drain`` as a ``down`` value), then "max_fails unsuccessful attempts ... during
    the time set by the fail_timeout", then ``max_conns``; plus wsgate's active-check
    ``healthy``."""
    if p.down or p.drain or not p.healthy:
        return False
    if p.max_fails and p.fails >= p.max_fails and now - p.checked <= p.fail_timeout:
        return False
    return not (p.max_conns and p.conns >= p.max_conns)


class PeerGroup:
    """One upstream's peers: primaries, then ``backup`` ones (``ngx_http_upstream_rr_peers_t``).

    Peers in ``peers`` flagged ``backup`` are moved to the backups.  "single" is nginx's
    ``peers->single``: one primary and no backup, which disables failure accounting and
    retries.
    """

    __slots__ = ("name", "peers", "backups", "clock", "single")

    def __init__(
        self,
        name: str,
        peers: Sequence[Peer],
        backups: Sequence[Peer] = (),
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self.peers: tuple[Peer, ...] = tuple(p for p in peers if not p.backup)
        self.backups: tuple[Peer, ...] = tuple(p for p in peers if p.backup) + tuple(backups)
        for p in self.backups:
            p.backup = True
        for p in (*self.peers, *self.backups):
            p.upstream = name
        self.clock = clock
        self.single = len(self.peers) == 1 and not self.backups

    def start(self) -> Selection:
        """Per-request state: nothing tried yet, ``tries`` = non-down primaries + backups."""
        return Selection(self)

    def now(self) -> int:
        return int(self.clock())


def smooth_pick(tier: Sequence[Peer], tried: int, now: int, name: str | None = None) -> int:
    """nginx's smooth weighted round robin (``ngx_http_upstream_get_peer``) over the peers of
    ``tier`` not in the ``tried`` bitmap and eligible at ``now`` (and, for ``hash
    consistent``, written as server ``name``): every candidate's ``current_weight`` grows by
    its ``effective_weight``, the largest wins and loses the total.  Returns the winner's
    index, or -1 when there is no candidate."""
    best: Peer | None = None
    best_i = -1
    total = 0
    for i, p in enumerate(tier):
        if tried >> i & 1 or (name is not None and (p.name or p.address) != name):
            continue
        if not eligible(p, now):
            continue
        p.current_weight += p.effective_weight
        total += p.effective_weight
        if p.effective_weight < p.weight:
            p.effective_weight += 1
        if best is None or p.current_weight > best.current_weight:
            best, best_i = p, i
    if best is not None:
        best.current_weight -= total
    return best_i


class Selection:
    """One request's walk over a :class:`PeerGroup` (``ngx_http_upstream_rr_peer_data_t``).

    ``tries`` counts down on each :meth:`fail`/:meth:`succeed` (nginx's ``pc->tries``); the
    caller stops retrying at 0 (and applies ``proxy_next_upstream_tries``).  :meth:`next`
    returns ``None`` only when no peer is eligible ("no live upstreams").
    """

    __slots__ = ("group", "tries", "_tier", "_on_backups", "_tried", "_held")

    def __init__(self, group: PeerGroup) -> None:
        self.group = group
        # ``peers->tries += (peer->down == 0)``: a draining peer is not counted either.
        self.tries = sum(not (p.down or p.drain) for p in (*group.peers, *group.backups))
        self._tier = group.peers
        self._on_backups = False
        #: nginx's ``tried`` bitmap: bit ``i`` is set once ``_tier[i]`` was tried (an int
        #: allocates nothing, and an open tunnel keeps its selection as long as it lives).
        self._tried = 0
        self._held: list[Peer] = []

    @property
    def on_backups(self) -> bool:
        """Whether this request has fallen over to the backup servers."""
        return self._on_backups

    def next(self) -> Peer | None:
        """Pick the next peer, or ``None`` when none is eligible.

        "backup: marks the server as a backup server. It will be passed requests when the
        primary servers are unavailable."  Once a request falls to the backups it stays
        there (nginx switches ``rrp->peers`` to ``peers->next`` and clears the tried set).
        """
        group = self.group
        peer: Peer | None
        if group.single:
            peer = group.peers[0]
            if (
                peer.down
                or peer.drain
                or not peer.healthy
                or (peer.max_conns and peer.conns >= peer.max_conns)
            ):
                return None
        else:
            now = group.now()
            peer = self._get_peer(now)
            if peer is None and not self._on_backups and group.backups:
                self._on_backups = True
                self._tier = group.backups
                self._tried = 0
                peer = self._get_peer(now)
            if peer is None:
                return None
        peer.conns += 1
        self._held.append(peer)
        return peer

    def _get_peer(self, now: int) -> Peer | None:
        # ngx_http_upstream_get_peer: smooth weighted round robin over eligible peers.
        i = smooth_pick(self._tier, self._tried, now)
        return None if i < 0 else self._take(i, now)

    def _take(self, i: int, now: int) -> Peer:
        """Mark ``self._tier[i]`` tried and start its ``fail_timeout`` check window, as every
        nginx ``get`` does (``if (now - peer->checked > peer->fail_timeout)``)."""
        peer = self._tier[i]
        self._tried |= 1 << i
        if now - peer.checked > peer.fail_timeout:
            peer.checked = now
        return peer

    def fail(self, peer: Peer) -> bool:
        """Record a failed attempt and release ``peer``; True means "temporarily disabled".

        ``ngx_http_upstream_free_round_robin_peer`` with NGX_PEER_FAILED: ``fails``++,
        ``accessed = checked = now``, ``effective_weight -= weight // max_fails`` (not below
        0).  True whenever ``fails >= max_fails`` afterwards, where nginx logs [warn]
        "upstream server temporarily disabled".  A single server is never disabled and
        leaves no tries.
        """
        self.release(peer)
        if self.group.single:
            self.tries = 0
            return False
        now = self.group.now()
        peer.fails += 1
        peer.accessed = now
        peer.checked = now
        disabled = False
        if peer.max_fails:
            peer.effective_weight -= peer.weight // peer.max_fails
            disabled = peer.fails >= peer.max_fails
        if peer.effective_weight < 0:
            peer.effective_weight = 0
        if self.tries:
            self.tries -= 1
        return disabled

    def succeed(self, peer: Peer) -> None:
        """Record a successful attempt; ``peer`` stays held until :meth:`release`.

        nginx resets ``fails`` only "if check passed": ``accessed < checked``, i.e. the peer
        was picked more than ``fail_timeout`` after its last failure.  Failures inside the
        window keep adding up across successes.
        """
        if self.group.single:
            self.tries = 0
            return
        if peer.accessed < peer.checked:
            peer.fails = 0
        if self.tries:
            self.tries -= 1

    def release(self, peer: Peer) -> None:
        """The connection to ``peer`` is closed: ``conns``-- (once per pick; repeats are no-ops)."""
        for i, held in enumerate(self._held):
            if held is peer:
                del self._held[i]
                peer.connection_closed()
                return
