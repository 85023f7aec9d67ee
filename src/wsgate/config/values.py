"""Parsers for directive values that need more than a number: addresses, ``listen``,
``server_name`` and regexes (PCRE syntax translated to Python's ``re``)."""

from __future__ import annotations

import re
import socket
import warnings
from collections.abc import Iterator

from wsgate.config.model import Listen, Server, ServerName, Source
from wsgate.config.units import parse_flag
from wsgate.errors import ConfigError

__all__ = [
    "check_default_servers",
    "config_error",
    "listen",
    "pcre_to_python",
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


#: POSIX classes PCRE accepts inside ``[...]``, as Python ranges.
_POSIX = {
    "alnum": "a-zA-Z0-9",
    "alpha": "a-zA-Z",
    "ascii": "\\x00-\\x7f",
    "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "\\x21-\\x7e",
    "lower": "a-z",
    "print": "\\x20-\\x7e",
    "punct": "!-/:-@\\[-`{-~",
    "space": " \\t\\n\\r\\f\\v",
    "upper": "A-Z",
    "word": "a-zA-Z0-9_",
    "xdigit": "0-9A-Fa-f",
}
_NAMED_GROUP = re.compile(r"\(\?(?:P?<([A-Za-z_]\w*)>|'([A-Za-z_]\w*)')")
_BACKREF = re.compile(r"\\k(?:<(\w+)>|'(\w+)'|\{(\w+)\})|\\g\{?(\d+)\}?")
_POSIX_CLASS = re.compile(r"\[:(\^?)([a-z]+):\]")


def pcre_to_python(pattern: str) -> str:
    """PCRE syntax that Python's ``re`` spells differently: named groups ``(?<name>`` and
    ``(?'name'`` (``(?P<name>``), back references ``\\k<name>``/``\\k'name'``/``\\k{name}``
    and ``\\g{N}``, ``\\z`` (Python's ``\\Z``), PCRE's ``\\Z`` (end or before a final
    newline) and POSIX classes ``[[:alpha:]]`` inside brackets."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            m = _BACKREF.match(pattern, i)
            if m is not None and not in_class:
                name = m.group(1) or m.group(2) or m.group(3)
                out.append(f"(?P={name})" if name else f"\\{m.group(4)}")
                i = m.end()
                continue
            if nxt == "z" and not in_class:
                out.append("\\Z")
            elif nxt == "Z" and not in_class:
                out.append("(?=\\n?\\Z)")
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            m = _POSIX_CLASS.match(pattern, i)
            if m is not None and m.group(2) in _POSIX and not m.group(1):
                out.append(_POSIX[m.group(2)])
                i = m.end()
                continue
            if c == "]":  # a "]" first in the class was taken when it opened
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":  # a literal "]" first in a class
                out.append("\\]")
                i += 1
            continue
        m = _NAMED_GROUP.match(pattern, i) if c == "(" else None
        if m is not None:
            out.append(f"(?P<{m.group(1) or m.group(2)}>")
            i = m.end()
            continue
        out.append(c)
        i += 1
    return "".join(out)


def regex(pattern: str, flags: int, src: Source, names: set[str] | None = None) -> re.Pattern[str]:
    """A PCRE pattern compiled with Python's ``re`` (:func:`pcre_to_python`).  nginx's PCRE
    runs without UTF mode, so ``\\w``, ``\\d``, ``\\s`` and caseless matching are ASCII's
    (``re.ASCII``).  A bad pattern is nginx's ``pcre2_compile() failed`` error."""
    py = pcre_to_python(pattern)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FutureWarning on "[[" that PCRE reads fine
            compiled = re.compile(py, flags | re.ASCII)
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
