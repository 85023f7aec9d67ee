"""``proxy_pass`` with variables: the URL evaluated per request, then an ``upstream`` group,
an address, or a name the ``resolver`` turns into addresses
(:mod:`wsgate.upstream.target` has the rules).

nginx balances the addresses of a resolved name with a round robin made for the request
(``ngx_http_upstream_create_round_robin_peer``): no state survives it, so neither does it
here; an ``upstream`` group keeps its own shared state as for a literal ``proxy_pass``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wsgate.config.model import Config, Location, LocationSettings, ProxyPass, UpstreamServer
from wsgate.errors import HttpError
from wsgate.resolver import ResolveError
from wsgate.upstream.methods import Balancer, make_group
from wsgate.upstream.roundrobin import peers_from_config
from wsgate.upstream.target import Target, TargetError, parse_target

if TYPE_CHECKING:
    from wsgate.config.variables import RequestContext
    from wsgate.proxy.context import WorkerContext

__all__ = ["Evaluated", "evaluate"]


@dataclass(frozen=True, slots=True)
class Evaluated:
    """Where this request goes: the concrete ``proxy_pass``, its balancer, the URI to send
    when the URL had one (it replaces the request's whole URI), and ``$proxy_host``."""

    pp: ProxyPass
    group: Balancer
    uri: str | None
    proxy_host: str


def _settings_of(locations: tuple[Location, ...]) -> Iterator[LocationSettings]:
    for loc in locations:
        yield loc.settings
        yield from _settings_of(loc.locations)


#: The last configuration's implicit upstreams (``(config, {(host, port): proxy_pass})``).
_implicit: list[tuple[Config, dict[tuple[str, int], ProxyPass]]] = []


def _implicit_upstream(config: Config, target: Target) -> ProxyPass | None:
    """The static ``proxy_pass`` whose implicit upstream has the target's host and port
    (``ngx_http_upstream_init_request`` searches every upstream, the implicit ones a
    ``proxy_pass http://host:port`` made too, before asking the resolver)."""
    if not _implicit or _implicit[0][0] is not config:
        found: dict[tuple[str, int], ProxyPass] = {}
        for server in config.http.servers:
            for st in (server.settings, *_settings_of(server.every_location)):
                pp = st.proxy_pass
                if pp is not None and pp.template is None and pp.upstream is None and pp.port:
                    found.setdefault((pp.host.lower(), pp.port), pp)
        _implicit[:] = [(config, found)]
    return _implicit[0][1].get((target.host.lower(), target.port))


def _upstream_name(gw: WorkerContext, target: Target) -> str | None:
    """``ngx_http_upstream_init_request``: an ``upstream`` block whose name is the host
    (case-insensitively), when the URL gave no port."""
    if not target.no_port or target.unix:
        return None
    low = target.host.lower()
    for name in gw.config.http.upstreams:
        if name.lower() == low:
            return name
    return None


async def evaluate(
    gw: WorkerContext, pp: ProxyPass, settings: LocationSettings, ctx: RequestContext
) -> Evaluated:
    """Evaluate ``pp.template`` for this request; raises :class:`HttpError` (500 for a bad
    URL, 502 when the name cannot be resolved) with nginx's error-log text."""
    assert pp.template is not None
    url = pp.template.render(ctx.lookup)
    try:
        target = parse_target(url)
    except TargetError as exc:
        raise HttpError(500, str(exc)) from None
    base = dataclasses.replace(
        pp,
        url=url,
        scheme=target.scheme,
        host=target.host,
        port=target.port,
        uri=target.uri,
        port_given=not target.no_port,
    )
    name = _upstream_name(gw, target)
    if name is not None:
        concrete = dataclasses.replace(base, upstream=name)
        return Evaluated(concrete, gw.peer_group(concrete), target.uri, target.host)
    if target.unix:
        servers: tuple[UpstreamServer, ...] = (
            UpstreamServer(f"unix:{target.unix}", target.unix, 0),
        )
    elif target.is_address:
        servers = (UpstreamServer(target.authority, target.host, target.port),)
    elif (implicit := _implicit_upstream(gw.config, target)) is not None:
        concrete = dataclasses.replace(base, servers=implicit.servers)
        return Evaluated(concrete, gw.peer_group(implicit), target.uri, target.proxy_host)
    else:
        conf = settings.resolver
        if conf is None:
            raise HttpError(502, f"no resolver defined to resolve {target.host}")
        try:
            addrs = await gw.resolver(conf).resolve(target.host, settings.resolver_timeout)
        except ResolveError as exc:
            raise HttpError(502, f"{target.host} could not be resolved {exc}") from None
        servers = tuple(UpstreamServer(target.host, a, target.port) for a in addrs)
    concrete = dataclasses.replace(base, servers=servers)
    group = make_group(target.host, peers_from_config(servers), None, clock=gw.clock)
    return Evaluated(concrete, group, target.uri, target.proxy_host)
