"""The typed, immutable configuration model.

crossplane's dicts are turned into these frozen, slotted dataclasses by :mod:`wsgate.config.loader`.
Every object that came from a directive remembers where it came from (:class:`Source`), so a
later error can point at the file and line that caused it.  Settings that nginx inherits from
``http`` to ``server`` to ``location`` are already merged: a :class:`Location` carries the
effective values, exactly as nginx's ``merge_loc_conf`` leaves them (the defaults and merge
rules are in :mod:`wsgate.config.directives`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from wsgate.config.script import Script
from wsgate.config.template import Template, compile_template

__all__ = [
    "AccessLog",
    "AccessRule",
    "AddHeader",
    "AuthRequestSet",
    "Config",
    "DocRoot",
    "CookieFlags",
    "ErrorLog",
    "Expires",
    "HeaderSetting",
    "Resolver",
    "HealthCheck",
    "HttpConfig",
    "LimitConn",
    "LimitConnZone",
    "LimitReq",
    "LimitReqZone",
    "Listen",
    "Location",
    "LocationSettings",
    "LogFormat",
    "MapBlock",
    "MimeTypes",
    "Network",
    "ProxyPass",
    "RedisServer",
    "RewriteRule",
    "Server",
    "ServerName",
    "SslServer",
    "SslUpstream",
    "Source",
    "TryFiles",
    "Upstream",
    "UpstreamServer",
    "UserFile",
]


@dataclass(frozen=True, slots=True)
class Source:
    """Where a directive was written."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class ErrorLog:
    """``error_log FILE [LEVEL]``; ``path`` is absolute, or ``"stderr"``."""

    path: str
    level: str = "error"


@dataclass(frozen=True, slots=True)
class LogFormat:
    """``log_format NAME [escape=default|json|none] STRING...``."""

    name: str
    template: Template
    escape: str = "default"
    #: wsgate's built-in ``json`` format, which a ``log_format json`` may redefine.
    builtin: bool = False


@dataclass(frozen=True, slots=True)
class AccessLog:
    """``access_log PATH [FORMAT [buffer=SIZE] [flush=TIME] [if=CONDITION]]``;
    ``access_log off`` is an empty tuple of these.

    ``buffer`` is 0 for unbuffered writes; ``flush`` is ``None`` when not given; ``condition``
    is the ``if=`` template ("A request will not be logged if the condition evaluates to "0"
    or an empty string").
    """

    path: str
    format: LogFormat
    source: Source | None = None
    buffer: int = 0
    flush: float | None = None
    condition: Template | None = None
    #: ``gzip[=level]``: each buffer written out as one gzip member (0: plain).
    gzip: int = 0
    #: A path with variables ("the file is opened and closed for each log write", unless
    #: ``open_log_file_cache`` keeps it); ``path`` is then its text, never opened as is.
    name: Template | None = None


@dataclass(frozen=True, slots=True, eq=False)
class OpenLogFileCache:
    """``open_log_file_cache max=N [inactive=time] [min_uses=N] [valid=time]``: the
    descriptors of logs whose names have variables, kept open.  Compared by identity: each
    directive is its own cache, which the levels below inherit (nginx shares the pointer)."""

    max: int
    inactive: float = 10.0
    min_uses: int = 1
    valid: float = 60.0


@dataclass(frozen=True, slots=True)
class Listen:
    """``listen`` with the parameters wsgate supports.

    ``host`` is ``"0.0.0.0"``/``"::"`` for a wildcard, else a literal IP.  ``port`` may be 0
    (a wsgate extension for tests: the kernel picks the port and wsgate logs it).
    """

    host: str
    port: int
    default_server: bool = False
    ipv6only: bool = True
    source: Source | None = None
    #: ``listen ... ssl``: connections on this address speak TLS.
    ssl: bool = False
    #: ``listen ... proxy_protocol``: each connection begins with a PROXY protocol header.
    proxy_protocol: bool = False
    #: ``listen ... http2`` (deprecated in nginx 1.25.1, still accepted): HTTP/2 on this
    #: address whatever the server's ``http2`` says (nginx's ``addr_conf->http2``).
    http2: bool = False
    #: The socket's options (``ngx_http_core_listen``): ``backlog=`` (511, nginx's
    #: ``NGX_LISTEN_BACKLOG`` on Linux), ``rcvbuf=``/``sndbuf=`` (-1: the system's),
    #: ``reuseport``, ``so_keepalive=`` (0 unset, 1 on, 2 off; idle and interval in
    #: seconds, count; 0: the system's), ``deferred`` (``TCP_DEFER_ACCEPT``), ``bind``,
    #: ``fastopen=`` (-1: off).
    backlog: int = 511
    rcvbuf: int = -1
    sndbuf: int = -1
    reuseport: bool = False
    so_keepalive: int = 0
    keepidle: int = 0
    keepintvl: int = 0
    keepcnt: int = 0
    deferred: bool = False
    bind: bool = False
    fastopen: int = -1
    #: A socket option was given (nginx's ``lsopt.set``): at most one ``listen`` of an
    #: address may (``duplicate listen options for ...``), and it gets a socket of its own.
    options: bool = False

    @property
    def is_wildcard(self) -> bool:
        return self.host in ("0.0.0.0", "::")

    @property
    def family_v6(self) -> bool:
        return ":" in self.host and not self.is_unix

    @property
    def is_unix(self) -> bool:
        """``listen unix:/path``: ``host`` is ``unix:/path`` and ``port`` is 0."""
        return self.host.startswith("unix:")

    @property
    def text(self) -> str:
        """nginx's ``addr_text``: ``127.0.0.1:80``, ``[::1]:80`` or ``unix:/path``."""
        if self.is_unix:
            return self.host
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SslServer:
    """The ``ssl_*`` settings of a ``server`` (inherited from ``http``), nginx's defaults.

    https://nginx.org/en/docs/http/ngx_http_ssl_module.html.  ``certificates`` are
    ``(certificate, key)`` path pairs in order (several pairs, e.g. RSA and ECDSA).
    ``verify_client`` is ``off``, ``on``, ``optional`` or ``optional_no_ca``.
    ``session_cache`` is ``none`` (nginx's default: tickets still work), ``off`` or
    ``builtin``/``shared`` (one in-process cache in wsgate).
    """

    certificates: tuple[tuple[str, str], ...] = ()
    protocols: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")
    ciphers: str = "HIGH:!aNULL:!MD5"
    prefer_server_ciphers: bool = False
    session_cache: str = "none"
    session_timeout: float = 300.0
    session_tickets: bool = True
    client_certificate: str | None = None
    verify_client: str = "off"
    verify_depth: int = 1
    #: ``ssl on`` (deprecated in nginx 1.15.0, removed in 1.25.1): every listen is TLS.
    enable: bool = False
    dhparam: str | None = None
    ecdh_curve: str = "auto"
    trusted_certificate: str | None = None
    password_file: str | None = None
    buffer_size: int = 16384
    session_ticket_keys: tuple[str, ...] = ()
    stapling: bool = False
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class SslUpstream:
    """The ``proxy_ssl_*`` settings of a location, for ``proxy_pass https://``.

    https://nginx.org/en/docs/http/ngx_http_proxy_module.html#proxy_ssl_verify.  nginx's
    defaults: no verification, no SNI (``proxy_ssl_server_name off``), ``proxy_ssl_name``
    ``$proxy_host``, session reuse on.
    """

    verify: bool = False
    verify_depth: int = 1
    trusted_certificate: str | None = None
    server_name: bool = False
    name: Template | None = None
    protocols: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")
    ciphers: str = "DEFAULT"
    certificate: str | None = None
    certificate_key: str | None = None
    session_reuse: bool = True


