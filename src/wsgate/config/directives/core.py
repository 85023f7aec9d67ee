"""The core modules' directives: main, events, http, server and location
(``src/core/nginx.c``, ``src/event/ngx_event.c``, ``ngx_http_core_module.c``,
``ngx_http_log_module.c``, ``ngx_http_access_module.c``,
``ngx_http_stub_status_module.c``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from wsgate.access import parse_access_address
from wsgate.config.model import (
    AccessLog,
    AccessRule,
    Config,
    ErrorLog,
    HttpConfig,
    Listen,
    Location,
    LocationSettings,
    OpenLogFileCache,
    Server,
    ServerName,
)
from wsgate.config.table import (
    BLOCK,
    DEFAULT_SOURCE,
    EVENTS,
    FLAG,
    HSL,
    HSL_IF,
    HTTP,
    LOCATION,
    MAIN,
    NOARGS,
    ONEMORE,
    TAKE1,
    TAKE2,
    TAKE12,
    TAKE1234,
    Arity,
    Directive,
    Kind,
    Merge,
    ctx,
    enum_,
    flag,
    number,
    size,
    time,
)
from wsgate.config.units import parse_size, parse_time
from wsgate.config.values import config_error, listens, server_name

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt
    from wsgate.config.template import Template

__all__ = ["ENTRIES", "ERROR_LEVELS"]

_err = config_error
ERROR_LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")


def _temp_path(s: Stmt, level: Level) -> tuple[str, tuple[int, ...]]:
    """``ngx_conf_set_path_slot``: a directory and up to three level lengths of 1 or 2."""
    levels = []
    for a in s.args[1:]:
        n = int(a) if a.isdigit() else 0
        if not 1 <= n <= 2:
            raise _err(f'"{s.name}" directive invalid value', s.src)
        levels.append(n)
    return s.args[0], tuple(levels)


# -- main ----------------------------------------------------------------------------------------
def _pid(s: Stmt, level: Level) -> str:
    return level.loader.path(s.args[0])


def _error_log(s: Stmt, level: Level) -> tuple[ErrorLog, ...]:
    """``error_log file | stderr [level]`` (``ngx_log_set_log``, ``ngx_log_set_levels``).

    ``syslog:`` and ``memory:`` are refused by name: wsgate writes files and stderr only."""
    target = s.args[0]
    for scheme in ("syslog:", "memory:"):
        if target.startswith(scheme):
            raise _err(f'"error_log {scheme}..." is not supported by wsgate', s.src)
    name = s.args[1] if len(s.args) > 1 else "error"
    if name not in ERROR_LEVELS:
        raise _err(f'invalid log level "{name}"', s.src)
    return (ErrorLog(level.loader.path(target), name),)


def _worker_processes(s: Stmt, level: Level) -> int:
    # ngx_set_worker_processes: "auto" is the number of CPUs this process may run on.
    if s.args[0] == "auto":
        return len(os.sched_getaffinity(0)) or 1
    if not s.args[0].isascii() or not s.args[0].isdigit():
        raise _err('"worker_processes" directive invalid value', s.src)
    workers = int(s.args[0])
    if workers < 1:
        raise _err(f'invalid value "{s.args[0]}"', s.src)
    return workers


def _worker_connections(s: Stmt, level: Level) -> int:
    # ngx_event_connections: 'invalid number "%V"'.
    if not s.args[0].isascii() or not s.args[0].isdigit():
        raise _err(f'invalid number "{s.args[0]}"', s.src)
    return int(s.args[0])


def _cpu_affinity(s: Stmt, level: Level) -> tuple[frozenset[int], ...]:
    """``worker_cpu_affinity auto | cpumask ...`` (ngx_set_cpu_affinity): ``auto`` binds
    worker N to the Nth allowed CPU (returned as ``()``); each mask is a string of 0/1 whose
    rightmost character is CPU 0, one mask per worker, reused round robin."""
    if s.args[0] == "auto":
        if len(s.args) > 1:
            raise _err('"worker_cpu_affinity" with "auto" takes no mask in wsgate', s.src)
        return ()
    masks: list[frozenset[int]] = []
    for mask in s.args:
        if not mask or set(mask) - {"0", "1"}:
            raise _err(
                f'invalid character "{(set(mask) - {"0", "1"} or {""}).pop()}" in '
                f'"worker_cpu_affinity"',
                s.src,
            )
        if len(mask) > 64:
            raise _err('"worker_cpu_affinity" supports up to 64 CPUs only', s.src)
        masks.append(frozenset(i for i, c in enumerate(reversed(mask)) if c == "1"))
    return tuple(masks)


# -- http, server, location ----------------------------------------------------------------------
def _access_log(s: Stmt, level: Level) -> tuple[AccessLog, ...]:
    """``access_log path [format [buffer=size] [flush=time] [if=condition]] | off``."""
    loader = level.loader
    if s.args[0] == "off":
        if len(s.args) > 1:
            raise _err(f'invalid parameter "{s.args[1]}"', s.src)
        return ()
    fmt_name = s.args[1] if len(s.args) > 1 else "combined"
    fmt = loader.log_formats.get(fmt_name)
    if fmt is None:
        raise _err(f'unknown log format "{fmt_name}"', s.src)
    buffer, flush, condition, gzip = 0, None, None, 0
    for arg in s.args[2:]:
        # ngx_http_log_set_log: "If either the buffer or gzip parameter is used, writes
        # to log will be buffered."
        if arg.startswith("buffer="):
            value = parse_size(arg[7:])
            if value is None:
                raise _err(f'invalid buffer size "{arg[7:]}"', s.src)
            buffer = value
        elif arg.startswith("flush="):
            seconds = parse_time(arg[6:])
            if seconds is None or seconds <= 0:
                raise _err(f'invalid flush time "{arg[6:]}"', s.src)
            flush = seconds
        elif arg.startswith("if="):
            condition = loader.template(arg[3:], s.src)
        elif arg == "gzip" or arg.startswith("gzip="):
            # "the buffer size must be no more than ... 64K by default" when gzip has none.
            buffer = buffer or 64 * 1024
            gzip = 1 if arg == "gzip" else int(arg[5:]) if arg[5:].isdigit() else 0
            if not 1 <= gzip <= 9:
                raise _err(f'invalid compression level "{arg[5:]}"', s.src)
        else:
            raise _err(f'invalid parameter "{arg}"', s.src)
    if flush is not None and not buffer:
        raise _err(f'no buffer is defined for access_log "{s.args[0]}"', s.src)
    path = loader.path(s.args[0])
    name = None
    if "$" in path:
        # ngx_http_log_set_log: ngx_conf_full_name first, then the script.
        name = loader.template(path, s.src)
        if not name.variables:
            name = None
        elif buffer:
            raise _err("buffered logs cannot have variables in name", s.src)
    if buffer:
        # One buffer per file: every buffered access_log naming it must agree.
        seen = loader.log_buffers.setdefault(path, (buffer, flush, gzip))
        if seen != (buffer, flush, gzip):
            raise _err(
                f'access_log "{s.args[0]}" already defined with conflicting parameters', s.src
            )
    src = None if s.src is DEFAULT_SOURCE else s.src
    return (AccessLog(path, fmt, src, buffer, flush, condition, gzip, name),)


def _open_log_file_cache(s: Stmt, level: Level) -> OpenLogFileCache | None:
    """``open_log_file_cache max=N [inactive=time] [min_uses=N] [valid=time] | off``
    (``ngx_http_log_open_file_cache``: inactive 10s, valid 60s, min_uses 1 by default)."""
    max_, inactive, min_uses, valid, off = 0, 10.0, 1, 60.0, False
    for arg in s.args:
        key, _, value = arg.partition("=")
        parsed: float | None = None
        if key in ("max", "min_uses") and value.isdigit():
            parsed = int(value)
        elif key in ("inactive", "valid"):
            parsed = parse_time(value)
        elif arg == "off":
            off = True
            continue
        if parsed is None:
            raise _err(f'invalid "open_log_file_cache" parameter "{arg}"', s.src)
        if key == "max":
            max_ = int(parsed)
        elif key == "min_uses":
            min_uses = int(parsed)
        elif key == "inactive":
            inactive = parsed
        else:
            valid = parsed
    if off:
        return None
    if max_ == 0:
        raise _err('"open_log_file_cache" must have "max" parameter', s.src)
    return OpenLogFileCache(max_, inactive, min_uses, valid)


def _access_rule(s: Stmt, level: Level) -> tuple[AccessRule, ...]:
    """``allow``/``deny``: nginx's ``ngx_http_access_rule`` (``ngx_ptocidr``), which warns
    "low address bits of %V are meaningless" and rejects anything else."""
    try:
        network, unix, low_bits = parse_access_address(s.args[0])
    except ValueError:
        raise _err(f'invalid parameter "{s.args[0]}"', s.src) from None
    if low_bits:
        level.loader.warnings.append(f"low address bits of {s.args[0]} are meaningless in {s.src}")
    return (AccessRule(s.name == "allow", network, unix, s.src),)


def _stub_status(s: Stmt, level: Level) -> bool:
    # nginx ignores the argument that versions before 1.7.5 required ("stub_status on");
    # wsgate refuses anything else, so "stub_status off" cannot silently turn it on.
    if s.args and s.args[0] != "on":
        raise _err(
            f'invalid value "{s.args[0]}" in "stub_status" directive, '
            'wsgate accepts "stub_status;" or "stub_status on;"',
            s.src,
        )
    return True


def _keepalive_timeout(s: Stmt, level: Level) -> tuple[float, float | None]:
    """``keepalive_timeout timeout [header_timeout]``."""
    return (time(s), time(s, level, 1) if len(s.args) > 1 else None)


def _large_buffers(s: Stmt, level: Level) -> tuple[int, int]:
    """``ngx_conf_set_bufs_slot``: ``number size``."""
    if not s.args[0].isascii() or not s.args[0].isdigit():
        raise _err(f'"{s.name}" directive invalid value', s.src)
    return (int(s.args[0]), size(s, level, 1))


def _events(s: Stmt, level: Level) -> None:
    """``events { }``: its directives fill the main level's fields."""
    level.once(s)
    level.loader.read(s.block or [], EVENTS, level)


