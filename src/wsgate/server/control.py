"""Drains and rebalancing of WebSocket tunnels, shared by every worker of every generation.

What moves a tunnel (the arithmetic is :mod:`wsgate.upstream.drain`):

* **drain**: ``server ... drain`` in the configuration, or ``upstream_control``'s ``drain``
  at run time.  The server takes no new connection (``Peer.drain``, in every balancing
  method) and each of its open tunnels gets a Close 1012 "service restart" at its next frame
  boundary (:meth:`wsgate.proxy.tunnel.Tunnel.going_away`, the path a reload's
  ``worker_shutdown_timeout`` takes), at a moment spread over ``websocket_drain_time``.
  ``undrain`` cancels the closes not yet sent.
* **rebalance**: the group grew (a reload added a server, ``resolve`` found an address) with
  ``websocket_rebalance FRACTION/m`` on, or ``upstream_control``'s ``rebalance``: each worker
  closes, with 1012, the tunnels its servers hold beyond their weight's share, spread so that
  at most FRACTION of the group's tunnels close per minute.

The state every worker must see lives in a :class:`SharedControl` (a
:class:`~wsgate.server.shareddoc.SharedDoc` the master makes before it forks)::

    {"config":    ["UPSTREAM|ADDRESS", ...],       servers written with ``drain`` (last load)
     "runtime":   {"UPSTREAM|ADDRESS": true|false}, drain/undrain commands since that load
     "servers":   {"UPSTREAM": {"ADDRESS": weight}}, the last load's servers (growth)
     "rebalance": {"UPSTREAM": [seq, {"ADDRESS": weight}, fraction]},
     "tunnels":   {"PID": {"UPSTREAM|ADDRESS": open tunnels}}}

A (re)load replaces ``config`` and forgets ``runtime``: the configuration is the state to
return to, as nginx Plus's API forgets run-time changes on reload without a ``state`` file.
Each worker's :class:`Control` reads the document every :data:`TICK` seconds (one read of
shared memory when nothing changed), so a command reaches every worker within a tick; the
worker that served the command applies it at once.  Old workers (retired by a reload, still
carrying tunnels) read it too: a reload that drains a server moves the tunnels they hold.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from wsgate.config.model import Config, Location, Upstream, UpstreamServer
from wsgate.config.upstream import per_minute
from wsgate.proxy.frames import SERVICE_RESTART
from wsgate.server.health import upstream_target
from wsgate.server.shareddoc import SharedDoc
from wsgate.upstream.drain import drained, excess, key, moments, rebalance_window
from wsgate.upstream.roundrobin import eligible

if TYPE_CHECKING:
    from wsgate.proxy.tunnel import Tunnel
    from wsgate.server.gateway import Gateway
    from wsgate.upstream.roundrobin import Peer, PeerGroup

__all__ = ["TICK", "Control", "SharedControl", "control_enabled", "server_address"]

#: Seconds between two reads of the shared document by a worker.
TICK = 0.5
#: Bytes for the document (tunnel counts of many workers and servers).
SIZE = 512 * 1024


def server_address(s: UpstreamServer) -> str:
    """The address a :class:`~wsgate.upstream.roundrobin.Peer` of ``s`` shows."""
    if s.is_unix:
        return s.address
    return f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}"


def _static_weights(up: Upstream) -> dict[str, int]:
    """The primary servers of ``up`` that take connections, by address (``resolve`` servers
    are rebalanced by the workers that see their addresses change)."""
    return {
        server_address(s): s.weight
        for s in up.servers
        if not (s.backup or s.down or s.drain or s.resolve)
    }


def control_enabled(config: Config) -> bool:
    """Whether any location of ``config`` has ``upstream_control``."""

    def walk(locations: tuple[Location, ...]) -> bool:
        return any(loc.settings.upstream_control or walk(loc.locations) for loc in locations)

    return any(walk(server.every_location) for server in config.http.servers)


class SharedControl:
    """The shared drain and rebalance state (see the module docstring for its layout)."""

    __slots__ = ("doc",)

    def __init__(self, size: int = SIZE) -> None:
        self.doc = SharedDoc(size)

    def configure(self, config: Config) -> None:
        """A (re)load (the master, or the one process): the configuration's drains replace
        the run-time ones; a group with ``websocket_rebalance`` that gained servers gets a
        rebalance request."""
        ups = config.http.upstreams

        def change(data: dict[str, Any]) -> bool:
            before: dict[str, dict[str, int]] = data.get("servers", {})
            data["config"] = sorted(
                key(up.name, server_address(s))
                for up in ups.values()
                for s in up.servers
                if s.drain
            )
            data["runtime"] = {}
            now = {name: _static_weights(up) for name, up in ups.items()}
            requests = data.setdefault("rebalance", {})
            for name, weights in now.items():
                old = before.get(name)
                if old is None or not ups[name].rebalance or not set(weights) - set(old):
                    continue
                seq = requests.get(name, [0])[0] + 1
                requests[name] = [seq, weights, ups[name].rebalance]
            data["servers"] = now
            return True

        self.doc.update(change)

    def command(self, keys: list[str], on: bool) -> None:
        """``drain`` (``on``) or ``undrain`` the servers ``keys``."""

        def change(data: dict[str, Any]) -> bool:
            runtime = data.setdefault("runtime", {})
            for k in keys:
                runtime[k] = on
            return True

        self.doc.update(change)

    def request_rebalance(self, upstream: str, weights: dict[str, int], fraction: float) -> None:
        def change(data: dict[str, Any]) -> bool:
            requests = data.setdefault("rebalance", {})
            seq = requests.get(upstream, [0])[0] + 1
            requests[upstream] = [seq, weights, fraction]
            return True

        self.doc.update(change)

    def publish(self, pid: int, counts: dict[str, int] | None) -> None:
        """This worker's open tunnels per server (``None``: the worker is leaving)."""

        def change(data: dict[str, Any]) -> bool:
            tunnels = data.setdefault("tunnels", {})
            if counts is None:
                return tunnels.pop(str(pid), None) is not None
            tunnels[str(pid)] = counts
            return True

        self.doc.update(change)

    def in_worker(self) -> None:
        self.doc.in_worker()


