"""Parsers for directive values that need more than a number: addresses, ``listen``,
``server_name`` and regexes (PCRE syntax translated to Python's ``re``)."""

from __future__ import annotations

import re
import socket
import warnings
from collections.abc import Iterator

from wsgate.config.model import Listen, Server, ServerName, Source
from wsgate.config.units import parse_seconds, parse_size
from wsgate.errors import ConfigError

__all__ = [
    "check_listens",
    "config_error",
    "listen",
    "listens",
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


def _atoi(text: str) -> int | None:
    """``ngx_atoi``: decimal digits only."""
    return int(text) if text.isascii() and text.isdigit() else None


def _so_keepalive(value: str) -> tuple[int, int, int] | None:
    """``so_keepalive=[keepidle]:[keepintvl]:[keepcnt]`` (``NGX_HAVE_KEEPALIVE_TUNABLE``):
    the two times as ``ngx_parse_time(s, 1)``, the count as ``ngx_atoi``; all empty or zero
    is invalid."""
    parts = value.split(":", 2)
    parts += [""] * (3 - len(parts))
    idle = intvl = cnt = 0
    if parts[0]:
        got = parse_seconds(parts[0])
        if got is None:
            return None
        idle = got
    if parts[1]:
        got = parse_seconds(parts[1])
        if got is None:
            return None
        intvl = got
    if parts[2]:
        got = _atoi(parts[2])
        if got is None:
            return None
        cnt = got
    if not (idle or intvl or cnt):
        return None
    return idle, intvl, cnt


_PORT_RANGE = re.compile(r"(?P<head>(?:\[[^\]]*\]:|[^:\[\]]+:)?)(?P<lo>\d+)-(?P<hi>\d+)")


def listens(args: list[str], src: Source, warnings: list[str] | None = None) -> tuple[Listen, ...]:
    """``listen``, with a port range (``127.0.0.1:8000-8009``, ``8000-8009``, nginx
    1.27.3+): one address for each port of the range, as ``ngx_http_core_listen`` adds."""
    m = _PORT_RANGE.fullmatch(args[0])
    if m is None or args[0].startswith("unix:"):
        return (listen(args, src, warnings),)
    lo, hi = int(m["lo"]), int(m["hi"])
    if not 1 <= lo <= 65535 or not 1 <= hi <= 65535:
        raise _err(f'invalid port in "{args[0]}" of the "listen" directive', src)
    if lo > hi:
        raise _err(f'invalid port range in "{args[0]}" of the "listen" directive', src)
    return tuple(
        listen([f"{m['head']}{port}", *args[1:]], src, warnings) for port in range(lo, hi + 1)
    )


def listen(args: list[str], src: Source, warnings: list[str] | None = None) -> Listen:
    """``listen address[:port] | port | unix:path [default_server] [ssl] [proxy_protocol]
    [setfib=number] [fastopen=number] [backlog=number] [rcvbuf=size] [sndbuf=size]
    [deferred] [bind] [ipv6only=on|off] [reuseport] [so_keepalive=on|off|[keepidle]:
    [keepintvl]:[keepcnt]]``, with ``ngx_http_core_listen``'s words for bad values."""
    text = args[0]
    if text.startswith("unix:"):
        if len(text) == 5:
            raise _err(
                f'no path in the unix domain socket in "{text}" of the "listen" directive', src
            )
        host, port = "unix:" + text[5:], 0
    elif text.isdigit():
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
    opts: dict[str, object] = {}
    default = ssl = proxy_protocol = http2 = False
    ipv6only = True
    for p in args[1:]:
        name, eq, value = p.partition("=")
        if p in ("default_server", "default"):
            default = True
            continue
        if p == "ssl":
            ssl = True
            continue
        if p == "proxy_protocol":
            proxy_protocol = True
            continue
        if p == "http2":
            # ngx_http_core_listen (nginx 1.25.1+): still accepted, with a warning.
            if warnings is not None:
                warnings.append(
                    'the "listen ... http2" directive is deprecated, '
                    f'use the "http2" directive instead in {src}'
                )
            http2 = True
            continue
        if p == "quic":
            raise _err(f'"listen ... {p}" is not supported by wsgate yet', src)
        if p == "bind":
            opts["bind"] = True
        elif p == "deferred":
            opts["deferred"] = True
        elif p == "reuseport":
            opts["reuseport"] = True
        elif eq and name == "backlog":
            got = _atoi(value)
            if not got:  # NGX_ERROR or 0
                raise _err(f'invalid backlog "{p}"', src)
            opts["backlog"] = got
        elif eq and name == "fastopen":
            got = _atoi(value)
            if got is None:
                raise _err(f'invalid fastopen "{p}"', src)
            opts["fastopen"] = got
        elif eq and name in ("rcvbuf", "sndbuf"):
            size = parse_size(value)
            if size is None:
                raise _err(f'invalid {name} "{p}"', src)
            opts[name] = size
        elif p.startswith("ipv6only=o") and p[10:] in ("n", "ff"):
            ipv6only = p[10:] == "n"
            opts["bind"] = True
        elif p.startswith("ipv6only=o"):
            raise _err(f'invalid ipv6only flags "{p[9:]}"', src)
        elif eq and name == "so_keepalive":
            if value == "on":
                opts["so_keepalive"] = 1
            elif value == "off":
                opts["so_keepalive"] = 2
            else:
                tunable = _so_keepalive(value)
                if tunable is None:
                    raise _err(f'invalid so_keepalive value: "{value}"', src)
                opts["so_keepalive"] = 1
                opts["keepidle"], opts["keepintvl"], opts["keepcnt"] = tunable
        elif eq and name == "setfib":
            # NGX_HAVE_SETFIB: FreeBSD only; nginx on Linux does not know the parameter.
            raise _err(f'"listen ... setfib=" is not supported by wsgate (FreeBSD only) "{p}"', src)
        elif eq and name == "accept_filter":
            # nginx on Linux: logged, and the parameter ignored (NGX_HAVE_DEFERRED_ACCEPT
            # without SO_ACCEPTFILTER).
            if warnings is not None:
                warnings.append(
                    f'accept filters "{p}" are not supported on this platform, ignored in {src}'
                )
        elif p == "multipath":
            raise _err('"listen ... multipath" is not supported by wsgate', src)
        else:
            raise _err(f'invalid parameter "{p}"', src)
    if opts:
        # Every socket option but default_server, ssl and proxy_protocol sets
        # ``lsopt.set`` and ``lsopt.bind``.
        opts["options"] = True
        opts["bind"] = True
    return Listen(host, port, default, ipv6only, src, ssl, proxy_protocol, http2, **opts)  # type: ignore[arg-type]


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


def check_listens(servers: tuple[Server, ...]) -> None:
    """nginx's ``ngx_http_add_listen``/``ngx_http_add_addresses`` checks, in the order the
    ``listen`` lines are read: one server listing an address twice is ``a duplicate listen
    ADDR``; two ``listen`` lines of an address with socket options are ``duplicate listen
    options for ADDR``; two ``default_server`` are ``a duplicate default server for ADDR``.
    (``listen ADDR:0``, wsgate's, is a socket of its own each time and is not compared.)"""
    seen: dict[tuple[str, int], tuple[list[Server], bool, bool]] = {}
    for server in servers:
        for lst in server.listens:
            if lst.port == 0 and not lst.is_unix:
                continue
            src = lst.source or Source("", 0)
            key = (lst.host, lst.port)
            entry = seen.get(key)
            if entry is None:
                seen[key] = ([server], lst.options, lst.default_server)
                continue
            owners, options, default = entry
            if any(o is server for o in owners):
                raise _err(f"a duplicate listen {lst.text}", src)
            owners.append(server)
            if lst.options:
                if options:
                    raise _err(f"duplicate listen options for {lst.text}", src)
                options = True
            if lst.default_server:
                if default:
                    raise _err(f"a duplicate default server for {lst.text}", src)
                default = True
            seen[key] = (owners, options, default)