def _http(s: Stmt, level: Level) -> HttpConfig:
    level.once(s)
    return level.loader.load_http(s)


def _map(s: Stmt, level: Level) -> None:
    level.loader.load_map(s)


def _upstream(s: Stmt, level: Level) -> None:
    level.loader.load_upstream(s)


def _log_format(s: Stmt, level: Level) -> None:
    level.loader.load_log_format(s)


def _server(s: Stmt, level: Level) -> Server:
    return level.loader.load_server(s, level)


def _location(s: Stmt, level: Level) -> Location:
    return level.loader.load_location(s, level)


def _listen(s: Stmt, level: Level) -> tuple[Listen, ...]:
    return listens(s.args, s.src, level.loader.warnings)


def _server_name(s: Stmt, level: Level) -> tuple[ServerName, ...]:
    return tuple(server_name(a, s.src, level.loader.captures) for a in s.args)


def _keepalive_disable(s: Stmt, level: Level) -> frozenset[str]:
    """``keepalive_disable none | browser ...`` (``ngx_conf_set_bitmask_slot``)."""
    out: set[str] = set()
    for arg in s.args:
        if arg not in ("none", "msie6", "safari"):
            raise _err(f'invalid value "{arg}"', s.src)
        if arg != "none":
            out.add(arg)
    return frozenset(out)


