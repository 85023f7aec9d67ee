"""``upstream { }`` contents (``ngx_http_upstream_module`` and its balancers, and wsgate's
``health_check``).  An upstream block has no outer level to inherit from; its contents are
read by :func:`wsgate.config.upstream.load_upstream` and the entries here give their contexts
and argument counts."""

from __future__ import annotations

from wsgate.config.table import (
    NOARGS,
    ONEMORE,
    TAKE1,
    TAKE12,
    UPSTREAM,
    Arity,
    Directive,
    Kind,
    ctx,
)

__all__ = ["ENTRIES"]

_U = ctx(UPSTREAM)
_S = Kind.STRUCTURE

ENTRIES: tuple[Directive, ...] = (
    Directive(
        "server",
        _U,
        ONEMORE,
        kind=_S,
        syntax="address [weight=n] [max_fails=n] [fail_timeout=time] [max_conns=n] [backup] [down]",
    ),
    Directive("least_conn", _U, NOARGS, kind=_S),
    Directive("ip_hash", _U, NOARGS, kind=_S),
    Directive("hash", _U, TAKE12, kind=_S, syntax="key [consistent]"),
    Directive("random", _U, Arity(0, 2), kind=_S, syntax="[two [least_conn]]"),
    Directive("keepalive", _U, TAKE1, kind=_S, syntax="connections"),
    Directive("keepalive_requests", _U, TAKE1, kind=_S, default="1000", syntax="number"),
    Directive("keepalive_timeout", _U, TAKE1, kind=_S, default="60s", syntax="timeout"),
    Directive("keepalive_time", _U, TAKE1, kind=_S, default="1h", syntax="time"),
    Directive(
        "health_check",
        _U,
        Arity(0, -1),
        kind=_S,
        note="wsgate's",
        syntax="[interval=time] [timeout=time] [fails=n] [passes=n] [uri=uri] "
        "[type=http|websocket] [status=code,...]",
    ),
)