@dataclass(frozen=True, slots=True)
class ServerName:
    """One ``server_name`` entry, classified as nginx does (server_names.html).

    ``kind`` is ``"exact"``, ``"prefix_wildcard"`` (``*.example.org`` or ``.example.org``;
    ``value`` keeps the dot: ``".example.org"``, and ``also_bare`` tells whether
    ``example.org`` itself matches), ``"suffix_wildcard"`` (``mail.*``; ``value`` is
    ``"mail."``) or ``"regex"``.
    """

    text: str
    kind: str
    value: str
    regex: re.Pattern[str] | None = None
    also_bare: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamServer:
    """``server ADDRESS [weight=N] [max_fails=N] [fail_timeout=T] [max_conns=N] [backup]
    [down] [drain]`` inside ``upstream`` (https://nginx.org/en/docs/http/ngx_http_upstream_module.html).

    ``address`` is the text as written (the consistent-hash ring is built from it, as nginx
    does); a host name that resolves to several addresses gives one of these per address.
    For ``unix:/path`` the ``host`` is the path and ``port`` is 0.
    """

    address: str
    host: str
    port: int
    weight: int = 1
    max_fails: int = 1
    fail_timeout: float = 10.0
    max_conns: int = 0
    backup: bool = False
    down: bool = False
    #: ``drain`` (nginx 1.29.6+): "puts the server into the draining mode": no new
    #: connections; wsgate also moves its open tunnels off (docs/configuration.md).
    drain: bool = False
    source: Source | None = None
    #: ``resolve``: the name is resolved again while running (nginx 1.27.3+); ``host`` is
    #: then the name and ``port`` the port every address gets.
    resolve: bool = False
    #: ``service=NAME``: SRV records ``_NAME._tcp.HOST`` give the addresses, ports and weights.
    service: str = ""

    @property
    def is_unix(self) -> bool:
        return self.address.startswith("unix:")


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """``health_check`` inside ``upstream`` (a wsgate extension; nginx offers active checks
    only in its commercial edition, with these parameter names).

    ``kind`` is ``"http"`` (GET ``uri``, expect ``status``) or ``"websocket"`` (an Upgrade
    handshake to ``uri``, expecting 101).  A server leaves rotation after ``fails``
    consecutive failed checks and returns after ``passes`` consecutive good ones.
    """

    interval: float = 5.0
    timeout: float = 5.0
    fails: int = 1
    passes: int = 1
    uri: str = "/"
    kind: str = "http"
    status: tuple[int, ...] = ()
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class Upstream:
    """An ``upstream`` block.

    ``method`` is ``round_robin`` (default), ``least_conn``, ``ip_hash``, ``hash`` or
    ``random``.  ``hash_key`` and ``consistent`` belong to ``hash``; ``random_two`` and
    ``random_method`` (``""`` or ``"least_conn"``) to ``random``.  ``keepalive`` is the
    number of idle connections kept per upstream (0: none).
    """

    name: str
    servers: tuple[UpstreamServer, ...]
    source: Source | None = None
    method: str = "round_robin"
    hash_key: Template | None = None
    consistent: bool = False
    random_two: bool = False
    random_method: str = ""
    keepalive: int = 0
    keepalive_requests: int = 1000
    keepalive_timeout: float = 60.0
    keepalive_time: float = 3600.0
    health_check: HealthCheck | None = None
    #: ``zone NAME [SIZE]``: the name (``""``: none).  ``server ... resolve`` requires one.
    zone: str = ""
    #: ``resolver``/``resolver_timeout`` in the block, else the ``http`` level's (1.27.3+).
    resolver: Resolver | None = None
    #: None until the loader gives it the ``http`` level's (``ngx_conf_merge_msec_value``).
    resolver_timeout: float | None = None
    #: ``websocket_drain_time``: the window a drain spreads its 1012 closes over (None until
    #: the loader gives it the ``http`` level's).
    drain_time: float | None = None
    #: ``websocket_rebalance``: the fraction of the group's tunnels moved per minute when it
    #: grows (0: off; None until the loader gives it the ``http`` level's).
    rebalance: float | None = None


