"""Directive trees (:mod:`wsgate.config.parse`) → the frozen model in :mod:`wsgate.config.model`.

This module checks each directive against :mod:`wsgate.config.directives`
and builds the model, merging http → server → location settings the way nginx's
``merge_loc_conf`` functions do.  Every error is a :class:`~wsgate.errors.ConfigError` worded
like nginx's ``[emerg]`` line, with file and line.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any

from wsgate.access import parse_access_address, parse_upgrade_protocols
from wsgate.config import directives as D
from wsgate.config import tls
from wsgate.config.model import (
    AccessLog,
    AccessRule,
    Config,
    ErrorLog,
    HeaderSetting,
    HttpConfig,
    Listen,
    Location,
    LocationSettings,
    LogFormat,
    MapBlock,
    ProxyPass,
    Return,
    Server,
    ServerName,
    Source,
    Upstream,
    UpstreamServer,
)
from wsgate.config.parse import NGINX_DIRECTIVES, Stmt, parse_file, parse_globals
from wsgate.config.template import Template, TemplateError, compile_template
from wsgate.config.units import parse_flag, parse_size, parse_time
from wsgate.config.upstream import load_upstream
from wsgate.config.values import (
    check_default_servers,
    config_error,
    listen,
    regex,
    resolve,
    server_name,
    split_hostport,
)
from wsgate.config.variables import is_known_variable

__all__ = ["COMBINED", "DEFAULT_CONF", "load"]

DEFAULT_CONF = "conf/nginx.conf"
COMBINED = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent"'
)
ERROR_LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")


# -- helpers ------------------------------------------------------------------------------------


_err = config_error


def _time(s: Stmt, i: int = 0) -> float:
    value = parse_time(s.args[i])
    if value is None:
        raise _err(f'"{s.name}" directive invalid value', s.src)
    return value


def _size(s: Stmt, text: str | None = None) -> int:
    value = parse_size(s.args[0] if text is None else text)
    if value is None:
        raise _err(f'"{s.name}" directive invalid value', s.src)
    return value


def _flag(s: Stmt) -> bool:
    value = parse_flag(s.args[0])
    if value is None:
        raise _err(
            f'invalid value "{s.args[0]}" in "{s.name}" directive, it must be "on" or "off"', s.src
        )
    return value


def _int(s: Stmt, text: str) -> int:
    if not text.isdigit():
        raise _err(f'invalid number "{text}" in "{s.name}" directive', s.src)
    return int(text)


@dataclass(slots=True)
class Loader:
    prefix: str
    conf_file: str
    warnings: list[str] = field(default_factory=list)
    maps: dict[str, MapBlock] = field(default_factory=dict)
    log_formats: dict[str, LogFormat] = field(default_factory=dict)
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    templates: list[tuple[Template, Source]] = field(default_factory=list)
    #: Named captures of every regex: nginx makes them variables.
    captures: set[str] = field(default_factory=set)

    def conf_path(self, p: str) -> str:
        """Paths of certificates and keys resolve against the main file's directory."""
        if os.path.isabs(p):
            return p
        return os.path.normpath(os.path.join(os.path.dirname(self.conf_file), p))

    def path(self, p: str) -> str:
        """Relative paths resolve against the prefix (nginx's ``ngx_conf_full_name``)."""
        if p == "stderr" or os.path.isabs(p):
            return p
        return os.path.normpath(os.path.join(self.prefix, p))

    def template(self, text: str, src: Source) -> Template:
        try:
            tpl = compile_template(text)
        except TemplateError as exc:
            raise _err(str(exc), src) from exc
        self.templates.append((tpl, src))
        return tpl

    # -- directive checks ---------------------------------------------------------------------
    def check(self, s: Stmt, ctx: str) -> bool:
        """Validate context and argument count; ``False`` for an accepted no-op directive."""
        spec = D.DIRECTIVES.get(s.name)
        noop = spec is None and s.name in D.NO_OP
        if spec is None:
            spec = D.NO_OP.get(s.name)
        if spec is None:
            if s.name in NGINX_DIRECTIVES:
                raise _err(f'"{s.name}" directive is not supported by wsgate', s.src)
            raise _err(f'unknown directive "{s.name}"', s.src)
        if ctx not in spec.contexts:
            raise _err(f'"{s.name}" directive is not allowed here', s.src)
        lo, hi = spec.nargs
        if len(s.args) < lo or (hi != -1 and len(s.args) > hi):
            raise _err(f'invalid number of arguments in "{s.name}" directive', s.src)
        wants_block = spec.block or (s.name == "server" and ctx == D.HTTP)
        if wants_block != (s.block is not None):
            if wants_block:
                raise _err(f'directive "{s.name}" has no opening "{{"', s.src)
            raise _err(f'directive "{s.name}" is not terminated by ";"', s.src)
        if noop:
            allowed = D.NO_OP_VALUES.get(s.name)
            if allowed is not None and s.args[0].lower() not in allowed:
                raise _err(
                    f'"{s.name} {" ".join(s.args)}" is not supported by wsgate '
                    f'(only "{s.name} {"|".join(sorted(allowed))}")',
                    s.src,
                )
            self.warnings.append(
                f'"{s.name}" directive has no effect in wsgate and is ignored in {s.src}'
            )
            return False
        return True

    # -- main ---------------------------------------------------------------------------------
    def load_main(self, stmts: list[Stmt]) -> Config:
        pid = "logs/nginx.pid"
        error_logs: list[ErrorLog] = []
        daemon = True
        workers = 1
        worker_connections = 512
        shutdown: float | None = None
        http: Stmt | None = None
        seen: dict[str, Source] = {}
        for s in stmts:
            if not self.check(s, D.MAIN):
                continue
            if s.name in seen and s.name != "error_log":
                raise _err(f'"{s.name}" directive is duplicate', s.src)
            seen[s.name] = s.src
            if s.name == "pid":
                pid = s.args[0]
            elif s.name == "error_log":
                error_logs.append(self.error_log(s))
            elif s.name in ("daemon", "master_process"):
                value = _flag(s)
                if s.name == "daemon":
                    daemon = value
            elif s.name == "worker_processes":
                if s.args[0] == "auto":
                    workers = os.cpu_count() or 1
                else:
                    workers = _int(s, s.args[0])
            elif s.name == "worker_shutdown_timeout":
                shutdown = _time(s)
            elif s.name == "events":
                for e in s.block or []:
                    if self.check(e, D.EVENTS) and e.name == "worker_connections":
                        worker_connections = _int(e, e.args[0])
            elif s.name == "http":
                http = s
        http_cfg = self.load_http(http) if http is not None else HttpConfig(servers=())
        known = set(self.maps) | self.captures
        for tpl, src in self.templates:
            for var in tpl.variables:
                if not is_known_variable(var, known):
                    raise _err(f'unknown "{var}" variable', src)
        return Config(
            file=self.conf_file,
            prefix=self.prefix,
            http=http_cfg,
            pid=self.path(pid),
            error_logs=tuple(error_logs) or (ErrorLog(self.path("logs/error.log")),),
            daemon=daemon,
            worker_processes=workers,
            worker_connections=worker_connections,
            worker_shutdown_timeout=shutdown,
            warnings=tuple(self.warnings),
        )

    def error_log(self, s: Stmt) -> ErrorLog:
        level = s.args[1] if len(s.args) > 1 else "error"
        if level not in ERROR_LEVELS:
            raise _err(f'invalid log level "{level}"', s.src)
        return ErrorLog(self.path(s.args[0]), level)

    # -- http ---------------------------------------------------------------------------------
    def load_http(self, http: Stmt) -> HttpConfig:
        body = http.block or []
        self.log_formats["combined"] = LogFormat("combined", self.template(COMBINED, http.src))
        # Maps, upstreams and log formats first: servers refer to them.
        for s in body:
            if s.name == "map" and self.check(s, D.HTTP):
                self.load_map(s)
            elif s.name == "upstream" and self.check(s, D.HTTP):
                self.load_upstream(s)
            elif s.name == "log_format" and self.check(s, D.HTTP):
                self.load_log_format(s)
        level = Level(self, None)
        server_stmts = []
        for s in body:
            if s.name in ("map", "upstream", "log_format"):
                continue
            if not self.check(s, D.HTTP):
                continue
            if s.name == "server":
                if s.block is None:
                    raise _err('directive "server" has no opening "{"', s.src)
                server_stmts.append(s)
            else:
                level.set(s, D.HTTP)
        servers = tuple(self.load_server(s, level) for s in server_stmts)
        check_default_servers(servers)
        return HttpConfig(
            servers=servers,
            upstreams=dict(self.upstreams),
            maps=dict(self.maps),
            log_formats=dict(self.log_formats),
        )

    def load_log_format(self, s: Stmt) -> None:
        name, rest = s.args[0], s.args[1:]
        escape = "default"
        if rest and rest[0].startswith("escape="):
            escape = rest[0][7:]
            if escape not in ("default", "json", "none"):
                raise _err(f'unknown log format escaping "{escape}"', s.src)
            rest = rest[1:]
        if not rest:
            raise _err('invalid number of arguments in "log_format" directive', s.src)
        if name in self.log_formats:
            raise _err(f'duplicate "log_format" name "{name}"', s.src)
        self.log_formats[name] = LogFormat(name, self.template("".join(rest), s.src), escape)

    def load_map(self, s: Stmt) -> None:
        source_value = self.template(s.args[0], s.src)
        var = s.args[1]
        if not var.startswith("$"):
            raise _err(f'invalid variable name "{var}"', s.src)
        var = var[1:].lower()
        if var in self.maps:
            raise _err(f'the duplicate "{var}" variable', s.src)
        default: Template | None = None
        hostnames = False
        exact: dict[str, Template] = {}
        regexes: list[tuple[re.Pattern[str], Template]] = []
        prefix_w: list[tuple[str, Template]] = []
        suffix_w: list[tuple[str, Template]] = []
        for e in s.block or []:
            key, args = e.name, e.args
            if key == "hostnames" and not args:
                hostnames = True
                continue
            if key == "volatile" and not args:
                continue
            if len(args) != 1:
                raise _err("invalid number of the map parameters", e.src)
            value = self.template(args[0], e.src)
            if key == "default":
                if default is not None:
                    raise _err("duplicate default map parameter", e.src)
                default = value
            elif key.startswith("~"):
                flags = re.IGNORECASE if key.startswith("~*") else 0
                regexes.append(
                    (regex(key[2:] if flags else key[1:], flags, e.src, self.captures), value)
                )
            else:
                if key.startswith("\\"):
                    key = key[1:]
                low = key.lower()
                if hostnames and low.startswith("*."):
                    prefix_w.append((low[1:], value))
                elif hostnames and low.startswith("."):
                    prefix_w.append((low, value))
                    exact.setdefault(low[1:], value)
                elif hostnames and low.endswith(".*"):
                    suffix_w.append((low[:-1], value))
                else:
                    if low in exact:
                        raise _err(f'conflicting parameter "{key}"', e.src)
                    exact[low] = value
        self.maps[var] = MapBlock(
            source_value,
            var,
            default,
            exact,
            tuple(regexes),
            hostnames,
            tuple(prefix_w),
            tuple(suffix_w),
            s.src,
        )

    def load_upstream(self, s: Stmt) -> None:
        name = s.args[0]
        if name in self.upstreams:
            raise _err(f'duplicate upstream "{name}"', s.src)
        self.upstreams[name] = load_upstream(self, s, self.check)

    # -- server -------------------------------------------------------------------------------
    def load_server(self, s: Stmt, http: Level) -> Server:
        level = Level(self, http)
        listens: list[Listen] = []
        names: list[ServerName] = []
        locations: list[Location] = []
        loc_stmts: list[Stmt] = []
        for e in s.block or []:
            if not self.check(e, D.SERVER):
                continue
            if e.name == "listen":
                listens.append(listen(e.args, e.src))
            elif e.name == "server_name":
                names.extend(server_name(a, e.src, self.captures) for a in e.args)
            elif e.name == "location":
                loc_stmts.append(e)
            else:
                level.set(e, D.SERVER)
        if not listens:
            listens.append(Listen("0.0.0.0", 80, source=s.src))
        if any(n.kind == "exact" and n.value == "" for n in names) and len(names) == 1:
            names = []
        settings = level.settings(inherit_return=False)
        for e in loc_stmts:
            locations.append(self.load_location(e, level, None))
        ssl_listen = next((lst for lst in listens if lst.ssl), None)
        ssl_server = None
        if ssl_listen is not None:
            ssl_server = tls.build_ssl_server(level.lookup, ssl_listen.source or s.src, s.src)
        return Server(
            listens=tuple(listens),
            names=tuple(names),
            settings=settings,
            locations=tuple(locations),
            client_header_timeout=level.get_time("client_header_timeout", 60.0),
            client_header_buffer_size=level.get_size("client_header_buffer_size", 1024),
            large_client_header_buffers=level.large_buffers(),
            source=s.src,
            ssl=ssl_server,
        )

    def load_location(self, s: Stmt, parent: Level, outer: Location | None) -> Location:
        args = s.args
        if len(args) == 2:
            modifier, name = args
            if modifier not in ("=", "~", "~*", "^~"):
                raise _err(f'invalid location modifier "{modifier}"', s.src)
        else:
            name = args[0]
            modifier = ""
            for m in ("=", "~*", "~", "^~"):
                if name.startswith(m) and len(name) > len(m):
                    modifier, name = m, name[len(m) :]
                    break
        if name.startswith("@"):
            raise _err('named locations ("@name") are not supported by wsgate', s.src)
        if outer is not None:
            if outer.is_exact:
                raise _err(
                    f'location "{name}" cannot be inside the exact location "{outer.name}"', s.src
                )
            if (
                modifier not in ("~", "~*")
                and not outer.is_regex
                and not name.startswith(outer.name)
            ):
                raise _err(f'location "{name}" is outside location "{outer.name}"', s.src)
        compiled: re.Pattern[str] | None = None
        if modifier in ("~", "~*"):
            compiled = regex(name, re.IGNORECASE if modifier == "~*" else 0, s.src, self.captures)
        level = Level(self, parent)
        nested: list[Stmt] = []
        for e in s.block or []:
            if not self.check(e, D.LOCATION):
                continue
            if e.name == "location":
                nested.append(e)
            else:
                level.set(e, D.LOCATION)
        pp = level.own.get("proxy_pass")
        if pp is not None and compiled is not None and level.proxy_pass_has_uri:
            raise _err(
                '"proxy_pass" cannot have URI part in location given by regular expression, '
                'or inside named location, or inside "if" statement, or inside "limit_except" '
                "block",
                pp[1],
            )
        loc = Location(modifier, name, level.settings(inherit_return=False), compiled, (), s.src)
        children = tuple(self.load_location(e, level, loc) for e in nested)
        return Location(modifier, name, loc.settings, compiled, children, s.src)


