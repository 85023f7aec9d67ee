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
one worker resolve each name for all.  wsgate keeps every upstream's peer state per worker
(:mod:`wsgate.upstream.roundrobin`), so each worker resolves its names itself, with the
same resolver and the same timers; workers see a change within one TTL of each other.  A
change builds the group anew for the next request; a peer whose address stays keeps its
failure accounting and connection count, and open tunnels stay on the peer they picked
(their selection holds the group they started with).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from wsgate.config.model import Config, Upstream, UpstreamServer
from wsgate.resolver import ResolveError, Resolver
from wsgate.resolver.answers import strerror

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
        changed: Callable[[str], None],
        registry: set[asyncio.Task[Any]] | None = None,
    ) -> None:
        self.loop = loop
        self._resolver = resolver
        self._log = log
        self._changed = changed
        #: (upstream, index of the server line) -> the peers it resolved to.
        self.found: dict[tuple[str, int], tuple[UpstreamServer, ...]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        #: The gateway's tasks, which a fast stop cancels and the command line awaits.
        self._registry = registry

    def start(self, config: Config) -> None:
        for up in config.http.upstreams.values():
            for i, server in enumerate(up.servers):
                if server.resolve:
                    task = self.loop.create_task(self._watch(up, i, server))
                    self._tasks.append(task)
                    if self._registry is not None:
                        self._registry.add(task)
                        task.add_done_callback(self._registry.discard)

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    def servers(self, up: Upstream) -> list[UpstreamServer]:
        """``up``'s servers now: the fixed ones, and what each ``resolve`` one resolved to,
        in configuration order."""
        out: list[UpstreamServer] = []
        for i, server in enumerate(up.servers):
            if server.resolve:
                out.extend(self.found.get((up.name, i), ()))
            else:
                out.append(server)
        return out

    async def _watch(self, up: Upstream, index: int, server: UpstreamServer) -> None:
        resolver = self._resolver(up)
        timeout = up.resolver_timeout if up.resolver_timeout is not None else 30.0
        retry = max(timeout, 1.0)
        key = (up.name, index)
        while True:
            try:
                found = await resolver.lookup(server.host, timeout)
            except ResolveError as exc:
                self._log(
                    "error",
                    f"{server.host} could not be resolved ({exc.code}: {strerror(exc.code)})",
                )
                if exc.code != _NXDOMAIN:
                    await asyncio.sleep(retry)
                    continue
                self._set(key, ())
                await asyncio.sleep(retry)
                continue
            peers = tuple(
                UpstreamServer(
                    server.address,
                    addr,
                    server.port,
                    weight=server.weight,
                    max_fails=server.max_fails,
                    fail_timeout=server.fail_timeout,
                    max_conns=server.max_conns,
                    backup=server.backup,
                    down=server.down,
                    source=server.source,
                )
                for addr in found.addresses
            )
            self._set(key, peers)
            # "timer = 1000 * (ctx->valid > now ? ctx->valid - now + 1 : 1)"
            await asyncio.sleep(max(found.expires - self.loop.time(), 0.0) + 1.0)

    def _set(self, key: tuple[str, int], peers: tuple[UpstreamServer, ...]) -> None:
        old = self.found.get(key)
        addrs = sorted((p.host, p.port) for p in peers)
        if old is not None and sorted((p.host, p.port) for p in old) == addrs:
            return
        self.found[key] = peers
        self._changed(key[0])
