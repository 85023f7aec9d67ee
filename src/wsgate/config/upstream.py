"""``upstream { }`` blocks: servers with their parameters, the balancing method, upstream
keepalive and wsgate's active ``health_check``.

Follows https://nginx.org/en/docs/http/ngx_http_upstream_module.html.  Quoted rules:

* ``backup`` — "This parameter cannot be used along with the hash, ip_hash, and random load
  balancing methods."
* ``max_fails`` — "The zero value disables the accounting of attempts."
* ``hash`` — "If the consistent parameter is specified, the ketama consistent hashing method
  will be used instead."
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from wsgate.config.model import HealthCheck, Source, Upstream, UpstreamServer
from wsgate.config.units import parse_time
from wsgate.config.values import config_error, resolve

if TYPE_CHECKING:
    from wsgate.config.loader import Loader
    from wsgate.config.parse import Stmt

__all__ = ["load_upstream"]

_METHODS = ("least_conn", "ip_hash", "hash", "random")
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


def _server(e: Stmt) -> list[UpstreamServer]:
    if not e.args:
        raise _err('invalid number of arguments in "server" directive', e.src)
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
        return [UpstreamServer(address, address[5:], 0, source=e.src, **params)]  # type: ignore[arg-type]
    return [
        UpstreamServer(address, host, port, source=e.src, **params)  # type: ignore[arg-type]
        for host, port in resolve(address, 80, e.src, "upstream")
    ]


def _health_check(e: Stmt) -> HealthCheck:
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


def load_upstream(loader: Loader, s: Stmt, check: Callable[[Stmt, str], object]) -> Upstream:
    """Build the :class:`Upstream` for ``upstream NAME { ... }``."""
    name = s.args[0]
    servers: list[UpstreamServer] = []
    fields: dict[str, object] = {}
    method_src: Source | None = None
    for e in s.block or []:
        if not check(e, "upstream"):
            continue
        if e.name == "server":
            servers.extend(_server(e))
        elif e.name in _METHODS:
            if method_src is not None:
                raise _err("load balancing method redefined", e.src)
            method_src = e.src
            fields["method"] = e.name
            if e.name == "hash":
                if len(e.args) == 2 and e.args[1] != "consistent":
                    raise _err(f'invalid parameter "{e.args[1]}"', e.src)
                fields["hash_key"] = loader.template(e.args[0], e.src)
                fields["consistent"] = len(e.args) == 2
            elif e.name == "random":
                if e.args and e.args[0] != "two":
                    raise _err(f'invalid parameter "{e.args[0]}"', e.src)
                fields["random_two"] = bool(e.args)
                if len(e.args) == 2:
                    if e.args[1] != "least_conn":
                        raise _err(f'invalid parameter "{e.args[1]}"', e.src)
                    fields["random_method"] = "least_conn"
        elif e.name == "keepalive":
            fields["keepalive"] = _number(e, e.args[0], e.args[0])
            if fields["keepalive"] == 0:
                raise _err(f'invalid value "{e.args[0]}" in "keepalive" directive', e.src)
        elif e.name == "keepalive_requests":
            fields["keepalive_requests"] = _number(e, e.args[0], e.args[0])
        elif e.name in ("keepalive_timeout", "keepalive_time"):
            if len(e.args) != 1:
                raise _err(f'invalid number of arguments in "{e.name}" directive', e.src)
            fields[e.name] = _seconds(e, e.args[0], e.args[0])
        elif e.name == "health_check":
            if "health_check" in fields:
                raise _err('"health_check" directive is duplicate', e.src)
            fields["health_check"] = _health_check(e)
    if not servers:
        raise _err(f'no servers are inside upstream "{name}"', s.src)
    method = str(fields.get("method", "round_robin"))
    if method in ("ip_hash", "hash", "random"):
        for server in servers:
            if server.backup:
                raise _err(
                    f'balancing method "{method}" does not support parameter "backup"',
                    server.source or s.src,
                )
    return Upstream(name, tuple(servers), s.src, **fields)  # type: ignore[arg-type]