class Level:
    """Directives set at one http/server/location level, and the merge with the outer level."""

    __slots__ = ("loader", "parent", "own", "headers", "logs", "rules", "proxy_pass_has_uri")

    def __init__(self, loader: Loader, parent: Level | None) -> None:
        self.loader = loader
        self.parent = parent
        self.own: dict[str, tuple[Any, Source]] = {}
        self.headers: list[HeaderSetting] | None = None
        self.logs: list[AccessLog] | None = None
        self.rules: list[AccessRule] | None = None
        self.proxy_pass_has_uri = False

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
        if len(s.args) > 2:
            raise _err(
                f'invalid parameter "{s.args[2]}" (wsgate supports '
                "access_log PATH [FORMAT] and off)",
                s.src,
            )
        self.logs.append(AccessLog(self.loader.path(s.args[0]), fmt, s.src))

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
            return _time(s)
        if n == "keepalive_timeout":
            return (_time(s), _time(s, 1) if len(a) > 1 else None)
        if n in ("keepalive_requests", "proxy_next_upstream_tries"):
            return _int(s, a[0])
        if n in ("client_max_body_size", "client_header_buffer_size", "proxy_buffer_size"):
            return _size(s)
        if n == "large_client_header_buffers":
            return (_int(s, a[0]), _size(s, a[1]))
        if n == "server_tokens":
            return _flag(s)
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
        if n == "return":
            return self.return_(s)
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
        if "stub_status" in self.own:
            # stub_status and proxy_pass both set this level's content handler: the later wins.
            names = list(self.own)
            if pp is None or names.index("stub_status") > names.index("proxy_pass"):
                kwargs["stub_status"], pp = True, None
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
        ):
            value = get(name)
            if value is not None:
                kwargs[name] = value
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


def load(path: str, prefix: str | None = None, globals_: str | None = None) -> Config:
    """Read ``path`` (relative to ``prefix``) and apply ``-g`` directives first, like nginx."""
    prefix = os.path.abspath(prefix or os.getcwd())
    full = path if os.path.isabs(path) else os.path.join(prefix, path)
    loader = Loader(prefix=prefix, conf_file=full)
    stmts: list[Stmt] = []
    if globals_:
        stmts.extend(parse_globals(globals_))
    parsed, files = parse_file(full)
    stmts.extend(parsed)
    config = loader.load_main(stmts)
    return dataclasses.replace(config, files=tuple(files))
