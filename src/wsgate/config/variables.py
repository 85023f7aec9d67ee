"""nginx variables: which names exist, and their values for one request.

The loader uses :func:`is_known_variable` to reject ``unknown "x" variable`` at load time, as
nginx does.  At run time the proxy fills a :class:`RequestContext` and templates call
:meth:`RequestContext.lookup`.  Values follow
https://nginx.org/en/docs/http/ngx_http_core_module.html#variables and
https://nginx.org/en/docs/http/ngx_http_upstream_module.html#variables.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import time
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from wsgate import __version__
from wsgate.config.model import DocRoot, ErrorLog, MapBlock
from wsgate.config.template import Template
from wsgate.http.auth import basic_credentials
from wsgate.http.fields import first_value, set_cookie_value
from wsgate.http.proxy_protocol import ProxyHeader, tlv

if TYPE_CHECKING:
    from wsgate.observability.status import StatusCounters

__all__ = [
    "FIXED_VARIABLES",
    "CaptureLookup",
    "PREFIX_VARIABLES",
    "CONNECTION_TIME",
    "UPSTREAM_BYTES",
    "WS_VARIABLES",
    "RequestContext",
    "is_known_variable",
    "request_headers_read",
]

#: ``$https`` and the ``$ssl_*`` variables of ngx_http_ssl_module, filled from ``tls``.
_TLS_VARIABLES = frozenset(
    {
        "https",
        "ssl_protocol",
        "ssl_cipher",
        "ssl_server_name",
        "ssl_client_s_dn",
        "ssl_client_verify",
        "ssl_session_reused",
        "ssl_early_data",
    }
)

#: wsgate's WebSocket tunnel figures, set when a WebSocket tunnel ends, for its access-log
#: line (:func:`wsgate.proxy.tunnel.websocket_figures`; "in" is what the client sent, "out"
#: what it was sent).  Not found ("-") for any other request.
WS_VARIABLES = frozenset(
    {
        "ws_messages_in",
        "ws_messages_out",
        "ws_bytes_in",
        "ws_bytes_out",
        "ws_close_code_client",
        "ws_close_code_upstream",
        "ws_duration",
    }
)

FIXED_VARIABLES = (
    frozenset(
        {
            "remote_addr",
            "binary_remote_addr",
            "remote_port",
            "server_addr",
            "server_port",
            "server_name",
            "server_protocol",
            "http2",
            "host",
            "hostname",
            "scheme",
            "request",
            "request_method",
            "request_uri",
            "uri",
            "document_uri",
            "args",
            "query_string",
            "is_args",
            "proxy_host",
            "proxy_port",
            "proxy_add_x_forwarded_for",
            "status",
            "time_local",
            "time_iso8601",
            "date_local",
            "date_gmt",
            "msec",
            "request_time",
            "bytes_sent",
            "body_bytes_sent",
            "request_length",
            "upstream_addr",
            "upstream_status",
            "upstream_cache_status",
            "upstream_response_time",
            "upstream_response_length",
            "upstream_connect_time",
            "upstream_header_time",
            "connection",
            "connection_requests",
            "pid",
            "pipe",
            "content_length",
            "content_type",
            "remote_user",
            "connection_time",
            "upstream_bytes_received",
            "upstream_bytes_sent",
            "request_id",
            "request_body",
            "request_body_file",
            "nginx_version",
            "limit_rate",
            # ngx_http_gzip_filter_module
            "gzip_ratio",
            # static files (ngx_http_core_module)
            "document_root",
            "realpath_root",
            "request_filename",
            # ngx_http_realip_module
            "realip_remote_addr",
            "realip_remote_port",
            # listen ... proxy_protocol
            "proxy_protocol_addr",
            "proxy_protocol_port",
            "proxy_protocol_server_addr",
            "proxy_protocol_server_port",
            # ngx_http_stub_status_module (1.3.14)
            "connections_active",
            "connections_reading",
            "connections_writing",
            "connections_waiting",
        }
    )
    | _TLS_VARIABLES
    | WS_VARIABLES
)
PREFIX_VARIABLES = (
    "http_",
    "arg_",
    "cookie_",
    "sent_http_",
    "sent_trailer_",
    "upstream_http_",
    "upstream_cookie_",
    "proxy_protocol_tlv_",
)


#: ``$1``..``$9`` (``ngx_http_script_compile``: "$0" is a variable name, and nginx has none).
_CAPTURES = frozenset("123456789")


def is_known_variable(name: str, maps: frozenset[str] | set[str]) -> bool:
    """Whether ``$name`` exists: built-in, a prefix family, a regex capture, or a map result."""
    if name in FIXED_VARIABLES or name in maps or name in _CAPTURES:
        return True
    # ngx_http_get_variable: "name->len >= v[n].name.len": ``$arg_`` is a prefix variable too.
    return any(name.startswith(p) for p in PREFIX_VARIABLES)


#: In :func:`request_headers_read`'s answer: ``$upstream_bytes_received`` or
#: ``$upstream_bytes_sent`` is read (no header name has a colon).
UPSTREAM_BYTES = "upstream:#bytes"
#: In :func:`request_headers_read`'s answer: ``$connection_time`` is read.
CONNECTION_TIME = "connection:#time"
#: In :func:`request_headers_read`'s answer: ``$upstream_connect_time`` or
#: ``$upstream_header_time`` is read.
UPSTREAM_PHASE_TIMES = "upstream:#phases"

#: Built-in variables computed from request headers (see ``_GETTERS``), and those headers.
_HEADER_VARIABLES = {
    "content_length": "content-length",
    "content_type": "content-type",
    "proxy_add_x_forwarded_for": "x-forwarded-for",
    "remote_user": "authorization",
}


#: No map names: :func:`is_known_variable` then answers "a built-in variable".
_NO_MAP_NAMES: frozenset[str] = frozenset()


def request_headers_read(
    names: Iterable[str], maps: Container[str] | None = None
) -> frozenset[str] | None:
    """The request headers (lower-case names) that the variables ``names`` are computed
    from, or None when one of them may read any header: a map result, whose value may come
    from any variable.  With ``maps`` (the map results' names), another name that is no
    built-in reads none: a variable ``set`` gave or a named capture took is kept in the
    request's variables when it is made."""
    headers: set[str] = set()
    for name in names:
        if name.startswith("http_") and len(name) > 5:
            headers.add(name[5:].replace("_", "-").lower())
        elif name.startswith("cookie_") and len(name) > 7:
            headers.add("cookie")
        elif name in ("upstream_bytes_received", "upstream_bytes_sent"):
            headers.add(UPSTREAM_BYTES)
        elif name == "connection_time":
            headers.add(CONNECTION_TIME)
        elif name in ("upstream_connect_time", "upstream_header_time"):
            headers.add(UPSTREAM_PHASE_TIMES)
        elif name.startswith("upstream_http_") and len(name) > 14:
            # An upstream response field, marked with a colon no request header has.
            headers.add("upstream:" + name[14:].replace("_", "-").lower())
        elif name.startswith("upstream_cookie_") and len(name) > 16:
            headers.add("upstream:set-cookie")
        elif name in _HEADER_VARIABLES:
            headers.add(_HEADER_VARIABLES[name])
        elif not is_known_variable(name, _NO_MAP_NAMES) and (maps is None or name in maps):
            return None  # a map
    return frozenset(headers)


#: The ``maps`` and ``tls`` of a context that has none: shared, read-only (an open tunnel
#: keeps its request's context, so every empty dict would cost 64 bytes per connection).
_NO_MAPS: Mapping[str, MapBlock] = MappingProxyType({})
_NO_TLS: Mapping[str, str] = MappingProxyType({})

_HOSTNAME = socket.gethostname()
#: Cache keys that are the request's, not map results (a space: no map name has one).
_KEPT = (" request_id", " request_body", " request_body_file")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _time_local(t: float) -> str:
    lt = time.localtime(t)
    off = lt.tm_gmtoff or 0
    sign = "+" if off >= 0 else "-"
    off = abs(off) // 60
    return (
        f"{lt.tm_mday:02d}/{_MONTHS[lt.tm_mon - 1]}/{lt.tm_year}:"
        f"{lt.tm_hour:02d}:{lt.tm_min:02d}:{lt.tm_sec:02d} {sign}{off // 60:02d}{off % 60:02d}"
    )


def _time_iso8601(t: float) -> str:
    lt = time.localtime(t)
    off = lt.tm_gmtoff or 0
    sign = "+" if off >= 0 else "-"
    off = abs(off) // 60
    return time.strftime("%Y-%m-%dT%H:%M:%S", lt) + f"{sign}{off // 60:02d}:{off % 60:02d}"


class ColdFields:
    """The fields of a :class:`RequestContext` that a request sets only for some features
    (static files, ``limit_rate``, the upstream's per-try counts and fields, ``$sent_*``),
    kept off the context itself: an open WebSocket tunnel keeps its context for as long as
    it lives, and one whose logs read none of these lets them go
    (:meth:`RequestContext.drop_cold`), 8 bytes instead of one slot each."""

    __slots__ = (
        "upstream_lengths",
        "upstream_bytes",
        "upstream_phase_times",
        "upstream_headers",
        "root",
        "add_uri_to_alias",
        "connection_start",
        "limit_rate",
        "sent_head",
        "sent_trailer",
        "proxy_host",
        "proxy_port",
        "request_length",
        "upstream_started",
        "cache_status",
        "gzip_ratio",
    )

    def __init__(self) -> None:
        #: Per try: ``$upstream_response_length``.
        self.upstream_lengths: list[str] = []
        #: Per try: [bytes received, bytes sent] (nginx's ``u->state->bytes_received``,
        #: ``bytes_sent``).
        self.upstream_bytes: list[list[int]] = []
        #: Per try: [connect time, header time] as printed ("-": not reached).
        self.upstream_phase_times: list[list[str]] = []
        #: The upstream response's header fields (``$upstream_http_*``).
        self.upstream_headers: Sequence[tuple[str, str]] = ()
        #: The location's ``root``/``alias`` (set with the location), for
        #: ``$document_root``, ``$realpath_root`` and ``$request_filename``.
        self.root: DocRoot | None = None
        #: ``r->add_uri_to_alias``: ``try_files`` found a file under a regex location's alias.
        self.add_uri_to_alias = False
        #: When the connection was accepted (wall clock; ``$connection_time``).
        self.connection_start = 0.0
        #: ``r->limit_rate`` once set (``set $limit_rate``, ``X-Accel-Limit-Rate``, or the
        #: ``limit_rate`` directive read at the first write); None: not yet.
        self.limit_rate: int | None = None
        #: The response head as sent (``$sent_http_*``; empty until then, and for a 101).
        self.sent_head = b""
        #: The trailer fields sent so far (``$sent_trailer_*``).
        self.sent_trailer: Sequence[tuple[str, str]] = ()
        #: ``$proxy_host``, ``$proxy_port`` of ``proxy_pass``.
        self.proxy_host = ""
        self.proxy_port = ""
        #: ``$request_length``.
        self.request_length = 0
        #: Loop time when the current try began (``$upstream_response_time`` counts from it).
        self.upstream_started = 0.0
        #: ``$upstream_cache_status`` ("": no cache for the request).
        self.cache_status = ""
        #: ``$gzip_ratio`` once the gzip filter has compressed the body ("" otherwise).
        self.gzip_ratio = ""


#: What a context without its own :class:`ColdFields` reads (never written: the first set
#: of a field, or the first read of a list, gives the context its own).
_SHARED_COLD = ColdFields()
_SHARED_COLD.upstream_lengths = cast("list[str]", ())
_SHARED_COLD.upstream_bytes = cast("list[list[int]]", ())
_SHARED_COLD.upstream_phase_times = cast("list[list[str]]", ())


def _cold_field(name: str, *, mutable: bool = False) -> Any:
    """A property of :class:`RequestContext` kept in its :class:`ColdFields`; a list field
    gives the context its own fields on the first read (the caller may append to it)."""

    def own(ctx: RequestContext) -> ColdFields:
        cold = ctx._cold
        if cold is _SHARED_COLD:
            cold = ctx._cold = ColdFields()
        return cold

    def get(ctx: RequestContext) -> Any:
        return getattr(own(ctx) if mutable else ctx._cold, name)

    def set_(ctx: RequestContext, value: Any) -> None:
        setattr(own(ctx), name, value)

    return property(get, set_, doc=f"``{name}`` of :class:`ColdFields`.")


class RequestContext:
    """Everything a variable can be computed from, for one request.

    The proxy sets the attributes as the request goes on (``status`` and byte counts at the end).
    Map results are computed on first use and cached for the request, as nginx caches
    non-volatile variables.
    """

    __slots__ = (
        "remote_addr",
        "remote_port",
        "realip",
        "proxy_protocol",
        "server_addr",
        "server_port",
        "server_name",
        "scheme",
        "http2",
        "method",
        "request_uri",
        "uri",
        "args",
        "version",
        "headers",
        "host",
        "request_line",
        "status",
        "start",
        "bytes_sent",
        "body_bytes_sent",
        "upstream_addrs",
        "upstream_statuses",
        "upstream_times",
        "connection",
        "connection_requests",
        "pipelined",
        "captures",
        "variables",
        "uninitialized",
        "error_logs",
        "maps",
        "tls",
        "counters",
        "_cold",
        "_cache",
    )

    def __init__(
        self,
        *,
        remote_addr: str = "",
        remote_port: int = 0,
        server_addr: str = "",
        server_port: int = 0,
        connection: int = 0,
        maps: dict[str, MapBlock] | None = None,
        start: float | None = None,
    ) -> None:
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        #: The connection's own address and port once realip has replaced them (None: not
        #: replaced), for ``$realip_remote_addr``/``$realip_remote_port``.
        self.realip: tuple[str, int] | None = None
        #: The connection's PROXY protocol header (None: none, or one without addresses).
        self.proxy_protocol: ProxyHeader | None = None
        self.server_addr = server_addr
        self.server_port = server_port
        self.server_name = ""
        self.scheme = "http"
        #: ``$http2``: "h2" (TLS) or "h2c" (cleartext) on an HTTP/2 stream, else "".
        self.http2 = ""
        self.method = ""
        self.request_uri = ""
        self.uri = ""
        self.args = ""
        self.version = "1.1"
        self.headers: Sequence[tuple[str, str]] = ()
        self.host = ""
        self.request_line = ""
        self.status = 0
        self.start = time.time() if start is None else start
        self.bytes_sent = 0
        self.body_bytes_sent = 0
        self.upstream_addrs: list[str] = []
        self.upstream_statuses: list[str] = []
        self.upstream_times: list[str] = []
        self.connection = connection
        self.connection_requests = 1
        self.pipelined = False
        #: The last regex match's ``$0``, ``$1``..``$9`` (the whole match first, as PCRE's
        #: ovector; a group that did not take part is "").
        self.captures: tuple[str, ...] = ()
        #: Values ``set`` or ``auth_request_set`` gave and named captures took (nginx's
        #: ``r->variables``), by lowercased name: they win over any other value of that name
        #: (None until the first).
        self.variables: dict[str, str] | None = None
        #: Called with the name of a variable only ``set`` makes when the request has not
        #: set it (``uninitialized_variable_warn``; None: nobody listens).
        self.uninitialized: Callable[[str], None] | None = None
        self.maps: Mapping[str, MapBlock] = maps or _NO_MAPS
        #: ``$https`` and the ``$ssl_*`` values of a TLS connection (empty for plain TCP).
        self.tls: Mapping[str, str] = _NO_TLS
        #: The gateway's ``stub_status`` counters, for ``$connections_*`` (None: all ``0``).
        self.counters: StatusCounters | None = None
        #: The ``error_log`` targets of the level handling the request (the default server's,
        #: then the chosen server's, then the location's); empty: the main context's.  The
        #: error log reads them from the context every line is logged with.
        self.error_logs: tuple[ErrorLog, ...] = ()
        #: The fields of :class:`ColdFields` (shared defaults until one is set).
        self._cold = _SHARED_COLD
        #: Map results computed so far, and ``$request_id``/``$request_body`` once known
        #: (None until the first).
        self._cache: dict[str, str] | None = None

    # The fields of :class:`ColdFields`, read and set as if they were this object's own.
    upstream_lengths = _cold_field("upstream_lengths", mutable=True)
    upstream_bytes = _cold_field("upstream_bytes", mutable=True)
    upstream_phase_times = _cold_field("upstream_phase_times", mutable=True)
    upstream_headers = _cold_field("upstream_headers")
    root = _cold_field("root")
    add_uri_to_alias = _cold_field("add_uri_to_alias")
    connection_start = _cold_field("connection_start")
    limit_rate = _cold_field("limit_rate")
    sent_head = _cold_field("sent_head")
    sent_trailer = _cold_field("sent_trailer")
    proxy_host = _cold_field("proxy_host")
    proxy_port = _cold_field("proxy_port")
    request_length = _cold_field("request_length")
    upstream_started = _cold_field("upstream_started")
    cache_status = _cold_field("cache_status")
    gzip_ratio = _cold_field("gzip_ratio")

    def own_cold_fields(self) -> None:
        """Make the :class:`ColdFields` this context reads its own copy (a subrequest's
        context starts as a copy of the main request's)."""
        shared = self._cold
        self._cold = ColdFields()
        for name in ColdFields.__slots__:
            setattr(self._cold, name, getattr(shared, name))

    def drop_cold(self) -> None:
        """Let the :class:`ColdFields` go (an open tunnel whose logs read none of them):
        they read as their defaults from now on."""
        self._cold = _SHARED_COLD

    # -- helpers -----------------------------------------------------------------------------
    def header(self, name: str) -> str | None:
        """First client header called ``name`` (case-insensitive), as nginx's ``$http_*``."""
        return first_value(self.headers, name)

    def _header_var(self, suffix: str) -> str:
        """``$http_*``: every field of that name, joined with ", " (``$http_cookie``: "; "),
        as nginx 1.23+ joins repeated fields (``ngx_http_variable_unknown_header``,
        ``ngx_http_variable_cookies``)."""
        low = suffix.lower()
        if low == "cookie":
            return "; ".join(v for k, v in self.headers if k.lower() == "cookie")
        return _field_value(self.headers, low)

    def _arg(self, name: str) -> str:
        if not name:
            return ""
        for part in self.args.split("&"):
            key, sep, value = part.partition("=")
            if key.lower() == name.lower() and sep:
                return value
            if key.lower() == name.lower():
                return ""
        return ""

    def _cookie(self, name: str) -> str:
        for value in (v for k, v in self.headers if k.lower() == "cookie"):
            for part in value.split(";"):
                key, _, val = part.strip().partition("=")
                if key == name:
                    return val
        return ""

    def invalidate(self) -> None:
        """Forget cached map results (after captures or the URI change); the request's
        ``$request_id`` and ``$request_body`` stay."""
        cache = self._cache
        if cache is not None:
            kept = {k: cache[k] for k in _KEPT if k in cache}
            self._cache = kept or None

    def request_id(self) -> str:
        """``$request_id``: "unique request identifier generated from 16 random bytes, in
        hexadecimal" (1.11.0), the same for the whole request."""
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        rid = cache.get(" request_id")
        if rid is None:
            rid = cache[" request_id"] = os.urandom(16).hex()
        return rid

    def set_websocket_figures(self, figures: Mapping[str, str]) -> None:
        """The ``$ws_*`` values of a WebSocket tunnel that ended (:data:`WS_VARIABLES`)."""
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        for name, value in figures.items():
            cache[" " + name] = value

    def set_request_body(self, body: bytes) -> None:
        """``$request_body``: "the variable's value is made available in locations processed
        by the proxy_pass ... directives when the request body was read to a memory buffer"."""
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        cache[" request_body"] = body.decode("latin-1")

    def set_request_body_file(self, path: str) -> None:
        """``$request_body_file``: "name of a temporary file with the request body"."""
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        cache[" request_body_file"] = path

    def _request_body(self) -> str:
        return "" if self._cache is None else self._cache.get(" request_body", "")

    def _request_body_file(self) -> str:
        return "" if self._cache is None else self._cache.get(" request_body_file", "")

    # -- lookup -----------------------------------------------------------------------------
    def lookup(self, name: str) -> str:
        """The value of ``$name``; unknown or unset variables are empty, as nginx logs ``-``."""
        if name.isdigit():
            i = int(name)
            return self.captures[i] if i < len(self.captures) else ""
        if self.variables is not None:
            value = self.variables.get(name.lower())
            if value is not None:
                return value
        m = self.maps.get(name)
        if m is not None:
            if m.volatile:
                return self._eval_map(m)
            cache = self._cache
            if cache is None:
                cache = self._cache = {}
            cached = cache.get(name)
            if cached is None:
                cached = cache[name] = self._eval_map(m)
            return cached
        getter = _GETTERS.get(name)
        if getter is not None:
            return getter(self)
        if name in _TLS_VARIABLES:
            return self.tls.get(name, "")
        if name.startswith("http_"):
            return self._header_var(name[5:])
        if name.startswith("arg_"):
            return self._arg(name[4:])
        if name.startswith("cookie_"):
            return self._cookie(name[7:])
        if name.startswith("sent_http_"):
            return _field_value(_head_fields(self.sent_head), name[10:])
        if name.startswith("sent_trailer_"):
            return _field_value(self.sent_trailer, name[13:])
        if name.startswith("upstream_http_"):
            return _field_value(self.upstream_headers, name[14:])
        if name.startswith("upstream_cookie_"):
            return set_cookie_value(self.upstream_headers, name[16:])
        if name.startswith("proxy_protocol_tlv_"):
            pp = self.proxy_protocol
            return "" if pp is None else (tlv(pp, name[19:]) or "")
        if self.uninitialized is not None:
            self.uninitialized(name)
        return ""

    def found_empty(self, name: str) -> bool:
        """Whether an empty ``$name`` is nginx's found-but-empty value rather than "not
        found": an access log writes ``""`` for the first and ``-`` for the second
        (``ngx_http_log_variable``).  Asked only of a value already known to be empty.

        Found although empty, as in nginx: a variable the request set (``set $x ""``,
        a named capture), a map's result (its default is the null value, found), ``$uri``
        and ``$document_uri`` once a request line was read (a URI nginx could not normalise
        is kept with length 0), ``$is_args`` (``ngx_http_variable_null_value``),
        ``$server_name``, a numbered capture of the last match, and ``$arg_*``,
        ``$cookie_*``, ``$http_*``, ``$sent_http_*`` whose argument, cookie or field is
        present with an empty value.  Everything else empty is not found (``$args``
        without arguments, a missing field, ``$upstream_*`` without an upstream,
        ``$remote_user`` without credentials, ``$ssl_*`` on plain TCP)."""
        if name.isdigit():
            return int(name) < len(self.captures)
        if self.variables is not None and name.lower() in self.variables:
            return True
        if name in self.maps or name in _FOUND_EMPTY:
            return True
        if name in ("uri", "document_uri"):
            return bool(self.request_uri)
        if name.startswith("arg_"):
            key = name[4:].lower()
            return bool(key) and any(
                p.partition("=")[0].lower() == key for p in self.args.split("&")
            )
        if name.startswith("cookie_"):
            key = name[7:]
            return any(
                part.strip().partition("=")[0] == key
                for k, v in self.headers
                if k.lower() == "cookie"
                for part in v.split(";")
            )
        if name.startswith("http_"):
            return _has_field(self.headers, name[5:].lower())
        if name.startswith("sent_http_"):
            return _has_field(_head_fields(self.sent_head), name[10:])
        return False

    def set_variable(self, name: str, value: str) -> None:
        """Set ``$name`` (lowercased) for the rest of the request (``set``,
        ``auth_request_set``, a named capture); it hides a map or built-in variable of that
        name, as nginx's explicitly set value does.  ``$args`` is set where it is kept."""
        if name == "args":
            self.args = value
            return
        if self.variables is None:
            self.variables = {}
        self.variables[name] = value

    def set_match(self, match: re.Match[str]) -> None:
        """A regex matched: ``$0``..``$9`` and its named captures (``ngx_http_regex_exec``)."""
        self.captures = (match.group(0), *(g or "" for g in match.groups()))
        named = match.re.groupindex
        if named:
            for key in named:
                self.set_variable(key, match.group(key) or "")

    def _eval_map(self, m: MapBlock) -> str:
        """ngx_http_map_find: exact (case-insensitive), wildcards (hostnames), regexes, default."""
        value = m.source_value.render(self.lookup)
        key = value.lower()
        if m.hostnames and key.endswith("."):
            key = key[:-1]
        hit = m.exact.get(key)
        if hit is not None:
            return hit.render(self.lookup)
        if m.hostnames:
            best: Template | None = None
            best_len = -1
            for suffix, tpl in m.prefix_wildcards:  # ".example.org" from "*.example.org"
                if key.endswith(suffix) and len(suffix) > best_len:
                    best, best_len = tpl, len(suffix)
            if best is None:
                for prefix, tpl in m.suffix_wildcards:  # "www." from "www.*"
                    if key.startswith(prefix) and len(prefix) > best_len:
                        best, best_len = tpl, len(prefix)
            if best is not None:
                return best.render(self.lookup)
        for regex, tpl in m.regexes:
            match = regex.search(value)
            if match is not None:
                return tpl.render(CaptureLookup(self.lookup, match).lookup)
        return m.default.render(self.lookup) if m.default is not None else ""


def _head_fields(head: bytes) -> list[tuple[str, str]]:
    """The fields of a response head (its status line left out)."""
    out: list[tuple[str, str]] = []
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(": ")
        if sep:
            out.append((name, value))
    return out


def _has_field(fields: Iterable[tuple[str, str]], suffix: str) -> bool:
    """Whether a field whose name, lowercased with ``-`` as ``_``, is ``suffix`` is there."""
    return any(k.lower().replace("-", "_") == suffix for k, _ in fields)


#: Built-in variables nginx always finds, empty or not (see ``RequestContext.found_empty``).
_FOUND_EMPTY = frozenset(("is_args", "server_name", "http2"))


def _field_value(fields: Iterable[tuple[str, str]], suffix: str) -> str:
    """``ngx_http_variable_unknown_header``: the fields whose name, lowercased with ``-``
    as ``_``, is ``suffix``, their values joined with ", "."""
    return ", ".join(v for k, v in fields if k.lower().replace("-", "_") == suffix)


class CaptureLookup:
    """Lookup for a value rendered with the captures of its own regex (a map's, a
    ``proxy_redirect``'s): ``$1``.. and named captures from ``match``, other variables from
    ``outer``."""

    __slots__ = ("outer", "match")

    def __init__(self, outer: Callable[[str], str], match: re.Match[str]) -> None:
        self.outer = outer
        self.match = match

    def lookup(self, name: str) -> str:
        if name.isdigit():
            i = int(name)
            return (self.match.group(i) or "") if i <= (self.match.re.groups or 0) else ""
        if name in self.match.re.groupindex:
            return self.match.group(name) or ""
        return self.outer(name)


def _xff(c: RequestContext) -> str:
    prior = c._header_var("x_forwarded_for")
    return f"{prior}, {c.remote_addr}" if prior else c.remote_addr


def _pp_port(c: RequestContext, field: str) -> str:
    """``$proxy_protocol_port``/``_server_port``: empty without a header (nginx: not found)."""
    return "" if c.proxy_protocol is None else str(getattr(c.proxy_protocol, field))


def _realip_remote_port(c: RequestContext) -> str:
    port = c.remote_port if c.realip is None else c.realip[1]
    return str(port) if port else ""


def _binary_remote_addr(c: RequestContext) -> str:
    """``$binary_remote_addr``: "client address in a binary form, value's length is always
    4 bytes for IPv4 addresses or 16 bytes for IPv6 addresses".  Templates carry text, so the
    bytes are kept one character each (latin-1); empty when the peer has no IP address."""
    try:
        return ipaddress.ip_address(c.remote_addr).packed.decode("latin-1")
    except ValueError:
        return ""


def _remote_user(c: RequestContext) -> str:
    """``$remote_user``: "user name supplied with the Basic authentication", whether or not
    ``auth_basic`` checked it (``ngx_http_variable_remote_user``)."""
    creds = basic_credentials(c.headers)
    return "" if creds is None else creds[0].decode("latin-1")


def _response_times(c: RequestContext) -> str:
    """``$upstream_response_time``: one time per try, ``-`` for the try still under way
    (``u->state->response_time`` is -1 until the try ends: an ``add_header`` reading it
    while the response head is sent)."""
    times = list(c.upstream_times)
    times += ["-"] * (len(c.upstream_addrs) - len(times))
    return ", ".join(times)


def _bytes(c: RequestContext, i: int) -> str:
    """``$upstream_bytes_received`` (0) and ``_sent`` (1): one number per try,
    comma-separated like ``$upstream_addr``."""
    return ", ".join(str(t[i]) for t in c.upstream_bytes)


def _host(c: RequestContext) -> str:
    return c.host or c.server_name


def _document_root(c: RequestContext) -> str:
    """``$document_root``: "root or alias directive's value for the current request"."""
    from wsgate.http.static import root_path

    return "" if c.root is None else root_path(c.root, c.lookup)


def _realpath_root(c: RequestContext) -> str:
    """``$realpath_root``: "an absolute pathname corresponding to the root or alias
    directive's value for the current request, with all symbolic links resolved to real
    paths"."""
    root = _document_root(c)
    return os.path.realpath(root) if root else ""


def _request_filename(c: RequestContext) -> str:
    """``$request_filename``: "file path for the current request, based on the root or
    alias directives, and the request URI"."""
    from wsgate.http.static import map_uri_to_path

    if c.root is None:
        return ""
    return map_uri_to_path(c.root, c.uri, c.lookup, c.add_uri_to_alias)[0]


def _websocket_figure(name: str) -> Callable[[RequestContext], str]:
    key = " " + name

    def get(c: RequestContext) -> str:
        return "" if c._cache is None else c._cache.get(key, "")

    return get


def _msec(c: RequestContext) -> str:
    return f"{time.time():.3f}"


def _request_time(c: RequestContext) -> str:
    return f"{max(0.0, time.time() - c.start):.3f}"


def _connections(field: str) -> Callable[[RequestContext], str]:
    """``$connections_active`` is "same as the Active connections value", and so on."""

    def get(c: RequestContext) -> str:
        return "0" if c.counters is None else str(getattr(c.counters.snapshot(), field))

    return get


_GETTERS: dict[str, Callable[[RequestContext], str]] = {
    "remote_addr": lambda c: c.remote_addr,
    "binary_remote_addr": _binary_remote_addr,
    # ngx_http_variable_remote_port: "if (port > 0 && port < 65536)", else empty (a
    # realip address sent without a port).
    "remote_port": lambda c: str(c.remote_port) if c.remote_port else "",
    "realip_remote_addr": lambda c: c.remote_addr if c.realip is None else c.realip[0],
    "realip_remote_port": _realip_remote_port,
    "proxy_protocol_addr": lambda c: "" if c.proxy_protocol is None else c.proxy_protocol.src_addr,
    "proxy_protocol_port": lambda c: _pp_port(c, "src_port"),
    "proxy_protocol_server_addr": lambda c: (
        "" if c.proxy_protocol is None else c.proxy_protocol.dst_addr
    ),
    "proxy_protocol_server_port": lambda c: _pp_port(c, "dst_port"),
    "server_addr": lambda c: c.server_addr,
    # A UNIX-domain listener has no port: empty, as ngx_http_variable_server_port.
    "server_port": lambda c: str(c.server_port) if c.server_port else "",
    "server_name": lambda c: c.server_name,
    "server_protocol": lambda c: f"HTTP/{c.version}",
    "host": _host,
    "scheme": lambda c: c.scheme,
    "http2": lambda c: c.http2,
    "request": lambda c: c.request_line,
    "request_method": lambda c: c.method,
    "request_uri": lambda c: c.request_uri,
    "uri": lambda c: c.uri,
    "document_uri": lambda c: c.uri,
    "args": lambda c: c.args,
    "query_string": lambda c: c.args,
    "is_args": lambda c: "?" if c.args else "",
    "proxy_host": lambda c: c.proxy_host,
    "proxy_port": lambda c: c.proxy_port,
    "proxy_add_x_forwarded_for": _xff,
    "status": lambda c: f"{c.status:03d}" if c.status else "000",
    "time_local": lambda c: _time_local(time.time()),
    # ngx_http_ssi_filter_module's: "%A, %d-%b-%Y %H:%M:%S %Z" outside an SSI document
    # (inside one, ``config timefmt`` applies: wsgate.content.ssi).
    "date_local": lambda c: time.strftime("%A, %d-%b-%Y %H:%M:%S %Z"),
    "date_gmt": lambda c: time.strftime("%A, %d-%b-%Y %H:%M:%S GMT", time.gmtime()),
    "time_iso8601": lambda c: _time_iso8601(time.time()),
    "msec": _msec,
    "request_time": _request_time,
    "bytes_sent": lambda c: str(c.bytes_sent),
    "body_bytes_sent": lambda c: str(c.body_bytes_sent),
    "request_length": lambda c: str(c.request_length),
    "upstream_addr": lambda c: ", ".join(c.upstream_addrs),
    "upstream_status": lambda c: ", ".join(c.upstream_statuses),
    "upstream_cache_status": lambda c: c.cache_status,
    "upstream_response_time": _response_times,
    "upstream_response_length": lambda c: ", ".join(c.upstream_lengths),
    "upstream_connect_time": lambda c: ", ".join(t[0] for t in c.upstream_phase_times),
    "upstream_header_time": lambda c: ", ".join(t[1] for t in c.upstream_phase_times),
    "upstream_bytes_received": lambda c: _bytes(c, 0),
    "upstream_bytes_sent": lambda c: _bytes(c, 1),
    "connection": lambda c: str(c.connection),
    "connection_requests": lambda c: str(c.connection_requests),
    # "connection time in seconds with a milliseconds resolution (1.19.10)"
    "connection_time": lambda c: f"{max(0.0, time.time() - c.connection_start):.3f}",
    "pipe": lambda c: "p" if c.pipelined else ".",
    "content_length": lambda c: c.header("content-length") or "",
    "content_type": lambda c: c._header_var("content_type"),
    "hostname": lambda c: _HOSTNAME,
    "pid": lambda c: str(os.getpid()),
    "remote_user": _remote_user,
    "request_id": RequestContext.request_id,
    "request_body": RequestContext._request_body,
    "request_body_file": RequestContext._request_body_file,
    # wsgate is not nginx: its own version (the Server header's token names it too).
    "nginx_version": lambda c: __version__,
    "limit_rate": lambda c: str(c.limit_rate or 0),
    # "the achieved compression ratio, computed as the ratio between the original and
    # compressed response sizes" (empty when the response was not compressed).
    "gzip_ratio": lambda c: c.gzip_ratio,
    "document_root": _document_root,
    "realpath_root": _realpath_root,
    "request_filename": _request_filename,
    **{f"connections_{f}": _connections(f) for f in ("active", "reading", "writing", "waiting")},
    **{name: _websocket_figure(name) for name in WS_VARIABLES},
}
