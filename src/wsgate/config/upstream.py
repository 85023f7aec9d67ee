"""``upstream { }`` blocks: servers with their parameters, the balancing method, upstream
keepalive and wsgate's active ``health_check``: the parsers of the entries in
:mod:`wsgate.config.directives.upstream`, and the checks on the whole block.

Follows https://nginx.org/en/docs/http/ngx_http_upstream_module.html.  Quoted rules:

* ``backup`` — "This parameter cannot be used along with the hash, ip_hash, and random load
  balancing methods."
* ``max_fails`` — "The zero value disables the accounting of attempts."
* ``hash`` — "If the consistent parameter is specified, the ketama consistent hashing method
  will be used instead."
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wsgate.config.model import HealthCheck, Upstream, UpstreamServer
from wsgate.config.template import Template
from wsgate.config.units import parse_time
from wsgate.config.values import config_error, resolve

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt

__all__ = [
    "ROUND_ROBIN",
    "build_upstream",
    "parse_health_check",
    "parse_keepalive",
    "parse_method",
    "parse_server",
]
_err = config_error


def _number(e: Stmt, text: str, what: str) -> int:
    if not text.isdigit():
        raise _err(f'invalid parameter "{what}"', e.src)
    return int(text)


def _seconds(e: Stmt, text: str, what: str) -> float:
    value = parse_time(text)
    if value is None:
        raise _err(f'invalid parameter "{what}"', e.src)
    return value


def parse_server(e: Stmt, level: Level | None = None) -> tuple[UpstreamServer, ...]:
    """``server address [parameters]``: one peer per address the name resolves to."""
    params: dict[str, object] = {}
    for p in e.args[1:]:
        key, eq, value = p.partition("=")
        if key == "weight" and eq:
            params["weight"] = _number(e, value, p)
            if params["weight"] == 0:
                raise _err(f'invalid parameter "{p}"', e.src)
        elif key == "max_fails" and eq:
            params["max_fails"] = _number(e, value, p)
        elif key == "max_conns" and eq:
            params["max_conns"] = _number(e, value, p)
        elif key == "fail_timeout" and eq:
            params["fail_timeout"] = _seconds(e, value, p)
        elif p in ("backup", "down"):
            params[p] = True
        else:
            raise _err(f'invalid parameter "{p}"', e.src)
    address = e.args[0]
    if address.startswith("unix:"):
        return (UpstreamServer(address, address[5:], 0, source=e.src, **params),)  # type: ignore[arg-type]
    return tuple(
        UpstreamServer(address, host, port, source=e.src, **params)  # type: ignore[arg-type]
        for host, port in resolve(address, 80, e.src, "upstream")
    )


def parse_health_check(e: Stmt, level: Level | None = None) -> HealthCheck:
    """``health_check [interval=T] [timeout=T] [fails=N] [passes=N] [uri=URI]
    [type=http|websocket] [status=CODE[,CODE...]]``."""
    values: dict[str, object] = {"source": e.src}
    for p in e.args:
        key, eq, value = p.partition("=")
        if not eq:
            raise _err(f'invalid parameter "{p}"', e.src)
        if key in ("interval", "timeout"):
            values[key] = _seconds(e, value, p)
            if values[key] == 0:
                raise _err(f'invalid parameter "{p}"', e.src)
        elif key in ("fails", "passes"):
            values[key] = _number(e, value, p)
            if values[key] == 0:
                raise _err(f'invalid parameter "{p}"', e.src)
        elif key == "uri":
            if not value.startswith("/"):
                raise _err(f'invalid parameter "{p}"', e.src)
            values["uri"] = value
        elif key == "type":
            if value not in ("http", "websocket"):
                raise _err(f'invalid parameter "{p}"', e.src)
            values["kind"] = value
        elif key == "status":
            codes = value.split(",")
            if not all(c.isdigit() and 100 <= int(c) <= 599 for c in codes):
                raise _err(f'invalid parameter "{p}"', e.src)
            values["status"] = tuple(int(c) for c in codes)
        else:
            raise _err(f'invalid parameter "{p}"', e.src)
    return HealthCheck(**values)  # type: ignore[arg-type]


#: The fields a balancing method directive fills: method, hash key, consistent, random two,
#: random's method.
Method = tuple[str, Template | None, bool, bool, str]
ROUND_ROBIN: Method = ("round_robin", None, False, False, "")


def parse_method(e: Stmt, level: Level) -> Method:
    """``least_conn``, ``ip_hash``, ``hash key [consistent]``, ``random [two [least_conn]]``;
    one per upstream (nginx warns "load balancing method redefined"; wsgate refuses)."""
    if e.name == "hash":
        if len(e.args) == 2 and e.args[1] != "consistent":
            raise _err(f'invalid parameter "{e.args[1]}"', e.src)
        return ("hash", level.loader.template(e.args[0], e.src), len(e.args) == 2, False, "")
    if e.name == "random":
        if e.args and e.args[0] != "two":
            raise _err(f'invalid parameter "{e.args[0]}"', e.src)
        if len(e.args) == 2 and e.args[1] != "least_conn":
            raise _err(f'invalid parameter "{e.args[1]}"', e.src)
        return ("random", None, False, bool(e.args), "least_conn" if len(e.args) == 2 else "")
    return (e.name, None, False, False, "")


def parse_keepalive(e: Stmt, level: Level | None = None) -> int:
    """``keepalive connections`` (ngx_http_upstream_keepalive): a positive number."""
    n = _number(e, e.args[0], e.args[0])
    if n == 0:
        raise _err(f'invalid value "{e.args[0]}" in "keepalive" directive', e.src)
    return n


def build_upstream(s: Stmt, fields: dict[str, Any]) -> Upstream:
    """The :class:`Upstream` for ``upstream NAME { ... }`` from its collected fields."""
    name = s.args[0]
    if not fields["servers"]:
        raise _err(f'no servers are inside upstream "{name}"', s.src)
    method = fields["method"]
    if method in ("ip_hash", "hash", "random"):
        for server in fields["servers"]:
            if server.backup:
                raise _err(
                    f'balancing method "{method}" does not support parameter "backup"',
                    server.source or s.src,
                )
    return Upstream(name=name, source=s.src, **fields)
