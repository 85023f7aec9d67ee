"""One http/server/location level of directives, and nginx's merge with the outer level.

A :class:`Level` keeps what one block sets; :meth:`Level.settings` gives the effective
:class:`~wsgate.config.model.LocationSettings` after nginx's ``merge_loc_conf`` rules: most
values inherit one by one, while ``proxy_set_header``, ``access_log`` and ``allow``/``deny``
inherit all-or-nothing per level, and ``proxy_pass``, ``return``, ``stub_status`` and
``prometheus`` do not inherit at all.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from wsgate.access import parse_access_address, parse_upgrade_protocols
from wsgate.config import limits as lim
from wsgate.config import tls
from wsgate.config.model import (
    AccessLog,
    AccessRule,
    HeaderSetting,
    LimitConn,
    LimitReq,
    LocationSettings,
    ProxyPass,
    Return,
    Source,
    UpstreamServer,
)
from wsgate.config.parse import Stmt
from wsgate.config.units import parse_flag, parse_size, parse_time
from wsgate.config.values import (
    config_error,
    resolve,
    split_hostport,
)

if TYPE_CHECKING:
    from wsgate.config.loader import Loader

__all__ = ["Level", "parse_flag_arg", "parse_int_arg", "parse_size_arg", "parse_time_arg"]

_err = config_error


def parse_time_arg(s: Stmt, i: int = 0) -> float:
    value = parse_time(s.args[i])
    if value is None:
        raise _err(f'"{s.name}" directive invalid value', s.src)
    return value


def parse_size_arg(s: Stmt, text: str | None = None) -> int:
    value = parse_size(s.args[0] if text is None else text)
    if value is None:
        raise _err(f'"{s.name}" directive invalid value', s.src)
    return value


def parse_flag_arg(s: Stmt) -> bool:
    value = parse_flag(s.args[0])
    if value is None:
        raise _err(
            f'invalid value "{s.args[0]}" in "{s.name}" directive, it must be "on" or "off"', s.src
        )
    return value


def parse_int_arg(s: Stmt, text: str) -> int:
    if not text.isdigit():
        raise _err(f'invalid number "{text}" in "{s.name}" directive', s.src)
    return int(text)


class Level:
    """Directives set at one http/server/location level, and the merge with the outer level."""

    __slots__ = (
        "loader",
        "parent",
        "own",
        "headers",
        "logs",
        "rules",
        "proxy_pass_has_uri",
        "conn_limits",
        "req_limits",
    )

    def __init__(self, loader: Loader, parent: Level | None) -> None:
        self.loader = loader
        self.parent = parent
        self.own: dict[str, tuple[Any, Source]] = {}
        self.headers: list[HeaderSetting] | None = None
        self.logs: list[AccessLog] | None = None
        self.rules: list[AccessRule] | None = None
        self.proxy_pass_has_uri = False
        self.conn_limits: list[LimitConn] | None = None
        self.req_limits: list[LimitReq] | None = None

    def set(self, s: Stmt, ctx: str) -> None:
        name = s.name
        if name == "proxy_set_header":
            if self.headers is None:
                self.headers = []
            self.headers.append(HeaderSetting(s.args[0], self.loader.template(s.args[1], s.src)))
            return
        if name == "access_log":
            self.access_log(s)
            return
        if name in ("allow", "deny"):
            self.access_rule(s)
            return
        if name == "limit_conn":
            # "These directives are inherited from the previous configuration level if and
            # only if there are no limit_conn directives defined on the current level."
            self.conn_limits = self.conn_limits or []
            zones = self.loader.conn_zones
            self.conn_limits.append(lim.parse_limit_conn(s, zones, self.conn_limits))
            return
        if name == "limit_req":
            self.req_limits = self.req_limits or []
            self.req_limits.append(lim.parse_limit_req(s, self.loader.req_zones, self.req_limits))
            return
        if name == "error_log":
            raise _err('"error_log" is supported in the main context only by wsgate', s.src)
        if name in tls.MULTI:
            values = self.own.setdefault(name, ([], s.src))[0]
            values.append(self.value(s))
            return
        if name in self.own:
            raise _err(f'"{name}" directive is duplicate', s.src)
        self.own[name] = (self.value(s), s.src)

    def access_log(self, s: Stmt) -> None:
        if self.logs is None:
            self.logs = []
        if s.args[0] == "off":
            if len(s.args) > 1:
                raise _err(f'invalid parameter "{s.args[1]}"', s.src)
            return
        fmt_name = s.args[1] if len(s.args) > 1 else "combined"
        fmt = self.loader.log_formats.get(fmt_name)
        if fmt is None:
            raise _err(f'unknown log format "{fmt_name}"', s.src)
        buffer, flush, condition = 0, None, None
        for arg in s.args[2:]:
            # ngx_http_log_set_log: "If either the buffer or gzip parameter is used, writes
            # to log will be buffered."
            if arg.startswith("buffer="):
                size = parse_size(arg[7:])
                if size is None:
                    raise _err(f'invalid buffer size "{arg[7:]}"', s.src)
                buffer = size
            elif arg.startswith("flush="):
                seconds = parse_time(arg[6:])
                if seconds is None or seconds <= 0:
                    raise _err(f'invalid flush time "{arg[6:]}"', s.src)
                flush = seconds
            elif arg.startswith("if="):
                condition = self.loader.template(arg[3:], s.src)
            elif arg == "gzip" or arg.startswith("gzip="):
                raise _err(f'"{arg}" is not supported by wsgate in "access_log"', s.src)
            else:
                raise _err(f'invalid parameter "{arg}"', s.src)
        if flush is not None and not buffer:
            raise _err(f'no buffer is defined for access_log "{s.args[0]}"', s.src)
        self.logs.append(
            AccessLog(self.loader.path(s.args[0]), fmt, s.src, buffer, flush, condition)
        )

    def access_rule(self, s: Stmt) -> None:
        """``allow``/``deny``: nginx's ``ngx_http_access_rule`` (``ngx_ptocidr``), which warns
        "low address bits of %V are meaningless" and rejects anything else."""
        try:
            network, unix, low_bits = parse_access_address(s.args[0])
        except ValueError:
            raise _err(f'invalid parameter "{s.args[0]}"', s.src) from None
        if low_bits:
            self.loader.warnings.append(
                f"low address bits of {s.args[0]} are meaningless in {s.src}"
            )
        if self.rules is None:
            self.rules = []
        self.rules.append(AccessRule(s.name == "allow", network, unix, s.src))

    def value(self, s: Stmt) -> Any:
        n, a = s.name, s.args
        if n.startswith(("ssl_", "proxy_ssl_")):
            return tls.parse_value(n, a, s.src, self.loader.template, self.loader.conf_path)
        if n == "proxy_pass":
            return self.proxy_pass(s)
        if n == "proxy_http_version":
            if a[0] not in ("1.0", "1.1"):
                raise _err(
                    f'invalid value "{a[0]}" in "proxy_http_version" directive, '
                    'it must be "1.0" or "1.1"',
                    s.src,
                )
            return a[0]
        if n in (
            "proxy_connect_timeout",
            "proxy_read_timeout",
            "proxy_send_timeout",
            "send_timeout",
            "client_header_timeout",
            "proxy_next_upstream_timeout",
            "keepalive_time",
        ):
            return parse_time_arg(s)
        if n == "keepalive_timeout":
            return (parse_time_arg(s), parse_time_arg(s, 1) if len(a) > 1 else None)
        if n in ("keepalive_requests", "proxy_next_upstream_tries", "max_headers"):
            return parse_int_arg(s, a[0])
        if n in ("client_max_body_size", "client_header_buffer_size", "proxy_buffer_size"):
            return parse_size_arg(s)
        if n == "large_client_header_buffers":
            return (parse_int_arg(s, a[0]), parse_size_arg(s, a[1]))
        if n == "server_tokens":
            return parse_flag_arg(s)
        if n == "proxy_next_upstream":
            allowed = {
                "error",
                "timeout",
                "invalid_header",
                "http_500",
                "http_502",
                "http_503",
                "http_504",
                "http_403",
                "http_404",
                "http_429",
                "non_idempotent",
                "off",
            }
            for x in a:
                if x not in allowed:
                    raise _err(f'invalid value "{x}"', s.src)
            return frozenset() if "off" in a else frozenset(a)
        if n == "stub_status":
            # nginx ignores the argument that versions before 1.7.5 required ("stub_status on");
            # wsgate refuses anything else, so "stub_status off" cannot silently turn it on.
            if a and a[0] != "on":
                raise _err(
                    f'invalid value "{a[0]}" in "stub_status" directive, '
                    'wsgate accepts "stub_status;" or "stub_status on;"',
                    s.src,
                )
            return True
        if n == "prometheus":
            return True
        if n == "return":
            return self.return_(s)
        if n in ("limit_conn_status", "limit_req_status"):
            return lim.parse_limit_status(s)
        if n in ("limit_conn_log_level", "limit_req_log_level"):
            return lim.parse_limit_level(s)
        if n in ("limit_conn_dry_run", "limit_req_dry_run"):
            return parse_flag_arg(s)
        if n == "proxy_upgrade_protocols":
            try:
                return parse_upgrade_protocols(a)
            except ValueError as exc:
                raise _err(f'invalid parameter "{exc}"', s.src) from None
        raise _err(f'unknown directive "{n}"', s.src)  # pragma: no cover - table mismatch

    def return_(self, s: Stmt) -> Return:
        a = s.args
        if a[0].isdigit():
            code = int(a[0])
            if code > 999:
                raise _err(f'invalid return code "{a[0]}"', s.src)
            text = self.loader.template(a[1], s.src) if len(a) > 1 else None
            return Return(code, text, s.src)
        if len(a) > 1:
            raise _err(f'invalid return code "{a[0]}"', s.src)
        if not a[0].startswith(("http://", "https://", "$scheme")):
            raise _err(f'invalid return code "{a[0]}"', s.src)
        return Return(302, self.loader.template(a[0], s.src), s.src)

    def proxy_pass(self, s: Stmt) -> ProxyPass:
        url = s.args[0]
        if "$" in url:
            raise _err('"proxy_pass" with variables is not supported by wsgate yet', s.src)
        m = re.match(r"(?i)(https?)://", url)
        if m is None:
            raise _err(f'invalid URL prefix in "{url}"', s.src)
        scheme = m.group(1).lower()
        rest = url[m.end() :]
        if rest.startswith("unix:"):
            # "proxy_pass http://unix:/tmp/backend.socket:/uri/;" — the path ends at ':'.
            path, colon, uri_part = rest[5:].partition(":")
            if not path:
                raise _err(f'no path in the unix domain socket "{rest}"', s.src)
            uri = uri_part if colon else None
            self.proxy_pass_has_uri = uri is not None
            server = UpstreamServer(f"unix:{path}", path, 0, source=s.src)
            return ProxyPass(url, scheme, "localhost", 0, uri, servers=(server,), source=s.src)
        slash = rest.find("/")
        hostport, uri = (rest, None) if slash == -1 else (rest[:slash], rest[slash:])
        self.proxy_pass_has_uri = uri is not None
        if hostport in self.loader.upstreams:
            return ProxyPass(url, scheme, hostport, 80, uri, upstream=hostport, source=s.src)
        default_port = 443 if scheme == "https" else 80
        host, port, port_given = split_hostport(hostport, default_port, s.src)
        servers = tuple(
            UpstreamServer(hostport, h, p, source=s.src)
            for h, p in resolve(hostport, default_port, s.src, "upstream")
        )
        return ProxyPass(
            url, scheme, host, port, uri, servers=servers, port_given=port_given, source=s.src
        )

    # -- merge --------------------------------------------------------------------------------
    def lookup(self, name: str) -> Any:
        level: Level | None = self
        while level is not None:
            if name in level.own:
                return level.own[name][0]
            level = level.parent
        return None

    def first_source(self, prefix: str) -> Source | None:
        """Where the innermost directive starting with ``prefix`` was written, if any."""
        level: Level | None = self
        while level is not None:
            for name, (_, src) in level.own.items():
                if name.startswith(prefix):
                    return src
            level = level.parent
        return None

    def get_time(self, name: str, default: float) -> float:
        value = self.lookup(name)
        return default if value is None else float(value)

    def get_size(self, name: str, default: int) -> int:
        value = self.lookup(name)
        return default if value is None else int(value)

    def large_buffers(self) -> tuple[int, int]:
        value = self.lookup("large_client_header_buffers")
        return (4, 8192) if value is None else (int(value[0]), int(value[1]))

    def inherited_headers(self) -> tuple[HeaderSetting, ...]:
        level: Level | None = self
        while level is not None:
            if level.headers is not None:
                return tuple(level.headers)
            level = level.parent
        return ()

    def inherited_rules(self) -> tuple[AccessRule, ...]:
        """``ngx_http_access_merge_loc_conf``: a level with no rule takes its parent's list."""
        level: Level | None = self
        while level is not None:
            if level.rules is not None:
                return tuple(level.rules)
            level = level.parent
        return ()

    def inherited_limits(self, attr: str) -> tuple[Any, ...]:
        """``limit_conn``/``limit_req``: nginx's ``if (conf->limits.elts == NULL)
        conf->limits = prev->limits;`` (all-or-nothing per level)."""
        level: Level | None = self
        while level is not None:
            own = getattr(level, attr)
            if own is not None:
                return tuple(own)
            level = level.parent
        return ()

    def inherited_logs(self) -> tuple[AccessLog, ...]:
        level: Level | None = self
        while level is not None:
            if level.logs is not None:
                return tuple(level.logs)
            level = level.parent
        fmt = self.loader.log_formats["combined"]
        return (AccessLog(self.loader.path("logs/access.log"), fmt),)

    def settings(self, inherit_return: bool) -> LocationSettings:
        """Effective settings; ``proxy_pass`` and ``return`` are not inherited (nginx)."""
        get = self.lookup
        keepalive = get("keepalive_timeout") or (75.0, None)
        pp = self.own.get("proxy_pass")
        ret = self.own.get("return")
        kwargs: dict[str, Any] = {}
        # stub_status, prometheus and proxy_pass each set this level's content handler: the
        # last one written wins.
        handlers = [n for n in self.own if n in ("proxy_pass", "stub_status", "prometheus")]
        if handlers and handlers[-1] != "proxy_pass":
            kwargs[handlers[-1]], pp = True, None
        for name in (
            "proxy_connect_timeout",
            "proxy_read_timeout",
            "proxy_send_timeout",
            "send_timeout",
            "proxy_next_upstream_timeout",
            "keepalive_time",
        ):
            value = get(name)
            if value is not None:
                kwargs[name] = value
        for name in (
            "proxy_http_version",
            "keepalive_requests",
            "client_max_body_size",
            "proxy_next_upstream",
            "proxy_next_upstream_tries",
            "proxy_buffer_size",
            "server_tokens",
            "proxy_upgrade_protocols",
            "limit_conn_status",
            "limit_conn_log_level",
            "limit_conn_dry_run",
            "limit_req_status",
            "limit_req_log_level",
            "limit_req_dry_run",
        ):
            value = get(name)
            if value is not None:
                kwargs[name] = value
        kwargs["limit_conn"] = self.inherited_limits("conn_limits")
        kwargs["limit_req"] = self.inherited_limits("req_limits")
        ssl_src = self.first_source("proxy_ssl_")
        if ssl_src is not None:
            kwargs["proxy_ssl"] = tls.build_ssl_upstream(get, ssl_src)
        return LocationSettings(
            proxy_pass=pp[0] if pp else None,
            proxy_set_headers=self.inherited_headers(),
            keepalive_timeout=keepalive[0],
            keepalive_header=keepalive[1],
            return_=ret[0] if ret else None,
            access_logs=self.inherited_logs(),
            access_rules=self.inherited_rules(),
            **kwargs,
        )
