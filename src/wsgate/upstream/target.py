"""A ``proxy_pass`` URL with variables, once evaluated: where the request goes (pure).

``ngx_http_proxy_eval`` (src/http/modules/ngx_http_proxy_module.c): the URL must start with
``http://`` or ``https://`` (else ``invalid URL prefix in "URL"``, 500); the rest is parsed by
``ngx_parse_url`` with ``no_resolve`` (its words on failure: ``invalid port``, ``invalid
host``, ``no host``, logged as ``ERR in upstream "URL"``, 500).  A URI part that starts with
``?`` gets a ``/`` before it.  Then ``ngx_http_upstream_init_request`` decides, in order:

1. the host names an ``upstream`` block (case-insensitively) and the URL has no port:
   that group;
2. the host is an address: one peer;
3. otherwise the name is resolved with ``resolver`` (none: ``no resolver defined to
   resolve HOST``, 502).

https://nginx.org/en/docs/http/ngx_http_proxy_module.html#proxy_pass: "Parameter value can
contain variables.  In this case, if an address is specified as a domain name, the name is
searched among the described server groups, and, if not found, is determined using a
resolver."
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["Target", "TargetError", "parse_target"]


class TargetError(ValueError):
    """The evaluated URL is not one nginx accepts; ``str()`` is nginx's error-log text."""


@dataclass(frozen=True, slots=True)
class Target:
    """An evaluated ``proxy_pass`` URL.

    ``host`` is the host as written (``[...]`` removed for IPv6), ``port`` the port (the
    scheme's when none was given, ``no_port`` then True), ``uri`` the URI part (None: none,
    the request's URI is sent), ``unix`` the socket path for ``http://unix:/path``.
    """

    scheme: str
    host: str
    port: int
    no_port: bool
    uri: str | None
    unix: str = ""

    @property
    def is_address(self) -> bool:
        """Whether ``host`` is an IP address (no resolver needed)."""
        if self.unix:
            return True
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def proxy_host(self) -> str:
        """``$proxy_host``: ``host:port`` as the URL wrote it (``ngx_http_proxy_set_vars``:
        the URL's host part, with the port only when it was given and is not the default)."""
        if self.unix:
            return "localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.no_port or self.port == default else f"{host}:{self.port}"

    @property
    def authority(self) -> str:
        """``host:port`` as in ``$upstream_addr`` and the error log's ``upstream:``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_target(url: str) -> Target:
    """Parse an evaluated ``proxy_pass`` URL; raise :class:`TargetError` with nginx's text."""
    low = url[:8].lower()
    if low.startswith("http://") and len(url) > 7:
        scheme, rest, default = "http", url[7:], 80
    elif low.startswith("https://") and len(url) > 8:
        scheme, rest, default = "https", url[8:], 443
    else:
        raise TargetError(f'invalid URL prefix in "{url}"')
    if rest[:5].lower() == "unix:":
        path, colon, uri_part = rest[5:].partition(":")
        if not path:
            raise TargetError(f'no path in the unix domain socket in upstream "{rest}"')
        return Target(scheme, "localhost", 0, True, _uri(uri_part) if colon else None, path)
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i != -1), default=-1)
    hostport, uri = (rest, None) if cut == -1 else (rest[:cut], _uri(rest[cut:]))
    if hostport.startswith("["):
        end = hostport.find("]")
        if end == -1:
            raise TargetError(f'invalid host in upstream "{rest}"')
        host, tail = hostport[1:end], hostport[end + 1 :]
        if tail and not tail.startswith(":"):
            raise TargetError(f'invalid host in upstream "{rest}"')
        port_text = tail[1:] if tail else None
    else:
        host, colon, port_text_ = hostport.partition(":")
        port_text = port_text_ if colon else None
    if not host:
        raise TargetError(f'no host in upstream "{rest}"')
    if port_text is None:
        return Target(scheme, host, default, True, uri)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise TargetError(f'invalid port in upstream "{rest}"')
    return Target(scheme, host, int(port_text), False, uri)


def _uri(part: str) -> str:
    # ngx_http_proxy_eval: 'if (url.uri.data[0] == '?')' a "/" goes before it.
    return "/" + part if part.startswith("?") else part
