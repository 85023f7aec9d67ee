"""``server NAME resolve`` in an ``upstream`` (nginx 1.27.3+): the name is resolved again
while running, so a DNS change reaches new connections without a reload.

https://nginx.org/en/docs/http/ngx_http_upstream_module.html#resolve: "monitors changes of
the IP addresses that correspond to a domain name of the server, and automatically modifies
the upstream configuration without the need of restarting nginx."  As
``ngx_http_upstream_zone_resolve_timer``/``_resolve_handler`` do: each name is resolved
when the worker starts, then again one second after its answer expires (its TTL, or the
resolver's ``valid=``); a failed lookup keeps the addresses it had and is retried after
``max(resolver_timeout, 1s)``, except "Host not found", which empties the server's list.

What is per worker and what is shared: nginx keeps a zone's peers in shared memory and lets
one worker resolve each name for all.  wsgate keeps every upstream's peer *state* (failures,
connection counts) per worker (:mod:`wsgate.upstream.roundrobin`), but the *addresses* are
shared (:class:`wsgate.server.resolved.SharedResolved`): every worker resolves on the same
timers and writes what it found, and every worker builds its group from the shared list, so
all change together, and a reload's new workers start from the addresses already known.
Without a master (``master_process off``) the store is this process's own.  A change builds
the group anew for the next request; a peer whose address stays keeps its failure
accounting and connection count, and open tunnels stay on the peer they picked (their
selection holds the group they started with).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

from wsgate.config.model import Config, Upstream, UpstreamServer
from wsgate.resolver import ResolveError, Resolver
from wsgate.resolver.answers import strerror
from wsgate.server.resolved import SharedResolved

__all__ = ["UpstreamResolving"]

#: nginx's "Host not found": the name has no address any more.
_NXDOMAIN = 3


class UpstreamResolving:
    """The re-resolution timers of one configuration in one worker."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        resolver: Callable[[Upstream], Resolver],
        log: Callable[[str, str], None],
        store: SharedResolved | None = None,
        registry: set[asyncio.Task[Any]] | None = None,
    ) -> None:
        self.loop = loop
        self._resolver = resolver
        self._log = log
        #: The addresses every worker shares (None: this process's own, in ``found``).
        self.store = store
        #: (upstream, host) -> the addresses found here (the store's fallback).
        self.found: dict[tuple[str, str], list[str]] = {}
        #: Moves on every change of ``found`` (without a store).
        self._version = 0
        self._tasks: list[asyncio.Task[None]] = []
        #: The gateway's tasks, which a fast stop cancels and the command line awaits.
        self._registry = registry

    def start(self, config: Config) -> None:
        for up in config.http.upstreams.values():
            for server in up.servers:
                if server.resolve:
                    task = self.loop.create_task(self._watch(up, server))
                    self._tasks.append(task)
                    if self._registry is not None:
                        self._registry.add(task)
                        task.add_done_callback(self._registry.discard)

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    def version(self) -> int:
        """Moves whenever an address list changes (a group built before is stale)."""
        return self.store.seq() if self.store is not None else self._version

    def servers(self, up: Upstream) -> list[UpstreamServer]:
        """``up``'s servers now: the fixed ones, and what each ``resolve`` one resolved to
        (every parameter of its line applied to each address), in configuration order."""
        out: list[UpstreamServer] = []
        for server in up.servers:
            if not server.resolve:
                out.append(server)
                continue
            host = _key_host(server)
            found = self.store.get(up.name, host) if self.store is not None else None
            if found is None:
                found = self.found.get((up.name, host), [])
            out.extend(_peer(server, item) for item in found)
        return out

    async def _watch(self, up: Upstream, server: UpstreamServer) -> None:
        """Resolve ``server``'s name now and again after each answer expires."""
        resolver = self._resolver(up)
        timeout = up.resolver_timeout if up.resolver_timeout is not None else 30.0
        retry = max(timeout, 1.0)
        host = _key_host(server)
        while True:
            try:
                items, expires = await self._resolve(resolver, server, timeout)
            except ResolveError as exc:
                what = server.host
                if server.service:
                    what = f"service {server.service} of {server.host}"
                self._log(
                    "error", f"{what} could not be resolved ({exc.code}: {strerror(exc.code)})"
                )
                if exc.code == _NXDOMAIN:
                    self._set(up.name, host, [])
                await asyncio.sleep(retry)
                continue
            self._set(up.name, host, items)
            # "timer = 1000 * (ctx->valid > now ? ctx->valid - now + 1 : 1)"
            await asyncio.sleep(max(expires - self.loop.time(), 0.0) + 1.0)

    async def _resolve(
        self, resolver: Resolver, server: UpstreamServer, timeout: float
    ) -> tuple[list[str], float]:
        """The server's addresses, as items of the shared map, and when they expire: plain
        addresses, or ``ADDR PORT WEIGHT BACKUP TARGET`` for a ``service=``."""
        if not server.service:
            found = await resolver.lookup(server.host, timeout)
            return list(found.addresses), found.expires
        services, expires = await resolver.lookup_service(server.host, server.service, timeout)
        items = [f"{s.address} {s.port} {s.weight} {int(s.backup)} {s.target}" for s in services]
        return items, expires

    def _set(self, upstream: str, host: str, addresses: list[str]) -> None:
        """Record what ``host`` resolved to (sorted: an answer's order is no change)."""
        addresses = sorted(addresses)
        key = (upstream, host)
        if self.found.get(key) != addresses:
            self.found[key] = addresses
            self._version += 1
        if self.store is not None and not self.store.put(upstream, host, addresses):
            self._log("error", f'cannot keep the addresses of "{host}": shared store is full')


def _key_host(server: UpstreamServer) -> str:
    """The shared map's key for a ``resolve`` server: its name, and its service if any."""
    host = server.host.lower()
    return f"{server.service}@{host}" if server.service else host


def _peer(server: UpstreamServer, item: str) -> UpstreamServer:
    """A peer of ``server`` from one item of the shared map.  For a service, the port comes
    from the SRV record, the weight too unless the line set one ("peer->weight =
    (template->weight != 1 ? template->weight : addr->weight)"), and a record of a larger
    priority is a backup.

    Each address of a ``resolve`` name is a server of its own on a ``hash ... consistent``
    ring: its ``address`` (the text the ring hashes) is ``IP:PORT``.  nginx hashes the name
    as written for every address of it (``ngx_http_upstream_update_chash`` takes
    ``peer->server``), so all of a name's addresses share its points and a key is spread
    over them by round robin: with one name for every backend (a Kubernetes headless
    service, a Consul service) nginx's consistent hash sends a key to no fixed backend.
    wsgate keeps the key on one address, and an address that comes or goes moves only its
    own keys (issue 17; docs/differences.md).  A service's targets are already names of
    their own."""
    if not server.service:
        host = f"[{item}]" if ":" in item else item
        return dataclasses.replace(
            server, host=item, address=f"{host}:{server.port}", resolve=False
        )
    addr, port, weight, backup, target = item.split(" ")
    return dataclasses.replace(
        server,
        address=target,
        host=addr,
        port=int(port),
        weight=server.weight if server.weight != 1 else int(weight),
        backup=server.backup or backup == "1",
        resolve=False,
    )