class Control:
    """One worker's side: applies the shared state to its peer groups and tunnels."""

    def __init__(self, gw: Gateway, store: SharedControl) -> None:
        self.gw = gw
        self.store = store
        self.loop = gw.loop
        self.rng = random.Random()
        self.pid = os.getpid()
        #: The servers draining now, and since when (loop time) each drains here.
        self.drained: frozenset[str] = frozenset()
        self.since: dict[str, float] = {}
        #: Tunnels with a 1012 to come: the timer, and whether a drain (not a rebalance)
        #: scheduled it (an undrain cancels only those).
        self.pending: dict[Tunnel, tuple[asyncio.TimerHandle, bool]] = {}
        self._seen = -1
        self._published: dict[str, int] | None = None
        self._ticks = 0
        self._listed_for: Config | None = None
        self._has_control = False
        self._timer: asyncio.TimerHandle | None = None
        #: The rebalance requests handled, by upstream: those made before this worker
        #: started are not for it (it had no tunnel then).
        self._rebalanced: dict[str, int] = {
            name: int(req[0]) for name, req in store.doc.read().get("rebalance", {}).items()
        }

    # -- running -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._timer is None:
            self.refresh()
            self._timer = self.loop.call_later(TICK, self._tick)

    def stop(self) -> None:
        """The worker is ending: no more ticks, its counts leave the document."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self.store.publish(self.pid, None)

    def _tick(self) -> None:
        self._timer = self.loop.call_later(TICK, self._tick)
        self._ticks += 1
        self._resolve_growth()
        self.refresh()
        if self._ticks % 2 == 0 and self._listed():
            counts = self.counts()
            if counts != self._published:
                self._published = counts
                self.store.publish(self.pid, counts)

    def _listed(self) -> bool:
        """Whether the configuration has an ``upstream_control`` location: only then do the
        workers count their tunnels for it (a walk over the connections, once a second)."""
        config = self.gw.config
        if self._listed_for is not config:
            self._listed_for = config
            self._has_control = control_enabled(config)
        return self._has_control

    def refresh(self) -> None:
        """Read the shared state; apply what changed; give new drained tunnels their 1012."""
        doc = self.store.doc
        data = doc.read()
        if doc.seq() != self._seen:
            self._seen = doc.seq()
            now_drained = drained(data.get("config", ()), data.get("runtime", {}))
            if now_drained != self.drained:
                now = self.loop.time()
                self.since = {k: self.since.get(k, now) for k in now_drained}
                self.drained = now_drained
                for group in self.gw.peer_groups.values():
                    self.apply(group)
            for name, req in data.get("rebalance", {}).items():
                if self._rebalanced.get(name, 0) < req[0]:
                    self._rebalanced[name] = int(req[0])
                    self.rebalance(name, req[1], float(req[2]))
        if self.drained or self.pending:
            self._sweep()

    def apply(self, group: PeerGroup) -> None:
        """Mark the peers of ``group`` draining or not (a group built anew gets it too)."""
        for p in (*group.peers, *group.backups):
            p.drain = key(p.upstream, p.address) in self.drained

    # -- tunnels -------------------------------------------------------------------------------
    def tunnels(self) -> Iterator[tuple[Tunnel, Peer]]:
        """The open tunnels of this worker with the peer each was opened to."""
        for c in self.gw.connections:
            t, end = c.tunnel, c.tunnel_end
            if t is not None and end is not None and not t.closed and not t.going:
                yield t, end.peer
            elif c.h2 is not None:  # RFC 8441 tunnels on HTTP/2 streams
                for t, peer in c.h2.tunnel_peers():
                    if not t.closed and not t.going:
                        yield t, peer

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for _, peer in self.tunnels():
            k = key(peer.upstream, peer.address)
            found[k] = found.get(k, 0) + 1
        return found

    def _sweep(self) -> None:
        for t in [t for t in self.pending if t.closed or t.going]:
            self.pending.pop(t)[0].cancel()
        now = self.loop.time()
        batches: dict[str, list[Tunnel]] = {}
        for t, peer in self.tunnels():
            k = key(peer.upstream, peer.address)
            entry = self.pending.get(t)
            if k in self.drained:
                if entry is None or not entry[1]:
                    batches.setdefault(k, []).append(t)
            elif entry is not None and entry[1]:
                entry[0].cancel()  # undrained before its moment
                del self.pending[t]
        for k, batch in batches.items():
            upstream, _, address = k.partition("|")
            left = max(self.since[k] + self._drain_time(upstream) - now, 0.0)
            self._drain(batch, upstream, address, left, True)

    def _drain(
        self,
        batch: list[Tunnel],
        upstream: str,
        address: str,
        window: float,
        drain: bool,
        why: str = "",
    ) -> None:
        """Give ``batch`` (tunnels to ``address`` of ``upstream``) their 1012 over
        ``window``, and say so (``why``: what made them go, when not a drain)."""
        self._schedule(batch, window, drain)
        self.gw.error_log.log(
            "notice",
            f'draining {len(batch)} websocket tunnel(s) to {address} of upstream "{upstream}"'
            f"{why} over {window:.1f}s",
        )

    def _schedule(self, tunnels: list[Tunnel], window: float, drain: bool) -> None:
        for t, delay in zip(tunnels, moments(len(tunnels), window, self.rng), strict=True):
            old = self.pending.pop(t, None)
            if old is not None:
                old[0].cancel()
            self.pending[t] = (self.loop.call_later(delay, self._fire, t), drain)

    def _fire(self, t: Tunnel) -> None:
        self.pending.pop(t, None)
        t.going_away(SERVICE_RESTART)

    def _drain_time(self, upstream: str) -> float:
        up = self.gw.config.http.upstreams.get(upstream)
        return up.drain_time if up is not None and up.drain_time is not None else 30.0

    # -- rebalancing ---------------------------------------------------------------------------
    def rebalance(self, upstream: str, weights: dict[str, int], fraction: float) -> int:
        """Close this worker's tunnels of ``upstream`` beyond each server's share of
        ``weights``, at most ``fraction`` of them a minute; returns how many."""
        mine: dict[str, list[Tunnel]] = {}
        for t, peer in self.tunnels():
            if peer.upstream == upstream and t not in self.pending:
                mine.setdefault(peer.address, []).append(t)
        counts = {address: len(ts) for address, ts in mine.items()}
        over = excess(counts, weights)
        chosen: list[Tunnel] = []
        for address, n in over.items():
            chosen += self.rng.sample(mine[address], n)
        window = rebalance_window(len(chosen), sum(counts.values()), fraction)
        self._schedule(chosen, window, False)
        if chosen:
            self.gw.error_log.log(
                "notice",
                f'rebalancing upstream "{upstream}": {len(chosen)} of {sum(counts.values())} '
                f"websocket tunnel(s) over {window:.1f}s",
            )
        return len(chosen)

    def _resolve_growth(self) -> None:
        """``server ... resolve``: look up such groups, so that a worker serving no request
        rebuilds them too when DNS changed (:meth:`grown` then runs)."""
        gw = self.gw
        for name, up in gw.config.http.upstreams.items():
            if any(s.resolve for s in up.servers):
                gw.peer_group(upstream_target(name))

    def grown(self, upstream: Upstream, old: PeerGroup, new: PeerGroup) -> None:
        """A group was rebuilt from new ``resolve`` answers (every worker sees the same
        addresses, so each does its own part):

        * an address that left DNS has its tunnels closed with 1012, spread over the
          upstream's ``websocket_drain_time`` as a ``drain`` spreads them (issue 17: a
          backend that disappears "is drained as `drain` does, never reset").  nginx keeps
          such tunnels on the old address until they end; a Kubernetes headless service
          drops a pod from DNS when it is going away, so wsgate moves its clients first;
        * with ``websocket_rebalance`` and an address that is new, rebalance."""
        self.apply(new)
        before = {p.address for p in (*old.peers, *old.backups)}
        now = {p.address for p in (*new.peers, *new.backups)}
        if before - now:
            self.gone(upstream.name, before - now)
        if not upstream.rebalance:
            return
        weights = {p.address: p.weight for p in new.peers if not (p.down or p.drain)}
        if set(weights) - before:
            self.rebalance(upstream.name, weights, upstream.rebalance)

    def gone(self, upstream: str, addresses: set[str]) -> int:
        """Close this worker's tunnels to ``addresses`` of ``upstream`` (no longer in DNS)
        with 1012 spread over the drain time; returns how many.  If an address comes back
        before its tunnels' moments, they are closed all the same (a flapping name should
        not keep clients on a backend that DNS said was leaving)."""
        batches: dict[str, list[Tunnel]] = {}
        for t, peer in self.tunnels():
            if peer.upstream == upstream and peer.address in addresses and t not in self.pending:
                batches.setdefault(peer.address, []).append(t)
        window = self._drain_time(upstream)
        for address, batch in batches.items():
            self._drain(batch, upstream, address, window, False, ", no longer in DNS,")
        return sum(len(b) for b in batches.values())

    # -- the endpoint's reads ------------------------------------------------------------------
    def all_counts(self) -> dict[str, int]:
        """Open tunnels per server over every live worker (this one counted now)."""
        total = self.counts()
        for pid, counts in self.store.doc.read().get("tunnels", {}).items():
            if int(pid) == self.pid or not os.path.exists(f"/proc/{pid}"):
                continue
            for k, n in counts.items():
                total[k] = total.get(k, 0) + n
        return total

    # -- upstream_control ------------------------------------------------------------------------
    def endpoint(self, query: str) -> tuple[int, bytes]:
        """``upstream_control``: the status and JSON body for a request with arguments
        ``query`` (docs/configuration.md, "Draining and rebalancing"):

        * no ``action``: every upstream (or ``upstream=NAME``'s) with its servers;
        * ``action=drain|undrain&upstream=NAME&server=ADDRESS``: ``server`` is an address
          as listed, or a ``server`` line's name (all its addresses);
        * ``action=rebalance&upstream=NAME[&rate=FRACTION/m]``.
        """
        self.refresh()  # what other workers changed, before acting on it
        args = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        action = args.get("action", "")
        ups = self.gw.config.http.upstreams
        name = args.get("upstream")
        if name is not None and name not in ups:
            return _error(404, f'upstream "{name}" not found')
        if action in ("drain", "undrain"):
            if name is None or "server" not in args:
                return _error(400, f'"{action}" needs "upstream" and "server"')
            group = self.gw.peer_group(upstream_target(name))
            wanted = args["server"]
            keys = [
                key(name, p.address)
                for p in (*group.peers, *group.backups)
                if wanted in (p.address, p.name)
            ]
            if not keys:
                return _error(404, f'server "{wanted}" not found in upstream "{name}"')
            self.store.command(keys, action == "drain")
        elif action == "rebalance":
            if name is None:
                return _error(400, '"rebalance" needs "upstream"')
            fraction = ups[name].rebalance or 0.0
            if "rate" in args:
                fraction = per_minute(args["rate"]) or 0.0
                if not fraction:
                    return _error(400, f'invalid rate "{args["rate"]}"')
            if not fraction:
                return _error(400, f'websocket_rebalance is off for upstream "{name}": give "rate"')
            group = self.gw.peer_group(upstream_target(name))
            now = group.now()
            weights = {p.address: p.weight for p in group.peers if eligible(p, now)}
            self.store.request_rebalance(name, weights, fraction)
        elif action:
            return _error(400, f'unknown action "{action}"')
        self.refresh()  # this worker at once; the others within a tick
        names = [name] if name is not None else list(ups)
        body = {"upstreams": {n: self._listing(n) for n in names}}
        return 200, json.dumps(body, indent=1).encode() + b"\n"

    def _listing(self, name: str) -> dict[str, Any]:
        up = self.gw.config.http.upstreams[name]
        group = self.gw.peer_group(upstream_target(name))
        counts = self.all_counts()
        servers = [
            {
                "server": p.address,
                "name": p.name or p.address,
                "weight": p.weight,
                "backup": p.backup,
                "down": p.down,
                "draining": p.drain,
                "healthy": p.healthy,
                "tunnels": counts.get(key(name, p.address), 0),
            }
            for p in (*group.peers, *group.backups)
        ]
        return {
            "method": up.method,
            "drain_time": up.drain_time,
            "rebalance": up.rebalance,
            "servers": servers,
        }


def _error(status: int, text: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": text}).encode() + b"\n"
