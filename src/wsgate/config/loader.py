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

from wsgate.config import tls
from wsgate.config.directives import TABLE, find
from wsgate.config.level import Level, parse_default
from wsgate.config.model import (
    CachePath,
    Config,
    DocRoot,
    HttpConfig,
    LimitConnZone,
    LimitReqZone,
    Listen,
    Location,
    LocationSettings,
    LogFormat,
    MapBlock,
    Server,
    ServerName,
    Source,
    SslServer,
    SslUpstream,
    Upstream,
)
from wsgate.config.parse import Stmt, parse_file, parse_globals
from wsgate.config.script import If, Step
from wsgate.config.table import HTTP, LOCATION, MAIN, SERVER, UPSTREAM, Directive, Kind
from wsgate.config.template import Template, TemplateError, compile_template
from wsgate.config.upstream import build_upstream, finish_upstream
from wsgate.config.values import (
    check_listens,
    config_error,
    regex,
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


# -- helpers ------------------------------------------------------------------------------------


_err = config_error


@dataclass(slots=True)
class Loader:
    prefix: str
    conf_file: str
    warnings: list[str] = field(default_factory=list)
    maps: dict[str, MapBlock] = field(default_factory=dict)
    log_formats: dict[str, LogFormat] = field(default_factory=dict)
    #: Buffered access-log files: (buffer, flush, gzip) of the first ``access_log`` naming each.
    log_buffers: dict[str, tuple[int, float | None, int]] = field(default_factory=dict)
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    conn_zones: dict[str, LimitConnZone] = field(default_factory=dict)
    req_zones: dict[str, LimitReqZone] = field(default_factory=dict)
    cache_paths: dict[str, CachePath] = field(default_factory=dict)
    templates: list[tuple[Template, Source]] = field(default_factory=list)
    #: Named captures of every regex: nginx makes them variables.
    captures: set[str] = field(default_factory=set)
    #: Variables named by ``set``.
    user_vars: set[str] = field(default_factory=set)
    #: Variables directives declare (``auth_request_set``), lowercased.
    declared: set[str] = field(default_factory=set)
    #: ``charset_map`` tables: (from, to) → 256 bytes.
    charset_maps: dict[tuple[str, str], bytes] = field(default_factory=dict)
    #: Parsed defaults, by entry (some need the log formats, so they are parsed per load).
    defaults: dict[int, object] = field(default_factory=dict)

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
    def check(self, s: Stmt, ctx: str) -> Directive | None:
        """The entry for ``s`` here (context and arguments checked); ``None`` for an accepted
        no-op directive, after its ``[warn]``."""
        d = find(s, ctx)
        if d.kind is Kind.NO_OP:
            self.warnings.append(
                d.warning.format(src=s.src)
                if d.warning
                else f'"{s.name}" directive has no effect in wsgate and is ignored in {s.src}'
            )
            return None
        return d

    def default(self, d: Directive) -> object:
        """``d``'s default, parsed once per load."""
        key = id(d)
        if key not in self.defaults:
            self.defaults[key] = parse_default(self, d)
        return self.defaults[key]

    def read(self, stmts: list[Stmt], ctx: str, level: Level) -> list[Any]:
        """One block's contents, as nginx's ``ngx_conf_parse`` reads them through the table:
        ``early`` entries first (names the rest refers to), then every setting into
        ``level``; the blocks that open a level of their own (``http``, ``server``,
        ``location``) are loaded once ``level`` is complete, and what they build is
        returned in order."""
        early = {id(s) for s in stmts if any(d.early for d in TABLE.get(s.name, ()))}
        for s in stmts:
            if id(s) in early and (d := self.check(s, ctx)) is not None:
                assert d.parse is not None
                d.parse(s, level)
        blocks: list[tuple[Stmt, Directive]] = []
        for s in stmts:
            if id(s) in early or (d := self.check(s, ctx)) is None:
                continue
            if d.kind is Kind.SETTING:
                level.set(s, d)
            else:
                blocks.append((s, d))
        built = []
        for s, d in blocks:
            assert d.parse is not None
            result = d.parse(s, level)
            if result is not None:
                built.append(result)
        return built

    # -- main ---------------------------------------------------------------------------------
    def load_main(self, stmts: list[Stmt]) -> Config:
        level = Level(self, None)
        (http_cfg,) = self.read(stmts, MAIN, level) or [HttpConfig(servers=())]
        known = set(self.maps) | self.captures | self.user_vars | self.declared
        for tpl, src in self.templates:
            for var in tpl.variables:
                if not is_known_variable(var, known):
                    raise _err(f'unknown "{var}" variable', src)
        return Config(
            file=self.conf_file,
            prefix=self.prefix,
            http=http_cfg,
            warnings=tuple(self.warnings),
            **level.collect(Config),
        )

    # -- http ---------------------------------------------------------------------------------
    def load_http(self, http: Stmt) -> HttpConfig:
        self.log_formats["combined"] = LogFormat("combined", self.template(COMBINED, http.src))
        self.log_formats["json"] = LogFormat(
            "json", self.template(JSON_FORMAT, http.src), "json", builtin=True
        )
        http_level = Level(self, None)
        servers = tuple(self.read(http.block or [], HTTP, http_level))
        check_listens(servers)
        builtin = set(self.maps) | self.captures | self.declared
        here = http_level.collect(LocationSettings)
        for name, up in self.upstreams.items():
            self.upstreams[name] = finish_upstream(
                up,
                here["resolver"],
                here["resolver_timeout"],
                here["websocket_drain_time"],
                here["websocket_rebalance"],
            )
        return HttpConfig(
            servers=servers,
            upstreams=dict(self.upstreams),
            maps=dict(self.maps),
            log_formats=dict(self.log_formats),
            limit_conn_zones=dict(self.conn_zones),
            limit_req_zones=dict(self.req_zones),
            cache_paths=dict(self.cache_paths),
            user_variables=frozenset(
                n for n in self.user_vars if not is_known_variable(n, builtin)
            ),
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
        hostnames = volatile = False
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
                volatile = True
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
            volatile,
        )

    def load_upstream(self, s: Stmt) -> None:
        name = s.args[0]
        if name in self.upstreams:
            raise _err(f'duplicate upstream "{name}"', s.src)
        level = Level(self, None)
        for e in s.block or []:
            d = self.check(e, UPSTREAM)
            if d is not None:
                level.set(e, d)
        self.upstreams[name] = build_upstream(s, level.collect(Upstream))

    # -- server -------------------------------------------------------------------------------
    def load_server(self, s: Stmt, http: Level) -> Server:
        level = Level(self, http)
        built = self.read(s.block or [], SERVER, level)
        # ngx_http_init_locations: named locations go to their own list.
        locations = tuple(loc for loc in built if not loc.is_named)
        named = tuple(loc for loc in built if loc.is_named)
        fields = level.collect(Server)
        # "If the directive is not present then either *:80 is used if nginx runs with the
        # superuser privileges, or *:8000 otherwise." (wsgate: *:80)
        listens: tuple[Listen, ...] = fields.pop("listens") or (
            Listen("0.0.0.0", 80, source=s.src),
        )
        names: tuple[ServerName, ...] = fields.pop("names")
        if len(names) == 1 and names[0].kind == "exact" and names[0].value == "":
            names = ()
        settings = self.settings(level)
        ssl_fields = level.collect(SslServer)
        ssl_server = None
        if ssl_fields["enable"]:
            # ``ssl on`` (nginx before 1.25.1): "if (sscf->enable || hc->addr_conf->ssl)" the
            # connection starts with a handshake; wsgate makes every listen of the server TLS.
            listens = tuple(dataclasses.replace(lst, ssl=True) for lst in listens)
            ssl_src = level.where(SslServer, "enable") or s.src
            ssl_server = tls.build_ssl_server(ssl_fields, ssl_src, s.src, '"ssl" directive')
        elif (ssl_listen := next((lst for lst in listens if lst.ssl), None)) is not None:
            ssl_server = tls.build_ssl_server(ssl_fields, ssl_listen.source or s.src, s.src)
        return Server(
            listens=listens,
            names=names,
            settings=settings,
            locations=locations,
            source=s.src,
            ssl=ssl_server,
            named_locations=named,
            **fields,
        )

    def settings(self, level: Level) -> LocationSettings:
        """The effective settings at ``level``; TLS towards upstreams is built (and its files
        checked) where a ``proxy_ssl_*`` directive is in force."""
        ssl_src = level.source(SslUpstream)
        proxy_ssl = SslUpstream()
        if ssl_src is not None:
            proxy_ssl = tls.build_ssl_upstream(level.collect(SslUpstream), ssl_src)
        fields = level.collect(LocationSettings)
        fields["rewrite"] = tuple(self._if_settings(step) for step in fields["rewrite"])
        if fields["root"] is None:
            # "Default: root html;", under the prefix.
            html = os.path.join(self.prefix, "html")
            fields["root"] = DocRoot(Template(html, (html,)), self.prefix)
        return LocationSettings(proxy_ssl=proxy_ssl, charset_maps=self.charset_maps, **fields)

    def _if_settings(self, step: Step) -> Step:
        """An ``if`` in a location gets the settings of the implicit location it is, merged
        with everything around it (which is complete only now); its own script is the
        block's steps, already in the location's (nginx: "the inner directives must be
        compiled to the same code array")."""
        if not isinstance(step, If) or step.level is None:
            return step
        inner = dataclasses.replace(self.settings(step.level), rewrite=())
        return dataclasses.replace(step, settings=inner, level=None)

    def load_location(self, s: Stmt, parent: Level) -> Location:
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
        # ngx_http_core_location: only the one-argument form names a location ("location
        # = @x" is an exact location that no URI matches).
        if len(args) == 1 and not modifier and name.startswith("@"):
            modifier = "@"
        outer = parent.location
        if outer is not None:
            if outer.is_exact:
                raise _err(
                    f'location "{name}" cannot be inside the exact location "{outer.name}"', s.src
                )
            if outer.is_named:
                raise _err(
                    f'location "{name}" cannot be inside the named location "{outer.name}"', s.src
                )
            if modifier == "@":
                raise _err(f'named location "{name}" can be on the server level only', s.src)
            if (
                modifier not in ("~", "~*")
                and not outer.is_regex
                and not name.startswith(outer.name)
            ):
                raise _err(f'location "{name}" is outside location "{outer.name}"', s.src)
        compiled: re.Pattern[str] | None = None
        if modifier in ("~", "~*"):
            compiled = regex(name, re.IGNORECASE if modifier == "~*" else 0, s.src, self.captures)
        # The locations inside see this one's modifier and name (its settings come last).
        here = Location(modifier, name, LocationSettings(), compiled, (), s.src)
        # "proxy_pass" may not have a URI part in a regex or a named location.
        level = Level(self, parent, regex=compiled is not None or modifier == "@", location=here)
        children = tuple(self.read(s.block or [], LOCATION, level))
        return Location(modifier, name, self.settings(level), compiled, children, s.src)


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
