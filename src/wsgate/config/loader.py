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

from wsgate.config import directives as D
from wsgate.config import tls
from wsgate.config.level import (
    Level,
    parse_flag_arg,
    parse_int_arg,
    parse_time_arg,
)
from wsgate.config.limits import parse_zone
from wsgate.config.model import (
    Config,
    ErrorLog,
    HttpConfig,
    LimitConnZone,
    LimitReqZone,
    Listen,
    Location,
    LogFormat,
    MapBlock,
    Server,
    ServerName,
    Source,
    Upstream,
)
from wsgate.config.parse import NGINX_DIRECTIVES, Stmt, parse_file, parse_globals
from wsgate.config.template import Template, TemplateError, compile_template
from wsgate.config.upstream import load_upstream
from wsgate.config.values import (
    check_default_servers,
    config_error,
    listen,
    regex,
    server_name,
)
from wsgate.config.variables import is_known_variable

__all__ = ["COMBINED", "DEFAULT_CONF", "JSON_FORMAT", "load"]

DEFAULT_CONF = "conf/nginx.conf"
COMBINED = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent"'
)
#: The built-in ``json`` format (a wsgate extension; a ``log_format json`` overrides it): one
#: JSON object per line, every value a string, escaped per nginx's ``escape=json``.
JSON_FORMAT = (
    '{"time":"$time_iso8601","remote_addr":"$remote_addr","request":"$request",'
    '"status":"$status","body_bytes_sent":"$body_bytes_sent","request_time":"$request_time",'
    '"upstream_addr":"$upstream_addr","upstream_status":"$upstream_status",'
    '"http_user_agent":"$http_user_agent","http_referer":"$http_referer","host":"$host"}'
)
_ZONES = ("limit_conn_zone", "limit_req_zone")
ERROR_LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")


# -- helpers ------------------------------------------------------------------------------------


_err = config_error


@dataclass(slots=True)
class Loader:
    prefix: str
    conf_file: str
    warnings: list[str] = field(default_factory=list)
    maps: dict[str, MapBlock] = field(default_factory=dict)
    log_formats: dict[str, LogFormat] = field(default_factory=dict)
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    conn_zones: dict[str, LimitConnZone] = field(default_factory=dict)
    req_zones: dict[str, LimitReqZone] = field(default_factory=dict)
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
        master = True
        workers = 1
        nofile: int | None = None
        affinity: tuple[frozenset[int], ...] | None = None
        spread = 0.0
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
                value = parse_flag_arg(s)
                if s.name == "daemon":
                    daemon = value
                else:
                    master = value
            elif s.name == "worker_processes":
                # nginx: "auto" is the number of CPUs this process may run on.
                if s.args[0] == "auto":
                    workers = len(os.sched_getaffinity(0)) or 1
                else:
                    workers = parse_int_arg(s, s.args[0])
                    if workers < 1:
                        raise _err(f'invalid value "{s.args[0]}"', s.src)
            elif s.name == "worker_shutdown_timeout":
                shutdown = parse_time_arg(s)
            elif s.name == "worker_rlimit_nofile":
                nofile = parse_int_arg(s, s.args[0])
            elif s.name == "worker_cpu_affinity":
                affinity = _cpu_affinity(s)
            elif s.name == "close_spread_time":
                spread = parse_time_arg(s)
            elif s.name == "events":
                for e in s.block or []:
                    if self.check(e, D.EVENTS) and e.name == "worker_connections":
                        worker_connections = parse_int_arg(e, e.args[0])
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
            master_process=master,
            worker_rlimit_nofile=nofile,
            worker_cpu_affinity=affinity,
            close_spread_time=spread,
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
        self.log_formats["json"] = LogFormat(
            "json", self.template(JSON_FORMAT, http.src), "json", builtin=True
        )
        # Maps, upstreams and log formats first: servers refer to them.
        for s in body:
            if s.name == "map" and self.check(s, D.HTTP):
                self.load_map(s)
            elif s.name == "upstream" and self.check(s, D.HTTP):
                self.load_upstream(s)
            elif s.name == "log_format" and self.check(s, D.HTTP):
                self.load_log_format(s)
            elif s.name in _ZONES and self.check(s, D.HTTP):
                self.load_zone(s)
        level = Level(self, None)
        server_stmts = []
        for s in body:
            if s.name in ("map", "upstream", "log_format", *_ZONES):
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
            limit_conn_zones=dict(self.conn_zones),
            limit_req_zones=dict(self.req_zones),
        )

    def load_zone(self, s: Stmt) -> None:
        """``limit_conn_zone``/``limit_req_zone`` (http level, loaded before the servers)."""
        if s.name == "limit_conn_zone":
            zone = parse_zone(s, self.template, self.conn_zones)
            assert isinstance(zone, LimitConnZone)
            self.conn_zones[zone.name] = zone
        else:
            rzone = parse_zone(s, self.template, self.req_zones)
            assert isinstance(rzone, LimitReqZone)
            self.req_zones[rzone.name] = rzone

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
        # The built-in "json" may be redefined once; "combined" may not (nginx).
        if name in self.log_formats and not self.log_formats[name].builtin:
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
            max_headers=level.get_size("max_headers", 1000),  # a count, read as get_size does
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


def _cpu_affinity(s: Stmt) -> tuple[frozenset[int], ...]:
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
        cpus = frozenset(i for i, c in enumerate(reversed(mask)) if c == "1")
        masks.append(cpus)
    return tuple(masks)