@dataclass(frozen=True, slots=True)
class Resolver:
    """``resolver ADDRESS ... [valid=TIME] [ipv4=on|off] [ipv6=on|off]``
    (https://nginx.org/en/docs/http/ngx_http_core_module.html#resolver).

    ``servers`` are the name servers' (address, port) pairs, in order; ``valid`` overrides
    the answers' TTL when not None.  Two ``resolver`` lines are two resolvers with their own
    caches even when they read alike, as in nginx (``source`` tells them apart).
    """

    servers: tuple[tuple[str, int], ...]
    valid: float | None = None
    ipv4: bool = True
    ipv6: bool = True
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class ProxyPass:
    """``proxy_pass URL``.

    ``uri`` is the URI part (``None`` when the URL has none, ``"/"`` for ``http://h/``).
    ``upstream`` names an ``upstream`` block when the host matched one; otherwise ``servers``
    are the addresses the host resolved to at load time (each a round-robin peer, as nginx
    builds an implicit upstream).  ``template`` is set when the URL contains variables and is
    evaluated per request (then ``host``/``port``/``uri`` are unused).
    """

    url: str
    scheme: str
    host: str
    port: int
    uri: str | None
    upstream: str | None = None
    servers: tuple[UpstreamServer, ...] = ()
    template: Template | None = None
    port_given: bool = False
    source: Source | None = None

    @property
    def proxy_host(self) -> str:
        """``$proxy_host``: the host, with ``:port`` unless it is the scheme's default; an
        IPv6 address in brackets, as the URL wrote it (nginx's ``u->host``)."""
        if self.upstream is not None or self.port == 0:  # an upstream block, or unix:
            return self.host
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class HeaderSetting:
    """One ``proxy_set_header NAME VALUE``; an empty value removes the header."""

    name: str
    value: Template


@dataclass(frozen=True, slots=True)
class AddHeader:
    """One ``add_header NAME VALUE [always]`` (ngx_http_headers_filter_module); applied by
    :func:`wsgate.http.headers_filter.add_headers`."""

    name: str
    value: Template
    always: bool = False


@dataclass(frozen=True, slots=True)
class Expires:
    """``expires [modified] time | epoch | max | off | @time`` (ngx_http_headers_filter_module);
    applied by :func:`wsgate.http.headers_filter.set_expires`.

    ``kind`` is nginx's ``ngx_http_expires_t``: ``off``, ``epoch``, ``max``, ``access`` (a
    time from now), ``modified`` (from the response's ``Last-Modified``) or ``daily`` (``@``, a
    time of day); ``time`` is in seconds (negative for ``-1h``; seconds since midnight for
    ``daily``).  A value with variables is kept in ``value`` and parsed per request, ``kind``
    then being ``access`` or ``modified`` and ``time`` 0, as nginx keeps them.
    """

    kind: str = "off"
    time: int = 0
    value: Template | None = None


@dataclass(frozen=True, slots=True)
class RewriteRule:
    """One ``proxy_redirect``, ``proxy_cookie_domain`` or ``proxy_cookie_path`` rule
    (nginx's ``ngx_http_proxy_rewrite_t``); applied by :mod:`wsgate.http.redirects` and
    :mod:`wsgate.http.cookies`.

    ``regex`` is set for ``~``/``~*`` (a search, its captures usable in ``replacement``);
    otherwise ``pattern`` is the text, with variables, the value must start with
    (``domain``: a ``proxy_cookie_domain`` text rule, which must equal the whole domain,
    case-insensitively, a leading dot aside).
    """

    replacement: Template
    pattern: Template | None = None
    regex: re.Pattern[str] | None = None
    domain: bool = False


@dataclass(frozen=True, slots=True)
class CookieFlags:
    """One ``proxy_cookie_flags COOKIE FLAG...``: the cookie's name (text with variables,
    compared case-insensitively, or a caseless ``regex``) and the flag values, each with
    variables."""

    flags: tuple[Template, ...]
    cookie: Template | None = None
    regex: re.Pattern[str] | None = None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AccessRule:
    """One ``allow``/``deny`` (ngx_http_access_module); matched by :mod:`wsgate.access`.

    ``network`` is the parsed address or CIDR (host bits cleared); ``None`` with ``unix``
    false is ``all``, with ``unix`` true is ``unix:``.
    """

    allow: bool
    network: Network | None
    unix: bool = False
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class RedisServer:
    """The ``redis=ADDRESS`` of a limit zone kept in Redis (wsgate's, :mod:`wsgate.limits_redis`):
    ``host``/``port``, or ``path`` for ``unix:/path`` (then ``host`` is empty); with
    ``redis_auth=FILE``, the credentials read from that file."""

    host: str = ""
    port: int = 6379
    path: str = ""
    #: ``redis_auth=FILE``'s credentials (``AUTH [username] password``): never printed.
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class LimitConnZone:
    """``limit_conn_zone KEY zone=NAME:SIZE [redis=ADDRESS [redis_fail=open|closed]]``
    (ngx_http_limit_conn_module; ``redis=`` is wsgate's).

    ``size`` is parsed and checked (at least 32k, as nginx's ``8 * ngx_pagesize``) but wsgate
    does not evict by size.  ``redis``: the zone is kept in that Redis, shared by every
    wsgate using it; ``redis_fail_closed``: refuse (not pass) requests while it is unreachable.
    """

    name: str
    key: Template
    size: int
    source: Source | None = None
    redis: RedisServer | None = None
    redis_fail_closed: bool = False


