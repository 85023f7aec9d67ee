"""``resolver`` and ``resolver_timeout`` (ngx_http_core_module; in ``upstream`` too, nginx
1.27.3+), the name servers wsgate asks at run time for ``proxy_pass`` with variables and
for ``server ... resolve`` (:mod:`wsgate.resolver`)."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from wsgate.config.model import LocationSettings, Resolver, Upstream
from wsgate.config.table import HSL, ONEMORE, TAKE1, UPSTREAM, Directive, ctx, time
from wsgate.config.units import parse_time
from wsgate.config.values import config_error

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt

__all__ = ["ENTRIES", "parse_resolver"]

_err = config_error


def _on_off(s: Stmt, arg: str) -> bool:
    value = arg[5:]
    if value not in ("on", "off"):
        raise _err(f"invalid parameter: {arg}", s.src)
    return value == "on"


def _server(s: Stmt, text: str) -> list[tuple[str, int]]:
    """``ngx_parse_url`` with ``default_port = 53``: an address, or a name resolved now (as
    nginx resolves it when it reads the configuration)."""
    if text.startswith("["):
        end = text.find("]")
        host, rest = (text[1:end], text[end + 1 :]) if end != -1 else ("", "")
        if end == -1 or (rest and not rest.startswith(":")):
            raise _err(f'invalid host in resolver "{text}"', s.src)
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    port = 53
    if port_text or text.endswith(":"):
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise _err(f'invalid port in resolver "{text}"', s.src)
        port = int(port_text)
    if not host:
        raise _err(f'no host in resolver "{text}"', s.src)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError:
        raise _err(f'host not found in resolver "{text}"', s.src) from None
    found: list[tuple[str, int]] = []
    for info in infos:
        addr = (str(info[4][0]), port)
        if addr not in found:
            found.append(addr)
    return found


def parse_resolver(s: Stmt, level: Level | None = None) -> Resolver:
    """``ngx_resolver_create``: addresses (port 53 by default), ``valid=``, ``ipv4=``,
    ``ipv6=``, with nginx's words for bad ones.  ``status_zone=`` belongs to nginx's
    commercial API and is refused by name."""
    servers: list[tuple[str, int]] = []
    valid: float | None = None
    ipv4 = ipv6 = True
    for arg in s.args:
        if arg.startswith("valid="):
            value = parse_time(arg[6:])
            if value is None:
                raise _err(f"invalid parameter: {arg}", s.src)
            valid = float(int(value))
        elif arg.startswith("ipv4="):
            ipv4 = _on_off(s, arg)
        elif arg.startswith("ipv6="):
            ipv6 = _on_off(s, arg)
        elif arg.startswith("status_zone="):
            raise _err(
                '"status_zone" of "resolver" is not supported by wsgate (commercial edition)',
                s.src,
            )
        else:
            servers.extend(_server(s, arg))
    if not ipv4 and not ipv6:
        raise _err('"ipv4" and "ipv6" cannot both be "off"', s.src)
    if not servers:
        raise _err("no name servers defined", s.src)
    return Resolver(tuple(servers), valid, ipv4, ipv6, s.src)


_SYNTAX = "address ... [valid=time] [ipv4=on|off] [ipv6=on|off]"

ENTRIES: tuple[Directive, ...] = (
    Directive(
        "resolver",
        HSL,
        ONEMORE,
        parse=parse_resolver,
        target=LocationSettings,
        fields=("resolver",),
        syntax=_SYNTAX,
        note="asynchronous DNS (dnspython); names in proxy_pass with variables",
    ),
    Directive(
        "resolver_timeout",
        HSL,
        TAKE1,
        parse=time,
        target=LocationSettings,
        fields=("resolver_timeout",),
        default="30s",
    ),
    Directive(
        "resolver",
        ctx(UPSTREAM),
        ONEMORE,
        parse=parse_resolver,
        target=Upstream,
        fields=("resolver",),
        syntax=_SYNTAX,
        note="for `server ... resolve`; else the http level's",
    ),
    Directive(
        "resolver_timeout",
        ctx(UPSTREAM),
        TAKE1,
        parse=time,
        target=Upstream,
        fields=("resolver_timeout",),
        note="else the http level's, else 30s",
    ),
)