_LS, _SERVER = LocationSettings, Server
_MAIN_STRUCT = "read by the loader"


def _server_tokens(s: Stmt, level: Level | None = None) -> bool:
    # ngx_http_core_server_tokens, an enum (any case): ``build`` adds the build name nginx
    # was configured with (``--build=``) after the version; wsgate has none (``wsgate -V``),
    # so ``build`` shows what ``on`` shows, as nginx's does without ``--build=``.
    value = s.args[0].lower()
    if value not in ("on", "off", "build"):
        raise _err(f'invalid value "{s.args[0]}"', s.src)
    return value != "off"


def _size_value(s: Stmt, level: Level) -> int | Template:
    """``ngx_http_set_complex_value_size_slot``: a size, or a value with variables read per
    request (``ngx_http_complex_value_size``)."""
    tpl = level.loader.template(s.args[0], s.src)
    if not tpl.is_static:
        return tpl
    return size(s, level)


ENTRIES: tuple[Directive, ...] = (
    # main (ngx_core_module, ngx_events_module)
    Directive(
        "pid",
        ctx(MAIN),
        TAKE1,
        parse=_pid,
        target=Config,
        fields=("pid",),
        default="logs/nginx.pid",
        syntax="file",
    ),
    Directive(
        "error_log",
        ctx(MAIN),
        TAKE12,
        parse=_error_log,
        target=Config,
        fields=("error_logs",),
        default="logs/error.log error",
        merge=Merge.ARRAY,
        syntax="file | stderr [level]",
        note="no `syslog:` or `memory:`",
    ),
    # "the logs of a level replace the logs of the outer level" for requests handled there;
    # several at one level all get the lines.
    Directive(
        "error_log",
        HSL,
        TAKE12,
        parse=_error_log,
        target=_LS,
        fields=("error_logs",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="file | stderr [level]",
        note="a request's lines go to its location's logs (the main context's when none); "
        "no `syslog:` or `memory:`",
    ),
    Directive(
        "daemon", ctx(MAIN), FLAG, parse=flag, target=Config, fields=("daemon",), default="on"
    ),
    Directive(
        "master_process",
        ctx(MAIN),
        FLAG,
        parse=flag,
        target=Config,
        fields=("master_process",),
        default="on",
    ),
    Directive(
        "worker_processes",
        ctx(MAIN),
        TAKE1,
        parse=_worker_processes,
        target=Config,
        fields=("worker_processes",),
        default="1",
        syntax="number | auto",
    ),
    Directive(
        "worker_shutdown_timeout",
        ctx(MAIN),
        TAKE1,
        parse=time,
        target=Config,
        fields=("worker_shutdown_timeout",),
    ),
    Directive(
        "worker_rlimit_nofile",
        ctx(MAIN),
        TAKE1,
        parse=number,
        target=Config,
        fields=("worker_rlimit_nofile",),
    ),
    Directive(
        "worker_cpu_affinity",
        ctx(MAIN),
        ONEMORE,
        parse=_cpu_affinity,
        target=Config,
        fields=("worker_cpu_affinity",),
        syntax="cpumask ... | auto",
    ),
    # wsgate: HAProxy's ``close-spread-time`` (see wsgate.server.gateway)
    Directive(
        "close_spread_time",
        ctx(MAIN),
        TAKE1,
        parse=time,
        target=Config,
        fields=("close_spread_time",),
        default="0",
        note="wsgate's",
    ),
    # wsgate: HAProxy's ``grace`` (see Gateway.stop_gracefully)
    Directive(
        "shutdown_grace",
        ctx(MAIN),
        TAKE1,
        parse=time,
        target=Config,
        fields=("shutdown_grace",),
        default="0",
        note="wsgate's",
    ),
    Directive("events", ctx(MAIN), BLOCK, kind=Kind.STRUCTURE, parse=_events, syntax="{ ... }"),
    Directive(
        "worker_connections",
        ctx("events"),
        TAKE1,
        parse=_worker_connections,
        target=Config,
        fields=("worker_connections",),
        default="512",
        syntax="number",
    ),
    Directive(
        "multi_accept",
        ctx("events"),
        FLAG,
        parse=flag,
        target=Config,
        fields=("multi_accept",),
        default="on",
        note="wsgate's default is `on` (nginx: `off`); `on`: at most 32 per readiness event",
    ),
    Directive("http", ctx(MAIN), BLOCK, kind=Kind.STRUCTURE, parse=_http, syntax="{ ... }"),
    # http: named things the servers refer to, loaded first
    Directive(
        "map",
        ctx(HTTP),
        BLOCK | TAKE2,
        kind=Kind.STRUCTURE,
        parse=_map,
        early=True,
        syntax="string $variable { ... }",
        note="exact, `~`/`~*` with captures, `default`, `hostnames`, `volatile`",
    ),
    Directive(
        "upstream",
        ctx(HTTP),
        BLOCK | TAKE1,
        kind=Kind.STRUCTURE,
        parse=_upstream,
        early=True,
        syntax="name { ... }",
    ),
    Directive(
        "log_format",
        ctx(HTTP),
        Arity(2, -1),
        kind=Kind.STRUCTURE,
        parse=_log_format,
        early=True,
        syntax="name [escape=default|json|none] string ...",
        note="built-in `combined` and `json` (wsgate's)",
    ),
    Directive(
        "server",
        ctx(HTTP),
        BLOCK,
        kind=Kind.STRUCTURE,
        parse=_server,
        syntax="{ ... }",
    ),
    # server
    Directive(
        "listen",
        ctx("server"),
        ONEMORE,
        parse=_listen,
        target=_SERVER,
        fields=("listens",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="address[:port[-port]] | port[-port] | unix:path [default_server] [ssl] "
        "[proxy_protocol] "
        "[backlog=number] [rcvbuf=size] [sndbuf=size] [deferred] [bind] [fastopen=number] "
        "[ipv6only=on|off] [reuseport] [so_keepalive=on|off|[keepidle]:[keepintvl]:[keepcnt]]",
        note="`*:80` when a server has none",
    ),
    Directive(
        "server_name",
        ctx("server"),
        ONEMORE,
        parse=_server_name,
        target=_SERVER,
        fields=("names",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="name ...",
        note="exact, `*.x`, `.x`, `x.*`, `~regex`",
    ),
    Directive(
        "location",
        ctx("server location"),
        BLOCK | TAKE12,
        kind=Kind.STRUCTURE,
        parse=_location,
        syntax="[ = | ~ | ~* | ^~ ] uri { ... }",
        note="nested too; `@name` on the server level",
    ),
    # per level settings (ngx_http_core_module)
    Directive(
        "client_header_timeout",
        ctx("http server"),
        TAKE1,
        parse=time,
        target=_SERVER,
        fields=("client_header_timeout",),
        default="60s",
    ),
    Directive(
        "client_header_buffer_size",
        ctx("http server"),
        TAKE1,
        parse=size,
        target=_SERVER,
        fields=("client_header_buffer_size",),
        default="1k",
    ),
    Directive(
        "large_client_header_buffers",
        ctx("http server"),
        TAKE2,
        parse=_large_buffers,
        target=_SERVER,
        fields=("large_client_header_buffers",),
        default="4 8k",
        syntax="number size",
    ),
    # nginx 1.29.8+: "Sets the maximum number of request header fields" (default 1000).
    Directive(
        "max_headers",
        ctx("http server"),
        TAKE1,
        parse=number,
        target=_SERVER,
        fields=("max_headers",),
        default="1000",
    ),
    Directive(
        "ignore_invalid_headers",
        ctx("http server"),
        FLAG,
        parse=flag,
        target=_SERVER,
        fields=("ignore_invalid_headers",),
        default="on",
    ),
    Directive(
        "underscores_in_headers",
        ctx("http server"),
        FLAG,
        parse=flag,
        target=_SERVER,
        fields=("underscores_in_headers",),
        default="off",
    ),
    Directive(
        "merge_slashes",
        ctx("http server"),
        FLAG,
        parse=flag,
        target=_SERVER,
        fields=("merge_slashes",),
        default="on",
    ),
    Directive(
        "send_timeout", HSL, TAKE1, parse=time, target=_LS, fields=("send_timeout",), default="60s"
    ),
    # "a timeout for reading client request body ... only for a period between two
    # successive read operations"; expiry ends the request with 408 (no response).
    Directive(
        "client_body_timeout",
        HSL,
        TAKE1,
        parse=time,
        target=_LS,
        fields=("client_body_timeout",),
        default="60s",
    ),
    Directive(
        "client_body_buffer_size",
        HSL,
        TAKE1,
        parse=size,
        target=_LS,
        fields=("client_body_buffer_size",),
        default="16k",
        note="a request body larger than this (a known length: a quarter more) goes to a "
        "temporary file",
    ),
    Directive(
        "client_body_in_file_only",
        HSL,
        TAKE1,
        parse=enum_("off", "on", "clean"),
        target=_LS,
        fields=("client_body_in_file_only",),
        default="off",
        syntax="on | clean | off",
    ),
    Directive(
        "client_body_in_single_buffer",
        HSL,
        FLAG,
        parse=flag,
        target=_LS,
        fields=("client_body_in_single_buffer",),
        default="off",
        note="a body kept in memory always is one buffer in wsgate",
    ),
    Directive(
        "client_body_temp_path",
        HSL,
        TAKE1234,
        parse=_temp_path,
        target=_LS,
        fields=("client_body_temp_path",),
        default="client_body_temp",
        syntax="path [level1 [level2 [level3]]]",
    ),
    Directive(
        "keepalive_timeout",
        HSL,
        TAKE12,
        parse=_keepalive_timeout,
        target=_LS,
        fields=("keepalive_timeout", "keepalive_header"),
        default="75s",
        syntax="timeout [header_timeout]",
    ),
    Directive(
        "keepalive_requests",
        HSL,
        TAKE1,
        parse=number,
        target=_LS,
        fields=("keepalive_requests",),
        default="1000",
    ),
    Directive(
        "keepalive_time",
        HSL,
        TAKE1,
        parse=time,
        target=_LS,
        fields=("keepalive_time",),
        default="1h",
    ),
    Directive(
        "client_max_body_size",
        HSL,
        TAKE1,
        parse=size,
        target=_LS,
        fields=("client_max_body_size",),
        default="1m",
    ),
    Directive(
        "lingering_close",
        HSL,
        TAKE1,
        parse=enum_("off", "on", "always"),
        target=_LS,
        fields=("lingering_close",),
        default="on",
    ),
    Directive(
        "lingering_time",
        HSL,
        TAKE1,
        parse=time,
        target=_LS,
        fields=("lingering_time",),
        default="30s",
    ),
    Directive(
        "lingering_timeout",
        HSL,
        TAKE1,
        parse=time,
        target=_LS,
        fields=("lingering_timeout",),
        default="5s",
    ),
    Directive(
        "keepalive_disable",
        HSL,
        ONEMORE,
        parse=_keepalive_disable,
        target=_LS,
        fields=("keepalive_disable",),
        default="msie6",
        syntax="none | browser ...",
    ),
    Directive(
        "tcp_nodelay", HSL, FLAG, parse=flag, target=_LS, fields=("tcp_nodelay",), default="on"
    ),
    # "Enables or disables adding comments to responses for MSIE clients with status
    # greater than 400 to increase the response size to 512 bytes" (Chrome too).
    Directive(
        "msie_padding",
        HSL,
        FLAG,
        parse=flag,
        target=_LS,
        fields=("msie_padding",),
        default="on",
    ),
    Directive(
        "reset_timedout_connection",
        HSL,
        FLAG,
        parse=flag,
        target=_LS,
        fields=("reset_timedout_connection",),
        default="off",
    ),
    Directive(
        "server_tokens",
        HSL,
        TAKE1,
        parse=_server_tokens,
        target=_LS,
        fields=("server_tokens",),
        default="on",
        syntax="on | off | build",
    ),
    Directive(
        "limit_rate",
        HSL_IF,
        TAKE1,
        parse=_size_value,
        target=_LS,
        fields=("limit_rate",),
        default="0",
        syntax="rate",
        note="bytes per second per response (variables allowed); "
        "not for proxied responses with `proxy_buffering off`, nor tunnels",
    ),
    Directive(
        "limit_rate_after",
        HSL_IF,
        TAKE1,
        parse=_size_value,
        target=_LS,
        fields=("limit_rate_after",),
        default="0",
        syntax="size",
    ),
    # ngx_http_log_module
    Directive(
        "access_log",
        HSL_IF,
        ONEMORE,
        parse=_access_log,
        target=_LS,
        fields=("access_logs",),
        default="logs/access.log combined",
        merge=Merge.ARRAY,
        syntax="path [format [buffer=size] [gzip[=level]] [flush=time] [if=condition]] | off",
        note="a path with variables is opened for each line (or kept by "
        "`open_log_file_cache`); wsgate creates a missing directory of a path without "
        "variables",
    ),
    Directive(
        "open_log_file_cache",
        HSL,
        Arity(1, 4),
        parse=_open_log_file_cache,
        target=_LS,
        fields=("open_log_file_cache",),
        default="off",
        syntax="max=N [inactive=time] [min_uses=N] [valid=time] | off",
    ),
    # ngx_http_access_module: both fill one list
    Directive(
        "allow",
        HSL,
        TAKE1,
        parse=_access_rule,
        target=_LS,
        fields=("access_rules",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="address | CIDR | unix: | all",
    ),
    Directive(
        "deny",
        HSL,
        TAKE1,
        parse=_access_rule,
        target=_LS,
        fields=("access_rules",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="address | CIDR | unix: | all",
    ),
    # content handlers
    Directive(
        "stub_status",
        ctx("server location"),
        Arity(0, 1),
        parse=_stub_status,
        target=_LS,
        fields=("stub_status",),
        unset=False,
        merge=Merge.HANDLER,
        syntax="[on]",
        note="`stub_status on` as before nginx 1.7.5; `off` is refused",
    ),
    # wsgate's own: a Prometheus text page (see wsgate.observability.metrics)
    Directive(
        "prometheus",
        ctx(LOCATION),
        NOARGS,
        parse=lambda s, level: True,
        target=_LS,
        fields=("prometheus",),
        unset=False,
        merge=Merge.HANDLER,
        note="wsgate's",
    ),
    # wsgate's own: a readiness page for a balancer's health check (see Gateway.stop_gracefully)
    Directive(
        "readiness",
        ctx(LOCATION),
        NOARGS,
        parse=lambda s, level: True,
        target=_LS,
        fields=("readiness",),
        unset=False,
        merge=Merge.HANDLER,
        note="wsgate's",
    ),
)