@dataclass(frozen=True, slots=True)
class LimitReqZone:
    """``limit_req_zone KEY zone=NAME:SIZE rate=RATE [redis=ADDRESS [redis_fail=open|closed]]``
    (ngx_http_limit_req_module; ``redis=`` is wsgate's, as for :class:`LimitConnZone`).

    ``rate`` is in milli-requests per second, as nginx keeps it (``Nr/m`` is ``N*1000//60``).
    """

    name: str
    key: Template
    size: int
    rate: int
    source: Source | None = None
    redis: RedisServer | None = None
    redis_fail_closed: bool = False


@dataclass(frozen=True, slots=True)
class CachePath:
    """``proxy_cache_path PATH [levels=] keys_zone=NAME:SIZE [inactive=] [max_size=]
    [min_free=] [use_temp_path=] [manager_*=] [loader_*=]`` (ngx_http_file_cache).

    Times are in seconds; ``max_size`` None is "no limit"; ``levels`` the lengths of the
    directory names taken from the end of the key's md5 (``levels=1:2``: ``c/29/...``).  See
    :mod:`wsgate.cache` for how the cache is kept.
    """

    path: str
    name: str
    size: int
    levels: tuple[int, ...] = ()
    inactive: float = 600.0
    max_size: int | None = None
    min_free: int = 0
    use_temp_path: bool = True
    manager_files: int = 100
    manager_sleep: float = 0.05
    manager_threshold: float = 0.2
    loader_files: int = 100
    loader_sleep: float = 0.05
    loader_threshold: float = 0.2
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class CacheValid:
    """One ``proxy_cache_valid`` entry: ``status`` 0 is ``any``; ``seconds`` the validity."""

    status: int
    seconds: int


@dataclass(frozen=True, slots=True)
class LimitConn:
    """``limit_conn ZONE NUMBER``; ``zone`` is the declared zone itself."""

    zone: LimitConnZone
    conn: int
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class LimitReq:
    """``limit_req zone=NAME [burst=N] [nodelay | delay=N]``; ``burst`` and ``delay`` in
    milli-requests as nginx keeps them (``nodelay`` is a delay no excess can reach)."""

    zone: LimitReqZone
    burst: int = 0
    delay: int = 0
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class ErrorPage:
    """One status of an ``error_page`` line: ``error_page CODE ... [=[RESPONSE]] URI``.

    ``overwrite`` is nginx's ``err_page->overwrite``: -1 without ``=`` (the error's own status;
    400 for 494-497, which nginx sends as 400), 0 for a bare ``=`` (the status of the
    response the URI gives), else the code after ``=``.  ``uri`` is the URI, named location or
    URL; without variables, a URI's ``?args`` are split off into ``args`` when loaded (with
    variables, when rendered), as ``ngx_http_core_error_page`` does.
    """

    status: int
    overwrite: int
    uri: Template
    args: str = ""
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class UserFile:
    """``auth_basic_user_file FILE`` (ngx_http_auth_basic_module): the file name, which may
    contain variables; a relative name is taken from ``conf_prefix`` (the directory of the main
    configuration file, with its trailing slash), as nginx's ``ccv.conf_prefix`` does, when
    the configuration is read for a static name and per request otherwise."""

    path: Template
    conf_prefix: str = ""

    def render(self, lookup: Callable[[str], str]) -> str:
        path = self.path.render(lookup)
        return path if path.startswith("/") else self.conf_prefix + path


@dataclass(frozen=True, slots=True)
class AuthRequestSet:
    """``auth_request_set $variable value``: ``value`` is evaluated in the subrequest, once
    it is done, and set in the main request."""

    variable: str
    value: Template


