"""What a request needs from the worker that runs it: a narrow interface, not the Gateway.

The proxy layer (front connections, exchanges, upstream attempts, tunnels' ends) reads and
changes only what :class:`WorkerContext` lists; :class:`wsgate.server.gateway.Gateway`
provides it.  As uvicorn hands its protocols a small ``ServerState`` rather than the server,
this keeps the dependency one way and small, and a test can run a request against a fake.

:class:`UpstreamCaches` is the per-worker state the upstream side keeps between requests
(idle keep-alive connections per peer group, TLS contexts per configuration); it used to be
module-level dictionaries keyed by the Gateway.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from wsgate.cache.manager import ProxyCaches
from wsgate.config.model import Config, LocationSettings, ProxyPass
from wsgate.config.model import Resolver as ResolverConf
from wsgate.errors import HttpError
from wsgate.proxy.endpoint import KeptEndpoints
from wsgate.upstream.tls import TlsContexts, UpstreamTls

if TYPE_CHECKING:
    from wsgate.limits import LimitRegistry
    from wsgate.observability.logs import AccessLogs, ErrorLogger
    from wsgate.observability.metrics import MetricsStore
    from wsgate.observability.status import StatusCounters
    from wsgate.proxy.front import FrontConnection
    from wsgate.resolver import Resolver
    from wsgate.upstream.methods import Balancer

__all__ = ["ControlEndpoint", "UpstreamCaches", "WorkerContext"]


class ControlEndpoint(Protocol):
    """``upstream_control``'s answers (:class:`wsgate.server.control.Control`)."""

    def endpoint(self, query: str) -> tuple[int, bytes]: ...


class WorkerContext(Protocol):
    """Everything of the worker a request reads or changes (``Gateway`` implements it)."""

    loop: asyncio.AbstractEventLoop
    #: ``loop.time``, bound once (every tunnel keeps it: one bound method for all).
    clock: Callable[[], float]
    #: The configuration new requests get (a reload replaces it).
    config: Config
    error_log: ErrorLogger
    access_logs: AccessLogs
    metrics: MetricsStore
    limits: LimitRegistry
    stub_status: StatusCounters
    #: Retiring or stopping: no keep-alive for new responses, no new requests.
    stopping: bool
    #: QUIT received (``readiness`` answers 503 from then on).
    quitting: bool
    upstream_caches: UpstreamCaches

    @property
    def control(self) -> ControlEndpoint | None:
        """Drains and rebalancing shared by the workers (None without shared memory)."""
        ...

    @property
    def peer_groups(self) -> Mapping[object, object]:
        """The peer groups of the current configuration (a reload starts new ones)."""
        ...

    def peer_group(self, pp: ProxyPass) -> Balancer:
        """The balancing state shared by every request proxied to ``pp``."""
        ...

    def resolver(self, conf: ResolverConf) -> Resolver:
        """The worker's client (and cache) for the ``resolver`` directive ``conf``."""
        ...

    def upstream_room(self) -> int:
        """How many idle kept upstream connections must close before one more fits."""
        ...

    def upstream_opening(self) -> None:
        """An upstream connection is being opened (``worker_connections`` counts it)."""
        ...

    def upstream_closed(self) -> None:
        """An upstream connection outside a tunnel closed (or was handed to a tunnel)."""
        ...

    def add_tunnel(self) -> None:
        """A tunnel opened: it holds an upstream connection."""
        ...

    def tunnel_closed(self) -> None:
        """An open tunnel ended."""
        ...

    def connection_closed(self, conn: FrontConnection) -> None:
        """A client connection ended (its task, or the tunnel it became); once each."""
        ...


class UpstreamCaches:
    """Idle keep-alive connections per peer group, and the TLS contexts of a configuration.

    One keep-alive cache per peer group: a reload builds new groups, and the caches of groups
    that are gone are closed when the first new one is made.
    """

    __slots__ = ("_loop", "_kept", "_tls", "proxy_caches")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: id(peer group) -> (the group, its cache).
        self._kept: dict[int, tuple[object, KeptEndpoints]] = {}
        #: The configuration the TLS contexts were built for, and the contexts.
        self._tls: tuple[Config, TlsContexts] | None = None
        #: The ``proxy_cache_path`` stores and their managers.
        self.proxy_caches = ProxyCaches(loop)

    def keepalive(
        self, pp: ProxyPass, group: object, config: Config, live: Mapping[object, object]
    ) -> KeptEndpoints | None:
        """The idle-connection cache of ``group`` when its ``upstream`` block has
        ``keepalive``; ``live`` holds the worker's current peer groups."""
        if pp.upstream is None:
            return None
        conf = config.http.upstreams.get(pp.upstream)
        if conf is None or conf.keepalive <= 0:
            return None
        caches = self._kept
        entry = caches.get(id(group))
        if entry is not None and entry[0] is group:
            return entry[1]
        alive = {id(g) for g in live.values()}
        for key in [k for k in caches if k not in alive]:
            caches.pop(key)[1].close_all()
        cache = KeptEndpoints(
            self._loop,
            conf.keepalive,
            requests=conf.keepalive_requests,
            timeout=conf.keepalive_timeout,
            lifetime=conf.keepalive_time,
        )
        caches[id(group)] = (group, cache)
        return cache

    def drop_idle(self, count: int) -> None:
        """Close up to ``count`` idle kept connections, to make room for a new one under
        ``worker_connections`` or the descriptor limit."""
        for _, cache in self._kept.values():
            count -= cache.drop_oldest(count)
            if count <= 0:
                return

    def tls(self, config: Config, settings: LocationSettings) -> UpstreamTls:
        """The TLS context of ``settings`` (built once per configuration); a context that
        cannot be built is a 502."""
        entry = self._tls
        if entry is None or entry[0] is not config:
            entry = self._tls = (config, TlsContexts())
        try:
            return entry[1].get(settings.proxy_ssl)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise HttpError(502, f"cannot create the upstream SSL context: {exc}") from None

    def close(self) -> None:
        """Close every idle kept connection (the worker stopped)."""
        for _, cache in self._kept.values():
            cache.close_all()
        self._kept.clear()
        self.proxy_caches.close()
