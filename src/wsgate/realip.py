"""The real client address (ngx_http_realip_module); pure, no sockets.

https://nginx.org/en/docs/http/ngx_http_realip_module.html: "The
ngx_http_realip_module module is used to change the client address and optional port to
those sent in the specified header field."  The rule is nginx's
``ngx_http_get_forwarded_addr`` (``src/http/ngx_http_core_module.c``):

- nothing changes unless the connection's address is trusted (``set_real_ip_from``);
- the address is the *last* one of the header's value (comma- or space-separated); with
  ``real_ip_recursive on``, "the original client address is replaced by the last
  non-trusted address sent in the request header field", walking right to left while the
  address found so far is trusted;
- every ``X-Forwarded-For`` header is read, the last header first (the walk goes on in the
  previous one only with ``real_ip_recursive on``); ``X-Real-IP`` and any other header name
  use the first header of that name;
- an address may carry a port (``192.0.2.1:8080``, ``[2001:db8::1]:8080``,
  ``ngx_parse_addr_port``), which becomes ``$remote_port``; without one the port is 0 and
  ``$remote_port`` is empty;
- a value that is no address stops the walk: the last good address found wins, or nothing
  changes.

An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) is matched against IPv4 networks, as
``ngx_cidr_match`` does; a UNIX-domain client (``unix:``) only against ``unix:``.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence

from wsgate.config.model import Network

__all__ = ["Found", "forwarded_addr", "parse_addr", "parse_addr_port", "trusted"]

#: ``set_real_ip_from`` entries: a network, or ``None`` for ``unix:``.
Trusted = Sequence[Network | None]

_Addr = ipaddress.IPv4Address | ipaddress.IPv6Address


class Found(enum.Enum):
    """``ngx_http_get_forwarded_addr_internal``'s result codes."""

    #: ``NGX_DECLINED``: the address is not trusted, or no address was found.
    DECLINED = "declined"
    #: ``NGX_OK``: the walk used the whole value (every address in it was trusted).
    OK = "ok"
    #: ``NGX_DONE``: the walk stopped at an untrusted or unreadable entry after a change.
    DONE = "done"


def parse_addr(text: str) -> str | None:
    """``ngx_parse_addr``: an IPv4 dotted quad (``ngx_inet_addr``: four decimal parts of at
    most 255, leading zeros allowed) or an IPv6 literal, as nginx prints it; else None."""
    if not text or not text.isascii():
        return None
    if ":" not in text:
        parts = text.split(".")
        if len(parts) != 4 or not all(p.isdigit() and int(p) <= 255 for p in parts):
            return None
        return ".".join(str(int(p)) for p in parts)
    if "%" in text or "/" in text:
        return None
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        return None


def parse_addr_port(text: str) -> tuple[str, int] | None:
    """``ngx_parse_addr_port``: ``addr``, ``addr:port``, ``[addr]:port``; port 0 when absent,
    else 1..65535."""
    addr = parse_addr(text)
    if addr is not None:
        return addr, 0
    if text.startswith("["):
        close = text.find("]")
        if close == -1 or close == len(text) - 1 or text[close + 1] != ":":
            return None
        host, port_text = text[1:close], text[close + 2 :]
    else:
        host, colon, port_text = text.partition(":")
        if not colon:
            return None
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        return None
    addr = parse_addr(host)
    return None if addr is None else (addr, int(port_text))


def trusted(addr: str, proxies: Trusted) -> bool:
    """``ngx_cidr_match``: whether ``addr`` (``$remote_addr`` text) is in ``proxies``."""
    if addr.startswith("unix:"):
        return any(p is None for p in proxies)
    try:
        ip: _Addr = ipaddress.ip_address(addr)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(p is not None and p.version == ip.version and ip in p for p in proxies)


def _walk(
    addr: tuple[str, int], value: str, proxies: Trusted, recursive: bool
) -> tuple[Found, tuple[str, int]]:
    """``ngx_http_get_forwarded_addr_internal`` over one header value."""
    found = False
    n = len(value)
    while True:
        if not trusted(addr[0], proxies):
            return (Found.DONE if found else Found.DECLINED), addr
        p = n - 1
        while p > 0 and value[p] in " ,":
            p -= 1
            n -= 1
        while p > 0:
            if value[p] in " ,":
                p += 1
                break
            p -= 1
        parsed = parse_addr_port(value[max(p, 0) : n])
        if parsed is None:
            return (Found.DONE if found else Found.DECLINED), addr
        addr, found = parsed, True
        n = p - 1
        if not (recursive and p > 0):
            return Found.OK, addr


def forwarded_addr(
    addr: tuple[str, int],
    values: Sequence[str],
    proxies: Trusted,
    recursive: bool,
) -> tuple[str, int] | None:
    """The client address and port realip sets, or None to keep ``addr``.

    ``addr`` is the connection's (``$remote_addr``, ``$remote_port``); ``values`` are the
    header's values in request order: every ``X-Forwarded-For``, or the one value of
    ``X-Real-IP``, another header, or the PROXY protocol's source address.
    """
    rc = Found.DECLINED
    found = False
    for value in reversed(values):
        rc, addr = _walk(addr, value, proxies, recursive)
        if not recursive:
            break
        if rc is Found.DECLINED and found:
            rc = Found.DONE
            break
        if rc is not Found.OK:
            break
        found = True
    return None if rc is Found.DECLINED else addr