@dataclass(frozen=True, slots=True)
class DocRoot:
    """``root PATH`` or ``alias PATH`` (ngx_http_core_module), as the location in force has it.

    ``path`` is made absolute against the prefix when it has no variables (nginx's
    ``ngx_get_full_name`` at load time); with variables the rendered value is made absolute per
    request against ``prefix``.  For ``alias``, ``alias_len`` is how much of ``$uri`` the alias
    replaces: the length of the prefix location's name it was written in (nested locations
    inherit it with the alias, as nginx's ``clcf->alias``), or ``-1`` in a regular-expression
    location, where the alias is the whole file name ("If alias is used inside a location
    defined with a regular expression then such regular expression should contain captures and
    alias should refer to these captures")."""

    path: Template
    prefix: str = ""
    alias: bool = False
    alias_len: int = 0
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class MimeTypes:
    """``types { TYPE EXT ...; }``: extension (lowercased) → MIME type."""

    by_ext: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TryFiles:
    """``try_files file ... uri | =code``: the files to test (a trailing ``/`` tests a
    directory), then the fallback: an internal redirect to a URI, a ``@named`` location, or
    ``=code``."""

    files: tuple[Template, ...]
    fallback: Template
    code: int | None = None
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class LocationSettings:
    """The effective per-location settings after nginx's http → server → location merge.

    Defaults follow current nginx (1.29.7+) where it differs from 1.22 (see docs/differences.md):
    ``proxy_http_version`` defaults to ``"1.1"`` and no ``Connection: close`` is sent by default.
    Times are seconds.  The loader fills every field from the directive table, whose entries
    hold the defaults; the defaults here serve models built by hand, and a test keeps them
    equal to the table's.
    """

    proxy_pass: ProxyPass | None = None
    proxy_http_version: str = "1.1"
    #: ``proxy_pass_request_body``: off sends no body (the client's is discarded).
    proxy_pass_request_body: bool = True
    resolver: Resolver | None = None
    resolver_timeout: float = 30.0
    #: The explicit ``proxy_set_header`` list of the level that had any (all-or-nothing
    #: inheritance); the built-in defaults are added when the request is built.
    proxy_set_headers: tuple[HeaderSetting, ...] = ()
    proxy_connect_timeout: float = 60.0
    proxy_read_timeout: float = 60.0
    proxy_send_timeout: float = 60.0
    send_timeout: float = 60.0
    #: wsgate's WebSocket features (:mod:`wsgate.config.directives.websocket`), read by
    #: :func:`wsgate.proxy.tunnel.ws_features`: ``(seconds, client|upstream|both)`` (0: off),
    #: the Pong timeout, ``(bytes, side)`` limits (0: none) and ``(milli-messages per
    #: second, burst in milli-messages, side)``.
    websocket_ping_interval: tuple[float, str] = (0.0, "both")
    websocket_ping_timeout: float = 30.0
    websocket_max_message_size: tuple[int, str] = (0, "client")
    websocket_max_frame_size: tuple[int, str] = (0, "client")
    websocket_message_rate: tuple[int, int, str] = (0, 0, "client")
    #: ``websocket_metrics`` (off, wsgate's): the per-message metrics (the message-size
    #: histogram), the only tunnel metrics that cost work per message.
    websocket_metrics: bool = False
    client_body_timeout: float = 60.0
    #: ``proxy_request_buffering``: on reads the whole body before the upstream is contacted.
    proxy_request_buffering: bool = True
    #: ``client_body_buffer_size``: the part of a request body kept in memory.
    client_body_buffer_size: int = 16384
    #: ``client_body_in_file_only``: "off", "on" (the file is kept) or "clean".
    client_body_in_file_only: str = "off"
    client_body_in_single_buffer: bool = False
    #: ``client_body_temp_path``: the directory (relative: under the prefix) and the levels.
    client_body_temp_path: tuple[str, tuple[int, ...]] = ("client_body_temp", ())
    keepalive_timeout: float = 75.0
    keepalive_header: float | None = None
    keepalive_requests: int = 1000
    keepalive_time: float = 3600.0
    client_max_body_size: int = 1024 * 1024
    proxy_next_upstream: frozenset[str] = frozenset({"error", "timeout"})
    proxy_next_upstream_tries: int = 0
    proxy_next_upstream_timeout: float = 0.0
    proxy_buffer_size: int = 4096
    server_tokens: bool = True
    #: ``http2_chunk_size`` (8k): the most bytes of a response body per DATA frame.
    http2_chunk_size: int = 8192
    #: The rewrite module's script at this level (``rewrite``, ``return``, ``set``, ``if``,
    #: ``break``, in order; not inherited), run by :mod:`wsgate.http.rewrite`.
    rewrite: Script = ()
    rewrite_log: bool = False
    uninitialized_variable_warn: bool = True
    #: ``limit_rate``/``limit_rate_after``: bytes (a value with variables: its template, read
    #: per request as a size); see :mod:`wsgate.http.rate`.
    limit_rate: int | Template = 0
    limit_rate_after: int | Template = 0
    #: ``proxy_buffering``: wsgate always streams, but nginx turns ``limit_rate`` off for a
    #: response it does not buffer, so the value decides that.
    proxy_buffering: bool = True
    proxy_ssl: SslUpstream = SslUpstream()
    #: Empty tuple means ``access_log off``.
    access_logs: tuple[AccessLog, ...] = ()
    open_log_file_cache: OpenLogFileCache | None = None
    #: ``stub_status`` here (not inherited: nginx sets it as this level's content handler).
    stub_status: bool = False
    #: ``prometheus`` (wsgate's) here: the metrics page, a content handler like ``stub_status``.
    prometheus: bool = False
    #: ``readiness`` (wsgate's) here: 200 while serving, 503 from a QUIT on.
    readiness: bool = False
    #: ``upstream_control`` (wsgate's) here: the runtime drain/rebalance endpoint.
    upstream_control: bool = False
    #: ``websocket_drain_time`` and ``websocket_rebalance`` at the ``http`` level (the
    #: ``upstream`` blocks' default; :class:`Upstream`).
    websocket_drain_time: float = 30.0
    websocket_rebalance: float = 0.0
    #: ``allow``/``deny`` of the innermost level that has any (all-or-nothing inheritance).
    access_rules: tuple[AccessRule, ...] = ()
    #: ``proxy_upgrade_protocols`` (wsgate), lowercased; empty for ``off``.
    proxy_upgrade_protocols: frozenset[str] = frozenset({"websocket"})
    #: ``limit_conn``/``limit_req`` of the innermost level that has any (all-or-nothing).
    limit_conn: tuple[LimitConn, ...] = ()
    limit_conn_status: int = 503
    limit_conn_log_level: str = "error"
    limit_conn_dry_run: bool = False
    limit_req: tuple[LimitReq, ...] = ()
    limit_req_status: int = 503
    limit_req_log_level: str = "error"
    limit_req_dry_run: bool = False
    #: ``add_header`` of the innermost level that has any (all-or-nothing inheritance, or
    #: as ``add_header_inherit`` says).
    add_headers: tuple[AddHeader, ...] = ()
    #: ``add_header_inherit``/``add_trailer_inherit`` (nginx 1.29.3): ``on``, ``off``, ``merge``.
    add_header_inherit: str = "on"
    add_trailer_inherit: str = "on"
    #: ``expires`` (inherited; default ``off``).
    expires: Expires = Expires()
    #: ``proxy_hide_header``/``proxy_pass_header`` names, each list all-or-nothing.
    proxy_hide_headers: tuple[str, ...] = ()
    proxy_pass_headers: tuple[str, ...] = ()
    #: ``set_real_ip_from`` of the innermost level that has any (all-or-nothing): networks,
    #: ``None`` for ``unix:``; empty: realip is off.
    real_ip_from: tuple[Network | None, ...] = ()
    #: ``error_log`` of the innermost level that has any (all-or-nothing); empty: the main
    #: context's (nginx: ``clcf->error_log`` is ``cycle->new_log`` when no level sets one).
    error_logs: tuple[ErrorLog, ...] = ()
    #: ``lingering_close off|on|always``, ``lingering_time``, ``lingering_timeout``.
    lingering_close: str = "on"
    lingering_time: float = 30.0
    lingering_timeout: float = 5.0
    #: ``keepalive_disable``: the browsers (``msie6``, ``safari``) keep-alive is off for.
    keepalive_disable: frozenset[str] = frozenset({"msie6"})
    #: ``tcp_nodelay``: off turns Nagle's algorithm back on for the client connection.
    tcp_nodelay: bool = True
    #: ``msie_padding``: error pages for MSIE and Chrome get nginx's padding comments.
    msie_padding: bool = True
    #: ``reset_timedout_connection``: a timed-out connection (and ``return 444``) is reset.
    reset_timedout_connection: bool = False
    #: ``real_ip_header``, as written (``X-Real-IP``, ``X-Forwarded-For``, ``proxy_protocol``
    #: or another header's name).
    real_ip_header: str = "X-Real-IP"
    real_ip_recursive: bool = False
    #: ``error_page`` of the innermost level that has any (all-or-nothing inheritance).
    error_pages: tuple[ErrorPage, ...] = ()
    recursive_error_pages: bool = False
    proxy_intercept_errors: bool = False
    #: ``internal``: a request URI reaching this location is 404 (inherited, as nginx's
    #: ``ngx_conf_merge_value(conf->internal, prev->internal, 0)``).
    internal: bool = False
    #: ``auth_basic`` realm (None: ``off``, or unset; a realm rendering to ``off`` is off too).
    auth_basic: Template | None = None
    auth_basic_user_file: UserFile | None = None
    #: ``auth_request`` URI (None: ``off``).
    auth_request: str | None = None
    #: ``auth_request_set`` of the innermost level that has any (all-or-nothing).
    auth_request_set: tuple[AuthRequestSet, ...] = ()
    #: ``satisfy all | any``.
    satisfy: str = "all"
    #: ``auth_delay`` (seconds): how long a 401 waits before it is sent.
    auth_delay: float = 0.0
    # -- static files (ngx_http_core_module, static, index, autoindex) --------------------------
    #: ``root``/``alias`` (None: ``root html``, under the prefix; the loader fills it in).
    root: DocRoot | None = None
    #: ``index`` names (default ``index.html``; all-or-nothing).
    index: tuple[Template, ...] = (Template("index.html", ("index.html",)),)
    #: ``try_files`` of this location (not inherited).
    try_files: TryFiles | None = None
    #: ``types`` (default nginx's three: html, gif, jpg), ``default_type``.
    types: MimeTypes | None = None
    default_type: str = "text/plain"
    etag: bool = True
    #: ``if_modified_since off | exact | before``.
    if_modified_since: str = "exact"
    #: ``max_ranges`` (None: unlimited; 0 disables ranges).
    max_ranges: int | None = None
    log_not_found: bool = True
    autoindex: bool = False
    autoindex_exact_size: bool = True
    autoindex_localtime: bool = False
    autoindex_format: str = "html"
    #: ``disable_symlinks off | on | if_not_owner`` and its ``from=`` (a template, or None).
    disable_symlinks: tuple[str, Template | None] = ("off", None)
    sendfile: bool = False
    sendfile_max_chunk: int = 2 * 1024 * 1024
    # -- ngx_http_charset_module --------------------------------------------------------------
    #: ``charset`` (None: ``off``), ``source_charset``, ``override_charset``, ``charset_types``.
    charset: Template | None = None
    source_charset: str | None = None
    override_charset: bool = False
    charset_types: tuple[str, ...] = (
        "text/html",
        "text/xml",
        "text/plain",
        "text/vnd.wap.wml",
        "application/javascript",
        "application/rss+xml",
    )
    # -- ngx_http_ssi_filter_module ----------------------------------------------------------
    #: ``ssi``, ``ssi_silent_errors``, ``ssi_last_modified``, ``ssi_value_length`` and
    #: ``ssi_types`` (besides "text/html", which is always one).
    ssi: bool = False
    ssi_silent_errors: bool = False
    ssi_last_modified: bool = False
    ssi_value_length: int = 256
    ssi_types: tuple[str, ...] = ("text/html",)
    # -- ngx_http_gzip_filter_module, ngx_http_gzip_static_module (and the core's gzip_*) --
    #: ``gzip``, ``gzip_types`` (besides "text/html"; "*": any), ``gzip_min_length``,
    #: ``gzip_comp_level``, ``gzip_window``/``gzip_hash`` as zlib's wbits and memLevel.
    gzip: bool = False
    gzip_types: tuple[str, ...] = ("text/html",)
    gzip_min_length: int = 20
    gzip_comp_level: int = 1
    gzip_window: int = 15
    gzip_hash: int = 8
    #: ``gzip_vary``, ``gzip_http_version`` ("1.0" or "1.1"), ``gzip_proxied`` (its words).
    gzip_vary: bool = False
    gzip_http_version: str = "1.1"
    gzip_proxied: frozenset[str] = frozenset({"off"})
    #: ``gzip_disable``: regular expressions (caseless) and the word "msie6".
    gzip_disable: tuple[re.Pattern[str] | str, ...] = ()
    #: ``gzip_static off | on | always``.
    gzip_static: str = "off"
    #: ``gunzip``: decompress gzip responses for clients that do not accept gzip.
    gunzip: bool = False
    #: ``subrequest_output_buffer_size``: the most an in-memory subrequest's body may be.
    subrequest_output_buffer_size: int = 4096
    #: Every ``charset_map`` of ``http``: (from, to), lowercased → a 256-byte table.
    charset_maps: dict[tuple[str, str], bytes] = field(default_factory=dict)
    #: ``proxy_redirect`` rules in force (nginx's merge, the default made from
    #: ``proxy_pass``); empty: none (``off``, or nothing to rewrite).
    proxy_redirects: tuple[RewriteRule, ...] = ()
    #: ``proxy_cookie_domain``/``_path``/``_flags``, each all-or-nothing; empty: off.
    proxy_cookie_domains: tuple[RewriteRule, ...] = ()
    proxy_cookie_paths: tuple[RewriteRule, ...] = ()
    proxy_cookie_flags: tuple[CookieFlags, ...] = ()
    #: ``absolute_redirect``, ``server_name_in_redirect``, ``port_in_redirect``: how a
    #: ``Location`` starting with ``/`` is made absolute (ngx_http_header_filter).
    absolute_redirect: bool = True
    server_name_in_redirect: bool = False
    port_in_redirect: bool = True
    #: ``chunked_transfer_encoding`` (an HTTP/1.1 body of unknown length is chunked).
    chunked_transfer_encoding: bool = True
    #: ``add_trailer`` of the innermost level that has any (all-or-nothing inheritance).
    add_trailers: tuple[AddHeader, ...] = ()
    #: ``proxy_ignore_headers`` names as nginx spells them (its bitmask: a level that has any
    #: replaces the outer one); only ``X-Accel-Limit-Rate`` and ``X-Accel-Buffering`` matter
    #: without a cache.
    proxy_ignore_headers: tuple[str, ...] = ()
    #: ``proxy_cache``: a zone's name, a template (names with variables), or None (off).
    proxy_cache: str | Template | None = None
    proxy_cache_key: Template = compile_template("$scheme$proxy_host$request_uri")
    #: ``proxy_cache_valid`` entries in order (all-or-nothing inheritance).
    proxy_cache_valid: tuple[CacheValid, ...] = ()
    proxy_cache_methods: frozenset[str] = frozenset({"GET", "HEAD"})
    proxy_cache_min_uses: int = 1
    #: ``proxy_cache_bypass``/``proxy_no_cache``: a non-empty value other than "0" of any.
    proxy_cache_bypass: tuple[Template, ...] = ()
    proxy_no_cache: tuple[Template, ...] = ()
    proxy_cache_convert_head: bool = True
    #: ``proxy_cache_use_stale`` values (``off``: empty).
    proxy_cache_use_stale: frozenset[str] = frozenset()
    proxy_cache_background_update: bool = False
    proxy_cache_lock: bool = False
    proxy_cache_lock_timeout: float = 5.0
    proxy_cache_lock_age: float = 5.0
    proxy_cache_revalidate: bool = False
    #: ``proxy_cache_max_range_offset`` (None: no limit).
    proxy_cache_max_range_offset: int | None = None


