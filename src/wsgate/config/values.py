"""Parsers for directive values that need more than a number: addresses, ``listen``,
``server_name`` and regexes (PCRE syntax translated to Python's ``re``)."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

from wsgate.config.model import Listen, Server, ServerName, Source
from wsgate.config.units import parse_flag
from wsgate.errors import ConfigError

__all__ = [
    "check_default_servers",
    "config_error",
    "listen",
    "regex",
    "resolve",
    "server_name",
    "split_hostport",
]


def config_error(msg: str, src: Source) -> ConfigError:
    """nginx's ``MSG in FILE:LINE``, or ``MSG in command line`` for ``-g``."""
    if src.file == "command line":
        return ConfigError(f"{msg} in command line")
    return ConfigError(msg, src.file, src.line)


_err = config_error


def regex(pattern: str, flags: int, src: Source, names: set[str] | None = None) -> re.Pattern[str]:
    """PCRE → Python: ``(?<name>`` and ``(?'name'`` become ``(?P<name>``."""
    py = re.sub(r"\(\?<([A-Za-z_][A-Za-z0-9_]*)>", r"(?P<\1>", pattern)
    py = re.sub(r"\(\?'([A-Za-z_][A-Za-z0-9_]*)'", r"(?P<\1>", py)
    try:
        compiled = re.compile(py, flags)
    except re.error as exc:
        raise _err(f'pcre2_compile() failed: {exc} in "{pattern}"', src) from exc
    if names is not None:
        names.update(compiled.groupindex)
    return compiled


def split_hostport(text: str, default_port: int, src: Source) -> tuple[str, int, bool]:
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            raise _err(f'invalid host in "{text}"', src)
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise _err(f'invalid host in "{text}"', src)
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if port_text:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise _err(f'invalid port in "{text}"', src)
        return host, int(port_text), True
    return host, default_port, False


def resolve(text: str, default_port: int, src: Source, what: str) -> Iterator[tuple[str, int]]:
    """Addresses for ``host[:port]``: a literal IP, or every address a name resolves to."""
    if text.startswith("unix:"):
        raise _err(f"unix socket {what}s are not supported by wsgate yet", src)
    host, port, _ = split_hostport(text, default_port, src)
    if not host:
        raise _err(f'no host in "{text}"', src)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise _err(f'host not found in {what} "{text}"', src) from exc
    seen: list[tuple[str, int]] = []
    for info in infos:
        addr = (str(info[4][0]), port)
        if addr not in seen:
            seen.append(addr)
            yield addr


def listen(args: list[str], src: Source) -> Listen:
    """``listen ADDRESS[:PORT] [default_server] [ssl] [proxy_protocol] [ipv6only=on|off]``."""
    text = args[0]
    if text.startswith("unix:"):
        raise _err('"listen unix:" is not supported by wsgate yet', src)
    if text.isdigit():
        host, port = "0.0.0.0", int(text)
    else:
        if text.startswith("*:"):
            text = "0.0.0.0" + text[1:]
        host, port, given = split_hostport(text, 80, src)
        if not given and text.isdigit():
            port = int(text)
        if host not in ("0.0.0.0", "::"):
            try:
                host = str(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
            except OSError as exc:
                raise _err(f'host not found in "{args[0]}" of the "listen" directive', src) from exc
    if port > 65535:
        raise _err(f'invalid port in "{args[0]}" of the "listen" directive', src)
    default = False
    ipv6only = True
    ssl = False
    proxy_protocol = False
    for p in args[1:]:
        if p in ("default_server", "default"):
            default = True
        elif p.startswith("ipv6only="):
            flag = parse_flag(p[9:])
            if flag is None:
                raise _err(f'invalid ipv6only flags "{p[9:]}"', src)
            ipv6only = flag
        elif p == "ssl":
            ssl = True
        elif p == "proxy_protocol":
            proxy_protocol = True
        elif p in ("http2", "quic"):
            raise _err(f'"listen ... {p}" is not supported by wsgate yet', src)
        else:
            raise _err(f'invalid parameter "{p}"', src)
    return Listen(host, port, default, ipv6only, src, ssl, proxy_protocol)


def server_name(text: str, src: Source, names: set[str] | None = None) -> ServerName:
    if text.startswith("~"):
        return ServerName(text, "regex", text[1:], regex(text[1:], re.IGNORECASE, src, names))
    low = text.lower()
    if low.startswith("*."):
        return ServerName(text, "prefix_wildcard", low[1:])
    if low.startswith(".") and len(low) > 1:
        return ServerName(text, "prefix_wildcard", low, also_bare=True)
    if low.endswith(".*"):
        return ServerName(text, "suffix_wildcard", low[:-1])
    if "*" in low:
        raise _err(f'invalid server name or wildcard "{text}"', src)
    return ServerName(text, "exact", low)


def check_default_servers(servers: tuple[Server, ...]) -> None:
    seen: set[tuple[str, int]] = set()
    for server in servers:
        for listen in server.listens:
            if not listen.default_server:
                continue
            key = (listen.host, listen.port)
            if key in seen and listen.port != 0:
                where = f"[{listen.host}]" if ":" in listen.host else listen.host
                raise _err(
                    f"a duplicate default server for {where}:{listen.port}",
                    listen.source or Source("", 0),
                )
            seen.add(key)
