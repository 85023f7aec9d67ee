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

import dataclasses
import ipaddress
from typing import TYPE_CHECKING, Any

from wsgate.config.model import HealthCheck, Resolver, Upstream, UpstreamServer
from wsgate.config.template import Template
from wsgate.config.units import parse_size, parse_time
from wsgate.config.values import config_error, resolve, split_hostport
from wsgate.errors import ConfigError

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt

__all__ = [
    "ROUND_ROBIN",
    "build_upstream",
    "parse_health_check",
    "parse_keepalive",
    "parse_method",
    "parse_rebalance",
    "per_minute",
    "parse_server",
    "parse_zone",
    "finish_upstream",
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
    if any(p.startswith("service=") for p in e.args[1:]) and "resolve" not in e.args[1:]:
        raise _err(f'service upstream "{e.args[0]}" requires "resolve" parameter', e.src)
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
        elif p in ("backup", "down", "drain", "resolve"):
            params[p] = True
        elif key == "service" and eq:
            if not value:
                raise _err("service is empty", e.src)
            params["service"] = value
        else:
            raise _err(f'invalid parameter "{p}"', e.src)
    address = e.args[0]
    if params.get("resolve"):
        return _resolved_at_run_time(e, address, params)
    if address.startswith("unix:"):
        return (UpstreamServer(address, address[5:], 0, source=e.src, **params),)  # type: ignore[arg-type]
    return tuple(
        UpstreamServer(address, host, port, source=e.src, **params)  # type: ignore[arg-type]
        for host, port in resolve(address, 80, e.src, "upstream")
    )


def _resolved_at_run_time(
    e: Stmt, address: str, params: dict[str, object]
) -> tuple[UpstreamServer, ...]:
    """``server NAME resolve [service=NAME]`` (nginx 1.27.3+): "monitors changes of the IP
    addresses that correspond to a domain name of the server, and automatically modifies the
    upstream configuration without the need of restarting nginx".  An address literal is a
    plain server, as in nginx (``u.naddrs`` is not 0)."""
    service = str(params.get("service", ""))
    host, port, given = split_hostport(address, 80, e.src)
    if not host:
        raise _err(f'no host in upstream "{address}"', e.src)
    if service and given:
        raise _err(f'service upstream "{address}" may not have port', e.src)
    if _is_ip(host):
        if service:
            raise _err(f'service upstream "{address}" requires domain name', e.src)
        params.pop("resolve")
        return (UpstreamServer(address, host, port, source=e.src, **params),)  # type: ignore[arg-type]
    return (UpstreamServer(address, host, port, source=e.src, **params),)  # type: ignore[arg-type]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_zone(e: Stmt, level: Level | None = None) -> str:
    """``zone NAME [SIZE]`` (ngx_http_upstream_zone_module): the name; the size is checked
    as nginx does ("invalid zone size").  wsgate keeps a group's peers per worker, so the
    zone holds no state (docs/differences.md)."""
    if not e.args[0]:
        raise _err(f'invalid zone name "{e.args[0]}"', e.src)
    if len(e.args) == 2:
        size = parse_size(e.args[1])
        if size is None or size == 0:
            raise _err(f'invalid zone size "{e.args[1]}"', e.src)
    return e.args[0]


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


def finish_upstream(
    up: Upstream,
    resolver: Resolver | None,
    timeout: float,
    drain_time: float = 30.0,
    rebalance: float = 0.0,
) -> Upstream:
    """``ngx_http_upstream_init_round_robin`` with a zone (1.27.3+): the block's
    ``resolver``/``resolver_timeout``, else the ``http`` level's; ``resolve`` needs a zone
    and a resolver, with nginx's words."""
    resolving = any(s.resolve for s in up.servers)
    src = up.source
    assert src is not None
    if resolving and not up.zone:
        raise ConfigError(
            f'resolving names at run time requires upstream "{up.name}" in '
            f"{src.file}:{src.line} to be in shared memory"
        )
    res = up.resolver if up.resolver is not None else resolver
    if resolving and res is None:
        raise ConfigError(
            f'no resolver defined to resolve names at run time in upstream "{up.name}" in '
            f"{src.file}:{src.line}"
        )
    rt = up.resolver_timeout if up.resolver_timeout is not None else timeout
    return dataclasses.replace(
        up,
        resolver=res,
        resolver_timeout=rt,
        drain_time=up.drain_time if up.drain_time is not None else drain_time,
        rebalance=up.rebalance if up.rebalance is not None else rebalance,
    )


def per_minute(text: str) -> float | None:
    """``FRACTION/m`` as ``0.1/m`` or ``10%/m``: a positive fraction, else None (more than
    1 closes the whole group's share in less than a minute)."""
    if not text.endswith("/m"):
        return None
    number = text[:-2]
    scale = 100.0 if number.endswith("%") else 1.0
    number = number.removesuffix("%")
    if not number or not (number[0].isdigit() and number.replace(".", "", 1).isdigit()):
        return None
    value = float(number) / scale
    return value if value > 0 else None


def parse_rebalance(e: Stmt, level: Level | None = None) -> float:
    """``websocket_rebalance off | FRACTION/m``: the share of a group's open tunnels moved
    per minute when it grows, as ``0.1/m`` or ``10%/m``."""
    text = e.args[0]
    if text == "off":
        return 0.0
    value = per_minute(text)
    if value is None:
        raise _err(f'invalid value "{text}" in "{e.name}" directive', e.src)
    return value