@dataclass(frozen=True, slots=True)
class Location:
    """``location [=|~|~*|^~] NAME { ... }``.

    ``modifier`` is ``""`` for a plain prefix.  ``regex`` is compiled for ``~``/``~*``.
    ``locations`` are the nested locations in configuration order.  A named location
    (``location @name``: one argument starting with ``@``) has the modifier ``"@"`` and the
    name with its ``@``; it is only reached by an internal redirect
    (:attr:`Server.named_locations`).
    """

    modifier: str
    name: str
    settings: LocationSettings
    regex: re.Pattern[str] | None = None
    locations: tuple[Location, ...] = ()
    source: Source | None = None

    @property
    def is_regex(self) -> bool:
        return self.modifier in ("~", "~*")

    @property
    def is_exact(self) -> bool:
        return self.modifier == "="

    @property
    def is_noregex(self) -> bool:
        return self.modifier == "^~"

    @property
    def is_named(self) -> bool:
        return self.modifier == "@"


@dataclass(frozen=True, slots=True)
class Server:
    """A ``server { }`` block.

    ``settings`` are the server-level effective settings, used when no location matches.
    ``names`` keeps ``server_name`` entries in order; an empty tuple means the server has the
    empty name ``""`` (nginx's default ``server_name ""``).
    """

    listens: tuple[Listen, ...]
    names: tuple[ServerName, ...]
    settings: LocationSettings
    locations: tuple[Location, ...] = ()
    client_header_timeout: float = 60.0
    client_header_buffer_size: int = 1024
    large_client_header_buffers: tuple[int, int] = (4, 8192)
    #: nginx 1.29.8+ ``max_headers`` (default 1000): the most request header lines.
    max_headers: int = 1000
    #: ``ignore_invalid_headers`` (on): header lines with invalid names are dropped.
    ignore_invalid_headers: bool = True
    #: ``underscores_in_headers`` (off): a name with ``_`` is invalid.
    underscores_in_headers: bool = False
    #: ``merge_slashes`` (on): ``//`` in the URI is one ``/`` for location matching.
    merge_slashes: bool = True
    #: ``http2`` (off) and the server-level ``http2_*`` settings (:mod:`wsgate.proxy.http2`).
    http2: bool = False
    http2_max_concurrent_streams: int = 128
    http2_body_preread_size: int = 65536
    http2_recv_buffer_size: int = 256 * 1024
    #: ``http2_websocket`` (on, wsgate's): RFC 8441 WebSockets over HTTP/2 streams.
    http2_websocket: bool = True
    source: Source | None = None
    #: TLS settings, when any ``listen`` of this server has ``ssl`` (else None).
    ssl: SslServer | None = None
    #: ``location @name`` blocks (``cscf->named_locations``), looked up by name with its
    #: ``@``; never in ``locations``, so no request URI finds them.
    named_locations: tuple[Location, ...] = ()

    @property
    def name(self) -> str:
        """``$server_name`` (and ``server_name_in_redirect``'s host): nginx's
        ``cscf->server_name``, the first ``server_name`` -- lowercased unless a regex (kept
        with its ``~``), one leading dot dropped -- or ``""``."""
        if not self.names:
            return ""
        first = self.names[0].text
        if first.startswith("~"):
            return first
        first = first.lower()
        return first[1:] if first.startswith(".") else first

    @property
    def every_location(self) -> tuple[Location, ...]:
        """The server's locations, named ones too (what a walk over its settings needs:
        access logs to open, ``prometheus``, upstream TLS)."""
        return (*self.locations, *self.named_locations)

    @property
    def has_empty_name(self) -> bool:
        return not self.names or any(n.kind == "exact" and n.value == "" for n in self.names)


