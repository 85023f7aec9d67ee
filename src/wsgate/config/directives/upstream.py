"""``upstream { }`` contents (``ngx_http_upstream_module`` and its balancers, and wsgate's
``health_check``).  An upstream block is one level with nothing to inherit from; the parsers
are in :mod:`wsgate.config.upstream`."""

from __future__ import annotations

from wsgate.config.model import LocationSettings, Upstream
from wsgate.config.table import (
    HTTP,
    LOCATION,
    NOARGS,
    ONEMORE,
    TAKE1,
    TAKE12,
    UPSTREAM,
    Arity,
    Directive,
    Merge,
    ctx,
    number,
    time,
)
from wsgate.config.upstream import (
    ROUND_ROBIN,
    parse_health_check,
    parse_keepalive,
    parse_method,
    parse_rebalance,
    parse_server,
    parse_zone,
)

__all__ = ["ENTRIES"]

_U = ctx(UPSTREAM)
#: The balancing methods fill one set of fields: a second one is "redefined".
_METHOD = ("method", "hash_key", "consistent", "random_two", "random_method")


def _method(name: str, arity: Arity, syntax: str = "") -> Directive:
    return Directive(
        name,
        _U,
        arity,
        parse=parse_method,
        target=Upstream,
        fields=_METHOD,
        unset=ROUND_ROBIN,
        syntax=syntax,
        note="round robin when none is given",
        duplicate="load balancing method redefined",
    )


ENTRIES: tuple[Directive, ...] = (
    Directive(
        "server",
        _U,
        ONEMORE,
        parse=parse_server,
        target=Upstream,
        fields=("servers",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="address [weight=n] [max_fails=n] [fail_timeout=time] [max_conns=n] [backup] [down] "
        "[drain] [resolve] [service=name]",
        note="a name resolving to several addresses gives several peers",
    ),
    _method("least_conn", NOARGS),
    _method("ip_hash", NOARGS),
    _method("hash", TAKE12, "key [consistent]"),
    _method("random", Arity(0, 2), "[two [least_conn]]"),
    Directive(
        "keepalive",
        _U,
        TAKE1,
        parse=parse_keepalive,
        target=Upstream,
        fields=("keepalive",),
        unset=0,
        syntax="connections",
        note="no pool when not given (nginx 1.29.7+ keeps 32)",
    ),
    Directive(
        "keepalive_requests",
        _U,
        TAKE1,
        parse=number,
        target=Upstream,
        fields=("keepalive_requests",),
        default="1000",
    ),
    Directive(
        "keepalive_timeout",
        _U,
        TAKE1,
        parse=time,
        target=Upstream,
        fields=("keepalive_timeout",),
        default="60s",
    ),
    Directive(
        "keepalive_time",
        _U,
        TAKE1,
        parse=time,
        target=Upstream,
        fields=("keepalive_time",),
        default="1h",
    ),
    Directive(
        "zone",
        _U,
        TAKE12,
        parse=parse_zone,
        target=Upstream,
        fields=("zone",),
        unset="",
        syntax="name [size]",
        note="required by `server ... resolve`; peer state stays per worker",
    ),
    Directive(
        "health_check",
        _U,
        Arity(0, -1),
        parse=parse_health_check,
        target=Upstream,
        fields=("health_check",),
        note="wsgate's",
        syntax="[interval=time] [timeout=time] [fails=n] [passes=n] [uri=uri] "
        "[type=http|websocket] [status=code,...]",
    ),
    # wsgate's drains and rebalancing of WebSocket tunnels (wsgate.server.control); in the
    # http block for every upstream, or in one upstream block for it (resolver_timeout's way).
    *(
        Directive(
            name,
            ctx(where),
            TAKE1,
            parse=parse,
            target=LocationSettings if where == HTTP else Upstream,
            fields=(name if where == HTTP else field,),
            default=default if where == HTTP else None,
            syntax=syntax,
            note="wsgate's" if where == HTTP else "wsgate's; else the http level's",
        )
        for name, field, parse, default, syntax in (
            ("websocket_drain_time", "drain_time", time, "30s", "time"),
            ("websocket_rebalance", "rebalance", parse_rebalance, "off", "off | fraction/m"),
        )
        for where in (HTTP, UPSTREAM)
    ),
    Directive(
        "upstream_control",
        ctx(LOCATION),
        NOARGS,
        parse=lambda s, level: True,
        target=LocationSettings,
        fields=("upstream_control",),
        unset=False,
        merge=Merge.HANDLER,
        note="wsgate's: list, drain, undrain, rebalance upstream servers at run time",
    ),
)
