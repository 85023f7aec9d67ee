"""``limit_conn_zone``/``limit_conn`` and ``limit_req_zone``/``limit_req``: parsing, worded like
nginx's ``ngx_http_limit_conn_module.c`` and ``ngx_http_limit_req_module.c``.

https://nginx.org/en/docs/http/ngx_http_limit_conn_module.html,
https://nginx.org/en/docs/http/ngx_http_limit_req_module.html.  Zones are http-level and are
loaded before the servers, so ``limit_conn``/``limit_req`` may name a zone declared later in
the file, as in nginx.

``redis=ADDRESS [redis_fail=open|closed]`` on a zone is wsgate's own (nginx open source has no
equivalent; nginx Plus shares zones between its nodes with ``sync`` and ``zone_sync``): the
zone is kept in that Redis (:mod:`wsgate.limits_redis`).  Without those parameters a zone
takes exactly nginx's arguments, and a surplus one is nginx's "invalid number of arguments".
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import re
from collections.abc import Callable

from wsgate.config.model import (
    LimitConn,
    LimitConnZone,
    LimitReq,
    LimitReqZone,
    RedisServer,
    Source,
)
from wsgate.config.parse import Stmt
from wsgate.config.template import Template
from wsgate.config.units import parse_size
from wsgate.config.values import config_error

__all__ = [
    "LIMIT_LOG_LEVELS",
    "MIN_ZONE_SIZE",
    "parse_limit_conn",
    "parse_limit_level",
    "parse_limit_req",
    "parse_limit_status",
    "parse_redis_server",
    "parse_zone",
]

_err = config_error

#: nginx refuses a zone smaller than ``8 * ngx_pagesize`` ("zone \"%V\" is too small").
MIN_ZONE_SIZE = 8 * 4096
#: ``limit_conn_log_level``/``limit_req_log_level``: "info | notice | warn | error".
LIMIT_LOG_LEVELS = ("info", "notice", "warn", "error")
#: ``nodelay``: nginx's ``NGX_MAX_INT_T_VALUE / 1000`` requests, i.e. never delayed.
_NODELAY = (2**63 - 1) // 1000

Compile = Callable[[str, Source], Template]

#: ``redis=HOST`` without a port: Redis's own.
REDIS_PORT = 6379
_HOST = re.compile(r"[A-Za-z0-9_.-]+")


def redis_installed() -> bool:
    """Whether the optional ``redis`` package (``pip install 'wsgate[redis]'``) is there; found
    without importing it, so that a configuration without ``redis=`` costs nothing."""
    return importlib.util.find_spec("redis") is not None


def parse_redis_server(text: str) -> RedisServer | str:
    """``redis=``'s ADDRESS: ``host:port``, ``host`` (port 6379), ``[v6]:port``, ``[v6]`` or
    ``unix:/path``; a :class:`RedisServer`, or what is wrong with it, in the words of nginx's
    ``ngx_parse_url`` ("invalid port", "no host"...)."""
    if text.startswith("unix:"):
        path = text[5:]
        return RedisServer(path=path) if path else "no path in the unix domain socket"
    host, port_text = text, ""
    if text.startswith("["):
        inner, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return "invalid host"
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            return "invalid IPv6 address"
        host, port_text = inner, rest[1:] if rest else ""
        if rest and not port_text:
            return "invalid port"
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        if not port_text:
            return "invalid port"
        if not host:
            return "no host"
        if not _HOST.fullmatch(host):
            return "invalid host"
    elif not text:
        return "no host"
    elif not _HOST.fullmatch(text):
        return "invalid host"
    port = REDIS_PORT
    if port_text:
        port = int(port_text) if port_text.isdigit() else 0
        if not 1 <= port <= 65535:
            return "invalid port"
    return RedisServer(host=host, port=port)


def read_redis_auth(server: RedisServer, path: str, s: Stmt) -> RedisServer:
    """``redis_auth=FILE``: the first line of FILE is ``PASSWORD`` (Redis's default user) or
    ``USERNAME PASSWORD`` (an ACL user; split at the first space, so a password with spaces
    needs the username form, ``default pass word``).  Read at each (re)load; the secret stays
    out of the configuration text, as a Kubernetes Secret mounted as a file keeps it."""
    try:
        with open(path, encoding="utf-8") as fh:
            line = fh.readline().rstrip("\r\n")
    except OSError as exc:
        raise _err(f'open() "{path}" failed ({exc.errno}: {exc.strerror})', s.src) from exc
    except UnicodeDecodeError as exc:
        raise _err(f'redis_auth file "{path}" is not UTF-8', s.src) from exc
    user, space, password = line.partition(" ")
    if not space:
        user, password = "", line
    if not password:
        raise _err(f'no password in redis_auth file "{path}"', s.src)
    return dataclasses.replace(server, username=user, password=password)


def _zone_arg(s: Stmt, text: str) -> tuple[str, int]:
    name, colon, size_text = text[5:].partition(":")
    if not colon:
        raise _err(f'invalid zone size "{text}"', s.src)
    size = parse_size(size_text)
    if size is None:
        raise _err(f'invalid zone size "{text}"', s.src)
    if size < MIN_ZONE_SIZE:
        raise _err(f'zone "{text}" is too small', s.src)
    return name, size


def parse_zone(
    s: Stmt,
    compile_: Compile,
    taken: dict[str, LimitConnZone] | dict[str, LimitReqZone],
    conf_prefix: str = "",
) -> LimitConnZone | LimitReqZone:
    """``limit_conn_zone KEY zone=NAME:SIZE`` or ``limit_req_zone KEY zone=NAME:SIZE
    rate=RATE``: "The rate is specified in requests per second (r/s). If a rate of less than
    one request per second is desired, it is specified in request per minute (r/m)."
    ``rate`` defaults to 1r/s and a bare number is per second, as in nginx.

    wsgate's ``redis=ADDRESS [redis_fail=open|closed]`` keeps the zone in Redis
    (:mod:`wsgate.limits_redis`); ``redis_fail`` (default ``open``) says what a request gets
    while Redis cannot be reached: ``open`` lets it pass uncounted, ``closed`` answers the
    limit's status; ``redis_auth=FILE`` (relative to ``conf_prefix``, the main
    configuration file's directory) holds the credentials (:func:`read_redis_auth`)."""
    is_req = s.name == "limit_req_zone"
    key = compile_(s.args[0], s.src)
    name, size, rate, scale = "", 0, 1, 1
    redis: RedisServer | None = None
    fail: str | None = None
    auth: str | None = None
    for a in s.args[1:]:
        if a.startswith("zone="):
            name, size = _zone_arg(s, a)
        elif a.startswith("redis="):
            if redis is not None:
                raise _err('"redis" parameter is duplicate', s.src)
            got = parse_redis_server(a[6:])
            if isinstance(got, str):
                raise _err(f'invalid parameter "{a}": {got}', s.src)
            redis = got
        elif a.startswith("redis_fail="):
            if fail is not None:
                raise _err('"redis_fail" parameter is duplicate', s.src)
            fail = a[11:]
            if fail not in ("open", "closed"):
                raise _err(f'invalid parameter "{a}"', s.src)
        elif a.startswith("redis_auth="):
            if auth is not None:
                raise _err('"redis_auth" parameter is duplicate', s.src)
            auth = a[11:]
            if not auth:
                raise _err(f'invalid parameter "{a}"', s.src)
        elif is_req and a.startswith("rate="):
            digits = a[5:]
            scale = 1
            if digits.endswith("r/s"):
                digits = digits[:-3]
            elif digits.endswith("r/m"):
                digits, scale = digits[:-3], 60
            rate = int(digits) if digits.isdigit() else 0
            if rate <= 0:
                raise _err(f'invalid rate "{a}"', s.src)
        else:
            raise _err(f'invalid parameter "{a}"', s.src)
    if redis is None:
        for given, what in ((fail, "redis_fail"), (auth, "redis_auth")):
            if given is not None:
                raise _err(f'"{what}" parameter requires "redis" parameter', s.src)
        if len(s.args) > (3 if is_req else 2):  # nginx's NGX_CONF_TAKE3 / NGX_CONF_TAKE2
            raise _err(f'invalid number of arguments in "{s.name}" directive', s.src)
    elif not redis_installed():
        raise _err(
            f'"redis" parameter of "{s.name}" needs the redis package: '
            "pip install 'wsgate[redis]'",
            s.src,
        )
    if not name:
        raise _err(f'"{s.name}" must have "zone" parameter', s.src)
    old = taken.get(name)
    if old is not None:
        raise _err(f'{s.name} "{name}" is already bound to key "{old.key}"', s.src)
    if redis is not None and auth is not None:
        redis = read_redis_auth(redis, auth if auth.startswith("/") else conf_prefix + auth, s)
    closed = fail == "closed"
    if is_req:
        return LimitReqZone(name, key, size, rate * 1000 // scale, s.src, redis, closed)
    return LimitConnZone(name, key, size, s.src, redis, closed)


def _unknown_zone(s: Stmt, name: str) -> Exception:
    # nginx adds a zero-size zone here and fails later with 'zero size shared memory zone
    # "NAME"' (no file:line); wsgate says so at the line that names it.
    return _err(
        f'zero size shared memory zone "{name}" (no {s.name}_zone declares it)',
        s.src,
    )


def parse_limit_conn(s: Stmt, zones: dict[str, LimitConnZone], seen: list[LimitConn]) -> LimitConn:
    """``limit_conn ZONE NUMBER``: "Sets the shared memory zone and the maximum allowed number
    of connections for a given key value.\""""
    name, number = s.args
    if name not in zones:
        raise _unknown_zone(s, name)
    n = int(number) if number.isdigit() else 0
    if n <= 0:
        raise _err(f'invalid number of connections "{number}"', s.src)
    if n > 65535:
        raise _err("connection limit must be less 65536", s.src)
    if any(lc.zone.name == name for lc in seen):
        raise _err('"limit_conn" directive is duplicate', s.src)
    return LimitConn(zones[name], n, s.src)


def parse_limit_req(s: Stmt, zones: dict[str, LimitReqZone], seen: list[LimitReq]) -> LimitReq:
    """``limit_req zone=NAME [burst=N] [nodelay | delay=N]``: "Excessive requests are delayed
    until their number exceeds the maximum burst size in which case the request is terminated
    with an error."  Burst and delay are kept in milli-requests, as nginx keeps them."""
    name, burst, delay = "", 0, 0
    for a in s.args:
        if a.startswith("zone="):
            name = a[5:]
            if name not in zones:
                raise _unknown_zone(s, name)
        elif a.startswith("burst="):
            burst = int(a[6:]) if a[6:].isdigit() else 0
            if burst <= 0:
                raise _err(f'invalid burst value "{a}"', s.src)
        elif a.startswith("delay="):
            delay = int(a[6:]) if a[6:].isdigit() else 0
            if delay <= 0:
                raise _err(f'invalid delay value "{a}"', s.src)
        elif a == "nodelay":
            delay = _NODELAY
        else:
            raise _err(f'invalid parameter "{a}"', s.src)
    if not name:
        raise _err('"limit_req" must have "zone" parameter', s.src)
    if any(lr.zone.name == name for lr in seen):
        raise _err('"limit_req" directive is duplicate', s.src)
    return LimitReq(zones[name], burst * 1000, delay * 1000, s.src)


def parse_limit_status(s: Stmt) -> int:
    """``limit_conn_status``/``limit_req_status CODE``: nginx bounds it to 400..599."""
    text = s.args[0]
    if not re.fullmatch(r"[0-9]+", text):
        # ngx_conf_set_num_slot
        raise _err(f'"{s.name}" directive invalid number', s.src)
    code = int(text)
    if not 400 <= code <= 599:
        raise _err("value must be between 400 and 599", s.src)
    return code


def parse_limit_level(s: Stmt) -> str:
    """``limit_conn_log_level``/``limit_req_log_level info | notice | warn | error``."""
    level = s.args[0]
    if level not in LIMIT_LOG_LEVELS:
        raise _err(f'invalid value "{level}"', s.src)
    return level