@dataclass(frozen=True, slots=True)
class MapBlock:
    """``map SOURCE $VARIABLE { ... }`` (ngx_http_map_module).

    ``exact`` maps lowercased-if-hostnames keys to values; ``regexes`` keep config order.
    With ``hostnames``, ``prefix_wildcards``/``suffix_wildcards`` hold ``*.x.org`` / ``www.*``.
    """

    source_value: Template
    variable: str
    default: Template | None
    exact: dict[str, Template] = field(default_factory=dict)
    regexes: tuple[tuple[re.Pattern[str], Template], ...] = ()
    hostnames: bool = False
    prefix_wildcards: tuple[tuple[str, Template], ...] = ()
    suffix_wildcards: tuple[tuple[str, Template], ...] = ()
    source: Source | None = None
    #: ``volatile``: evaluated at each use, never cached (ngx_http_map_module).
    volatile: bool = False


@dataclass(frozen=True, slots=True)
class HttpConfig:
    servers: tuple[Server, ...]
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    maps: dict[str, MapBlock] = field(default_factory=dict)
    log_formats: dict[str, LogFormat] = field(default_factory=dict)
    limit_conn_zones: dict[str, LimitConnZone] = field(default_factory=dict)
    limit_req_zones: dict[str, LimitReqZone] = field(default_factory=dict)
    #: ``proxy_cache_path`` zones by name.
    cache_paths: dict[str, CachePath] = field(default_factory=dict)
    #: Variables only ``set`` makes (no built-in, map or capture of that name): reading one
    #: that the request has not set logs "using uninitialized" (``uninitialized_variable_warn``).
    user_variables: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration: main context plus ``http``."""

    file: str
    prefix: str
    http: HttpConfig
    pid: str
    error_logs: tuple[ErrorLog, ...]
    daemon: bool = True
    worker_processes: int = 1
    worker_connections: int = 512
    #: ``multi_accept``: take every waiting connection per readiness event of a listening
    #: socket (at most ACCEPT_BATCH; wsgate's default), or one (nginx's default).  On costs
    #: less per connection when several wait (one turn of the loop for all: 8 % less CPU per
    #: handshake in bench/, three interleaved pairs); the workers' balance check
    #: (gateway.py ``ACCEPT_DEFER``) spreads connections over workers either way.
    multi_accept: bool = True
    worker_shutdown_timeout: float | None = None
    #: ``master_process off`` runs one process (nginx's development mode).
    master_process: bool = True
    worker_rlimit_nofile: int | None = None
    #: ``worker_cpu_affinity``: ``None`` (not set), ``()`` for ``auto``, else one CPU set per
    #: worker (nginx's bit masks, rightmost bit = CPU 0), used round robin.
    worker_cpu_affinity: tuple[frozenset[int], ...] | None = None
    #: ``close_spread_time``: closes at shutdown are spread over this many seconds.
    close_spread_time: float = 0.0
    #: ``shutdown_grace``: on QUIT, keep serving this many seconds with ``readiness``
    #: answering 503 before stopping (HAProxy's ``grace``).
    shutdown_grace: float = 0.0
    #: ``(path, text)`` of every file read, for ``-T``.
    files: tuple[tuple[str, str], ...] = ()
    #: ``[warn]`` messages produced while loading (accepted no-op directives).
    warnings: tuple[str, ...] = ()
