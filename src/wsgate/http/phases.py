"""nginx's request phases as an explicit pipeline of small handlers (no sockets, no loop).

https://nginx.org/en/docs/dev/development_guide.html#http_phases: "Each HTTP request passes
through a sequence of phases.  In each phase a distinct type of processing is performed on the
request."  wsgate walks the same sequence:

======================  =========================================================  ==========
phase                   handlers today                                             nginx
======================  =========================================================  ==========
``POST_READ``           request-target → ``$uri``/``$args``; 497, 495/496; realip  (process)
``SERVER_REWRITE``      the ``server`` level's rewrite script                      rewrite
``FIND_CONFIG``         the location, ``internal``, keep-alive limits, the 301     core
``REWRITE``             the location's rewrite script                              rewrite
``POST_REWRITE``        a changed URI: back to ``FIND_CONFIG`` (at most 10 times)  core
``PREACCESS``           realip, then ``limit_req``, then ``limit_conn``            limit_*
``ACCESS``              ``allow``/``deny``, ``auth_basic``, ``auth_request``       access
                        combined by ``satisfy`` (:mod:`wsgate.http.auth`)
``TRY_FILES``           ``try_files``                                              try_files
``CONTENT``             ``stub_status``, ``prometheus``, ``readiness``,             core
                        ``proxy_pass``, or files
``LOG``                 the access-log line and metrics (the I/O layer's)          log
======================  =========================================================  ==========

A handler takes the request's :class:`Request` and returns ``None`` (go on with the next
handler), or a decision: :class:`Delay` (wait, then go on: ``limit_req``), :class:`Restart`
(an internal redirect), a wait after which the same handler runs
again (:mod:`wsgate.http.suspend`: a job for the thread pool, a subrequest), or the
response to make (:class:`Redirect`, :class:`Plain`, :class:`Close`, a :class:`Content`
handler).  An error response is an :class:`~wsgate.errors.HttpError` raised with nginx's
status and log text.  :func:`run` walks the handlers; the asyncio layer
(:mod:`wsgate.proxy.exchange`) sleeps on a :class:`Delay`, performs the waits and the
response.  ``try_files`` and static files are each one handler to add to
:data:`HANDLERS` (or one decision), nothing else.  The rewrite module's scripts
(``rewrite``, ``return``, ``set``, ``if``, ``break``) are run by
:func:`wsgate.http.rewrite.execute`.

Internal redirects come in nginx's three kinds, each a :class:`Restart` to another phase:
``rewrite ... last`` (the URI changed: back to ``FIND_CONFIG``, counted by :func:`run` as
nginx's post-rewrite phase counts it), :func:`internal_redirect` (``error_page URI``,
``try_files``'s last URI, ``index``: back to ``SERVER_REWRITE`` with the server's settings,
as ``ngx_http_internal_redirect``) and :func:`named_location` (``@name``: on at ``REWRITE``
in that location, as ``ngx_http_named_location``).  Each is one of the request's
:data:`MAX_URI_CHANGES`; the eleventh is a 500.

An error -- an :class:`~wsgate.errors.HttpError` from a handler or from the content phase's
I/O (given back to :func:`run` as ``error``), or a redirect a handler makes -- goes through
:func:`on_error`, nginx's ``ngx_http_special_response_handler``: its log line, keep-alive off
after the statuses nginx closes on, then the error handlers given to :func:`run`
(:data:`wsgate.http.errorpages.ERROR_HANDLERS`: ``error_page``), which may redirect
internally or answer with a redirect; otherwise the error leaves :func:`run` and the I/O
layer sends nginx's page for it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from wsgate.config.model import Location, LocationSettings, Server
from wsgate.config.variables import RequestContext
from wsgate.content import files
from wsgate.errors import HttpError
from wsgate.http.auth import AccessState, access_phase
from wsgate.http.pages import closes_connection
from wsgate.http.redirects import absolute_location
from wsgate.http.request import RequestHead
from wsgate.http.rewrite import Stop, execute
from wsgate.http.static import FileResponse, content_type
from wsgate.http.suspend import Await, Offload, Pause, Subrequest, Suspend
from wsgate.limits import Refused, ReqZone, SlotHolder, check_requests
from wsgate.realip import forwarded_addr
from wsgate.routing import (
    escape_uri,
    find_location_match,
    find_named_location,
    needs_slash_redirect,
    normalize_uri,
    split_target,
)

if TYPE_CHECKING:
    from wsgate.limits import LimitRegistry
    from wsgate.limits_redis import ConnWait, RedisReqZone, ReqLimit, ReqWait
    from wsgate.observability.logs import ErrorLogger
    from wsgate.redis_shed import RedisSlot

__all__ = [
    "HANDLERS",
    "MAX_URI_CHANGES",
    "Close",
    "Content",
    "Decision",
    "Delay",
    "ErrorHandler",
    "Handler",
    "Phase",
    "PhaseWorker",
    "Plain",
    "Redirect",
    "Request",
    "Restart",
    "UninitializedWarning",
    "location_rewrite",
    "internal_redirect",
    "log_error",
    "named_location",
    "on_error",
    "realip_post_read",
    "realip_preaccess",
    "release_slots",
    "response_fields",
    "run",
    "server_rewrite",
    "stop_response",
    "uninitialized_warning",
]

#: nginx's ``NGX_HTTP_MAX_URI_CHANGES``: "rewrite or internal redirection cycle" after 10.
MAX_URI_CHANGES = 10

#: ``delay_log_level``: "Logging level for delays is one point less than for refusals".
_LEVEL_BELOW = {"notice": "info", "warn": "notice", "error": "warn"}


class Phase(enum.IntEnum):
    """nginx's ``ngx_http_phases``, in order."""

    POST_READ = 0
    SERVER_REWRITE = 1
    FIND_CONFIG = 2
    REWRITE = 3
    POST_REWRITE = 4
    PREACCESS = 5
    ACCESS = 6
    POST_ACCESS = 7
    TRY_FILES = 8
    CONTENT = 9
    LOG = 10


class PhaseWorker(Protocol):
    """What phase handlers read of the worker (a part of
    :class:`~wsgate.proxy.context.WorkerContext`)."""

    limits: LimitRegistry
    error_log: ErrorLogger
    clock: Callable[[], float]
    stopping: bool


class Request:
    """One request as the phases see and change it: its head and variables, the server and
    location chosen, the settings in force, the ``limit_conn`` slots it holds."""

    __slots__ = (
        "worker",
        "number",
        "head",
        "ctx",
        "server",
        "location",
        "settings",
        "tls_vars",
        "plain_on_tls",
        "connection_requests",
        "connection_started",
        "conn_slots",
        "uri_changes",
        "internal",
        "uri_changed",
        "valid_location",
        "valid_unparsed_uri",
        "quoted_uri",
        "access",
        "subrequest",
        "limit_req_done",
        "limit_conn_done",
        "req_wait",
        "conn_wait",
        "error_page",
        "err_status",
        "headers_out",
        "discard_body",
        "ssi_vars",
        "ssi_blocks",
        "ssi_depth",
    )

    def __init__(
        self,
        worker: PhaseWorker,
        number: int,
        head: RequestHead,
        ctx: RequestContext,
        server: Server,
        *,
        tls_vars: dict[str, str] | None = None,
        plain_on_tls: bool = False,
        connection_requests: int = 1,
        connection_started: float = 0.0,
        subrequest: bool = False,
    ) -> None:
        self.worker = worker
        #: The connection's number, for the error log.
        self.number = number
        self.head = head
        self.ctx = ctx
        self.server = server
        self.location: Location | None = None
        #: The server's settings until ``FIND_CONFIG``, then the location's.
        self.settings: LocationSettings = server.settings
        self.tls_vars = tls_vars
        self.plain_on_tls = plain_on_tls
        self.connection_requests = connection_requests
        #: ``clock()`` when the connection was accepted (``keepalive_time``).
        self.connection_started = connection_started
        #: ``limit_conn`` slots taken (released when the request, or its tunnel, ends).
        self.conn_slots: tuple[tuple[SlotHolder, str], ...] = ()
        #: Internal redirects left (``r->uri_changes``).
        self.uri_changes = MAX_URI_CHANGES + 1
        #: ``r->uri_changed``: a rewrite changed ``$uri``; ``POST_REWRITE`` searches the
        #: location again.
        self.uri_changed = False
        #: ``r->valid_location``: the location's name still prefixes ``$uri`` for
        #: ``proxy_pass``'s URI part (``rewrite ... break`` clears it).
        self.valid_location = True
        #: ``r->valid_unparsed_uri``: ``proxy_pass`` may send the request line's URI.
        self.valid_unparsed_uri = True
        #: ``r->quoted_uri || r->plus_in_uri``: the path had ``%`` or ``+`` (captures put
        #: into arguments or a redirect are then escaped).
        self.quoted_uri = False
        #: The access phase's state in this pass (None: not reached yet).
        self.access: AccessState | None = None
        #: A subrequest (``auth_request``'s): it skips the access phase, as nginx's do.
        self.subrequest = subrequest
        #: ``r->main->limit_req_status``/``limit_conn_status`` set: the limits were applied
        #: once; an internal redirect does not apply them again.
        self.limit_req_done = False
        self.limit_conn_done = False
        #: A wait for ``limit_req``/``limit_conn`` zones kept in Redis (wsgate's ``redis=``):
        #: the handler that returned the :class:`~wsgate.http.suspend.Await` reads it.
        self.req_wait: ReqWait | None = None
        self.conn_wait: ConnWait | None = None
        #: ``r->internal``: a rewrite or an internal redirect happened, or this is a
        #: subrequest (``internal`` locations allow it; ``proxy_pass`` escapes the URI).
        self.internal = False
        #: ``r->error_page``: an error page was used (no other one, without
        #: ``recursive_error_pages``).
        self.error_page = False
        #: ``r->err_status``: the status every response gets from now on (``error_page``),
        #: 0: the response's own.
        self.err_status = 0
        #: Header fields the response gets whatever makes it (``headers_out`` kept across an
        #: internal redirect: an intercepted 401's ``WWW-Authenticate``, the ``Location`` of a
        #: redirect an error page took over).
        self.headers_out: tuple[tuple[str, str], ...] = ()
        #: ``r->discard_body``: the request body is not to be sent upstream (after a 413),
        #: or cannot be again (wsgate streamed it to an earlier upstream).
        self.discard_body = False
        #: The SSI variables and blocks of the main request, shared by its subrequests
        #: (:mod:`wsgate.content.ssi`).
        self.ssi_vars: dict[str, str] | None = None
        self.ssi_blocks: dict[str, bytes] | None = None
        self.ssi_depth = 0

    def log(self, level: str, message: str) -> None:
        self.worker.error_log.log(level, message, self.number, self.ctx)

    def use_settings(self, settings: LocationSettings) -> None:
        """An ``if`` block's settings, when its condition held (``ngx_http_script_if_code``
        calls ``ngx_http_update_location_config``): everything that follows reads them,
        the document root and the error logs too."""
        self.settings = settings
        self.ctx.root = settings.root
        self.ctx.error_logs = settings.error_logs

    def absolute(self, location: str) -> str:
        """``location`` as nginx's header filter sends the response's own ``Location``
        (:func:`~wsgate.http.redirects.absolute_location`, with this request's settings,
        server, ``Host`` and connection)."""
        ctx = self.ctx
        return absolute_location(
            location,
            self.settings,
            server_name=self.server.name,
            host=self.head.host,
            scheme=ctx.scheme,
            local_addr=ctx.server_addr,
            local_port=ctx.server_port,
        )


# -- decisions ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Delay:
    """Wait ``seconds``, then go on with the next handler (``limit_req``'s delay)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Restart:
    """An internal redirect: the walk goes on at ``phase``.  ``Restart()`` is ``rewrite ...
    last`` (``FIND_CONFIG`` again with the new ``$uri``; :func:`run` counts it); make the
    others with :func:`internal_redirect` (``SERVER_REWRITE``) and :func:`named_location`
    (``REWRITE``), which count themselves as nginx does."""

    phase: Phase = Phase.FIND_CONFIG


@dataclass(frozen=True, slots=True)
class Redirect:
    """A redirect with nginx's HTML body and ``Location`` (as set: one starting with ``/``
    is made absolute by the response's writer, as nginx's header filter does)."""

    status: int
    location: str


@dataclass(frozen=True, slots=True)
class Plain:
    """A response made here: ``return CODE [TEXT]``."""

    status: int
    body: bytes
    content_type: str | None


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection without a response (``return 444``), logged with ``status``."""

    status: int


class Content(enum.Enum):
    """The content handler that makes the response (nginx's ``r->content_handler``)."""

    STUB_STATUS = "stub_status"
    PROMETHEUS = "prometheus"
    READINESS = "readiness"
    UPSTREAM_CONTROL = "upstream_control"
    PROXY = "proxy_pass"


Decision = Delay | Restart | Redirect | Plain | Close | Content | Suspend | FileResponse
Handler = Callable[[Request], Decision | None]


# -- POST_READ ---------------------------------------------------------------------------------
def parse_target(r: Request) -> None:
    """``$uri`` and ``$args`` from the request-target (a bad one is 400); ``$host`` falls back
    to the server's name.  An SSI include's subrequest has its URI and arguments already,
    decoded (``ngx_http_subrequest`` sets ``sr->uri`` and ``sr->args``): not parsed again."""
    if r.ssi_depth:
        return None
    path, args = split_target(r.head.target)
    ctx = r.ctx
    # merge_slashes: "compression of two or more adjacent slashes in a URI into a single
    # slash" (server level).
    ctx.uri, ctx.args = normalize_uri(path, merge_slashes=r.server.merge_slashes), args
    r.quoted_uri = "%" in path or "+" in path
    if not ctx.host:
        ctx.host = r.server.name
    return None


def check_tls(r: Request) -> None:
    """``ngx_http_process_request``: plain HTTP on an ``ssl`` port is 497; with
    ``ssl_verify_client``, a certificate that did not verify is 495 ("400 The SSL certificate
    error"), and with ``on`` a missing one is 496 ("400 No required SSL certificate was
    sent")."""
    if r.plain_on_tls:
        raise HttpError(497, "client sent plain HTTP request to HTTPS port")
    ssl = r.server.ssl
    if r.tls_vars is None or ssl is None:
        return None
    verify = ssl.verify_client
    result = r.tls_vars["ssl_client_verify"]
    if verify == "off":
        return None
    if result.startswith("FAILED") and verify != "optional_no_ca":
        raise HttpError(495, f"client SSL certificate verify error: ({result[7:]})")
    if verify == "on" and result == "NONE":
        raise HttpError(496, "client sent no required SSL certificate")
    return None


def _realip(r: Request, settings: LocationSettings) -> None:
    """ngx_http_realip_handler: "changes the client address and optional port to those sent
    in the specified header field", when the connection's address is trusted
    (``set_real_ip_from``); once per request.  The request's ``$remote_addr`` and
    ``$remote_port`` change, and everything that reads them (``allow``/``deny``, the
    ``limit_*`` keys, ``ip_hash``, ``$proxy_add_x_forwarded_for``, the logs); the next
    request of the connection starts from the connection's own address again (nginx restores
    it in the request's pool cleanup)."""
    ctx = r.ctx
    if not settings.real_ip_from or ctx.realip is not None:
        return None
    name = settings.real_ip_header
    port: int | None = None
    if name == "proxy_protocol":
        # The header's source address, and its source port ("ngx_inet_set_port(...,
        # c->proxy_protocol->src_port)").
        pp = ctx.proxy_protocol
        if pp is None:
            return None
        values = [pp.src_addr]
        port = pp.src_port
    elif name == "X-Forwarded-For":
        # ngx_http_get_forwarded_addr: every X-Forwarded-For, the last one first.
        values = [v for k, v in ctx.headers if k.lower() == "x-forwarded-for"]
    else:
        # X-Real-IP and any other name: the first header of that name.
        low = name.lower()
        values = [v for k, v in ctx.headers if k.lower() == low][:1]
    if not values:
        return None
    found = forwarded_addr(
        (ctx.remote_addr, ctx.remote_port),
        values,
        settings.real_ip_from,
        settings.real_ip_recursive,
    )
    if found is not None:
        ctx.realip = (ctx.remote_addr, ctx.remote_port)
        ctx.remote_addr, ctx.remote_port = found[0], found[1] if port is None else port
        ctx.invalidate()
    return None


def realip_post_read(r: Request) -> None:
    """realip at ``POST_READ``, with the server's settings (nginx: the server's own
    location configuration, before any location is found)."""
    return _realip(r, r.server.settings)


def realip_preaccess(r: Request) -> None:
    """realip again at ``PREACCESS``, with the location's settings, if the server's did not
    change the address (``set_real_ip_from`` in a location)."""
    return _realip(r, r.settings)


# -- SERVER_REWRITE, REWRITE -------------------------------------------------------------------
def stop_response(r: Request, stop: Stop) -> Decision:
    """The response a script's :class:`~wsgate.http.rewrite.Stop` makes
    (``ngx_http_script_return_code``): "Stops processing and returns the specified code to
    a client.  The non-standard code 444 closes a connection without sending a response
    header."  A redirect's (301, 302, 303, 307, 308) text is its ``Location`` (one starting
    with a slash is made absolute when the response is sent: ``absolute_redirect``,
    :func:`wsgate.http.redirects.absolute_location`); a code below 400, or one with a text,
    is sent with the text as its body (``ngx_http_send_response``); any other code gets its
    error page."""
    code, text = stop.code, stop.text
    if code in (301, 302, 303, 307, 308):
        return Redirect(code, text or "")
    if code == 444:
        return Close(444)
    if text is None and code >= 400:
        raise HttpError(code)
    # ngx_http_send_response with no type: ngx_http_set_content_type, the type of the
    # URI's extension, else default_type; a 204 has none (ngx_http_header_filter clears it).
    body = (text or "").encode("utf-8", "surrogateescape")
    return Plain(code, body, None if code == 204 else content_type(r.settings, r.ctx.uri))


def server_rewrite(r: Request) -> Decision | None:
    """The rewrite module at ``server`` level (the server rewrite phase, before any
    location): "the directives of this module specified on the server level are executed
    sequentially"."""
    settings = r.server.settings
    if not settings.rewrite:
        return None
    stop = execute(settings.rewrite, r, settings.rewrite_log)
    return None if stop is None else stop_response(r, stop)


def location_rewrite(r: Request) -> Decision | None:
    """The rewrite module in the location found (the rewrite phase); skipped when no
    location matched ("skipping location rewrite phase for server null location")."""
    settings = r.settings
    if r.location is None or not settings.rewrite:
        return None
    stop = execute(settings.rewrite, r, settings.rewrite_log)
    return None if stop is None else stop_response(r, stop)


class UninitializedWarning:
    """``ctx.uninitialized`` for a request: reading a variable only ``set`` makes, which the
    request has not set, logs nginx's ``[warn] using uninitialized "x" variable`` while the
    settings in force have ``uninitialized_variable_warn on`` (``ngx_http_rewrite_var``);
    once the access log is being written (:meth:`logging`), "while logging request" follows,
    as nginx's log phase sets that action."""

    __slots__ = ("names", "r", "action")

    def __init__(self, r: Request, names: frozenset[str]) -> None:
        self.names = names
        self.r = r
        self.action = ""

    def __call__(self, name: str) -> None:
        r = self.r
        if name in self.names and r.settings.uninitialized_variable_warn:
            r.log("warn", f'using uninitialized "{name}" variable{self.action}')

    def logging(self) -> None:
        """The log phase has begun."""
        self.action = _LOGGING

    def settle(self, settings: LocationSettings) -> Callable[[str], None] | None:
        """The same for an open tunnel, which keeps the request's variables but not the
        request, and reads them again only to log: with the settings it ended with, holding
        only the log and the names."""
        if not settings.uninitialized_variable_warn:
            return None
        names, log, number, ctx = self.names, self.r.worker.error_log, self.r.number, self.r.ctx

        def warn(name: str) -> None:
            if name in names:
                log.log("warn", f'using uninitialized "{name}" variable{_LOGGING}', number, ctx)

        return warn


#: ``ngx_http_log_handler``'s ``r->connection->log->action = "logging request"``.
_LOGGING = " while logging request"


def uninitialized_warning(r: Request, names: frozenset[str]) -> UninitializedWarning:
    """``ctx.uninitialized`` for ``r`` (see :class:`UninitializedWarning`)."""
    return UninitializedWarning(r, names)


# -- FIND_CONFIG -------------------------------------------------------------------------------
def find_config(r: Request) -> Decision | None:
    """``ngx_http_core_find_config_phase``: the location for ``$uri`` and its settings,
    ``internal`` ("For external requests, the client error 404 is returned"), the
    connection's keep-alive limits, and the 301 to ``location/`` ("If a location is defined
    by a prefix string that ends with the slash character ... the permanent redirect with
    the code 301 will be returned")."""
    ctx = r.ctx
    r.uri_changed = False
    location, match = find_location_match(r.server, ctx.uri)
    if match is not None:
        # Only a regex location's match changes $1..$9 (those of a rewrite stay otherwise).
        ctx.set_match(match)
    _use_location(r, location)
    if not r.internal and r.settings.internal:
        raise HttpError(404)
    if location is not None and needs_slash_redirect(location, ctx.uri):
        # "r->headers_out.location->value = clcf->escaped_name" (and "?" and the args).
        target = escape_uri(location.name) + (f"?{ctx.args}" if ctx.args else "")
        return Redirect(301, target)
    return None


def _use_location(r: Request, location: Location | None) -> None:
    """``ngx_http_update_location_config``: the location's settings (its root and error
    logs), and its keep-alive limits for the connection."""
    head, ctx = r.head, r.ctx
    r.location = location
    settings = r.settings = location.settings if location is not None else r.server.settings
    ctx.root = settings.root
    # ngx_http_update_location_config: "ngx_set_connection_log(r->connection,
    # clcf->error_log)": the location's error_log takes the request's lines from here on.
    ctx.error_logs = settings.error_logs
    if (
        settings.keepalive_timeout == 0
        or r.connection_requests >= settings.keepalive_requests
        or r.worker.clock() - r.connection_started >= settings.keepalive_time
        or r.worker.stopping
        or (settings.keepalive_disable and _keepalive_disabled(head, settings.keepalive_disable))
    ):
        # keepalive_timeout 0 disables keep-alive; keepalive_requests caps a connection
        # (https://nginx.org/en/docs/http/ngx_http_core_module.html#keepalive_requests).
        head.keep_alive = False


def _keepalive_disabled(head: RequestHead, browsers: frozenset[str]) -> bool:
    """``keepalive_disable``: "Disables keep-alive connections with misbehaving browsers."
    ``ngx_http_update_location_config``: MSIE 6 for a POST only ("MSIE may wait for some
    time if an response for a POST request was sent over a keepalive connection"), Safari
    always; the browser as ``ngx_http_process_user_agent`` finds it."""
    msie6 = "msie6" in browsers and head.method == "POST"
    safari = "safari" in browsers
    if not (msie6 or safari):
        return False  # the default (msie6) and a GET: no header lookup
    agent = head.header("user-agent")
    if not agent:
        return False
    return (msie6 and _is_msie6(agent)) or (safari and _is_safari(agent))


def _is_msie6(agent: str) -> bool:
    """``r->headers_in.msie6`` (``ngx_http_process_user_agent``): "MSIE 4.", "MSIE 5." or
    "MSIE 6." without "SV1" after it, with more than two bytes after "MSIE ", and no
    "Opera" anywhere."""
    at = agent.find("MSIE ")
    if at == -1 or at + 7 >= len(agent) or "Opera" in agent or agent[at + 6] != ".":
        return False
    version = agent[at + 5]
    return version in "45" or (version == "6" and "SV1" not in agent[at + 8 :])


def _is_safari(agent: str) -> bool:
    """``r->headers_in.safari``: not MSIE, Opera, Gecko or Chrome, and "Safari/" with
    "Mac OS X"."""
    at = agent.find("MSIE ")
    if (at != -1 and at + 7 < len(agent)) or "Opera" in agent:
        return False
    if "Gecko/" in agent or "Chrome/" in agent:
        return False
    return "Safari/" in agent and "Mac OS X" in agent


# -- POST_REWRITE ------------------------------------------------------------------------------
def post_rewrite(r: Request) -> Decision | None:
    """``ngx_http_core_post_rewrite_phase``: "the loop is repeated if a request URI was
    rewritten, but not more than 10 times" — a changed URI is an internal redirect back to
    ``FIND_CONFIG``, counted by :func:`run` (the eleventh is nginx's 500, "rewrite or
    internal redirection cycle")."""
    return Restart() if r.uri_changed else None


# -- PREACCESS ---------------------------------------------------------------------------------
def limit_req(r: Request) -> Decision | None:
    """ngx_http_limit_req_handler: "If the requests rate exceeds the rate configured for a
    zone, their processing is delayed such that requests are processed at a defined rate.
    Excessive requests are delayed until their number exceeds the maximum burst size in
    which case the request is terminated with an error."  "Requests with an empty key
    value are not accounted."  Delays are logged one level below refusals.  A list with a
    zone kept in Redis (wsgate's ``redis=``) is decided on the event loop
    (:class:`~wsgate.limits_redis.ReqWait`); this handler then runs again with the
    decision."""
    settings = r.settings
    wait = r.req_wait
    if wait is not None:
        r.req_wait = None
        decision = wait.decision
    else:
        if not settings.limit_req or r.limit_req_done:
            return None
        entries: list[ReqLimit] = []
        shared = False  # a zone kept in Redis: decided on the event loop
        for lr in settings.limit_req:
            spec = lr.zone
            key = spec.key.render(r.ctx.lookup)
            if key:
                zone: ReqZone | RedisReqZone
                if spec.redis is None:
                    zone = r.worker.limits.req_zone(spec.name, spec.rate)
                else:
                    from wsgate.limits_redis import zones_of

                    zone = zones_of(r.worker).req_zone(spec)
                    shared = True
                entries.append((zone, key, lr.burst, lr.delay))
        if not entries:
            return None
        # "if (r->main->limit_req_status) return NGX_DECLINED;": once per request.
        r.limit_req_done = True
        now = int(r.worker.clock() * 1000)
        if shared:
            from wsgate.limits_redis import ReqWait

            r.req_wait = wait = ReqWait(entries, now)
            return Await(wait.run)
        decision = check_requests(cast("list[tuple[ReqZone, str, int, int]]", entries), now)
    dry = ", dry run" if settings.limit_req_dry_run else ""
    level = settings.limit_req_log_level
    excess = f"{decision.excess // 1000}.{decision.excess % 1000:03d}"
    if decision.rejected is not None:
        if decision.no_memory:
            r.log("alert", f'could not allocate node in limit_req zone "{decision.rejected}"')
        elif decision.unavailable:
            pass  # a Redis zone failing closed: it logs that itself, once per interval
        else:
            r.log(level, f'limiting requests{dry}, excess: {excess} by zone "{decision.rejected}"')
        if not dry:
            raise HttpError(settings.limit_req_status)
    elif decision.delay_ms:
        lower = "info" if level == "info" else _LEVEL_BELOW[level]
        r.log(lower, f'delaying request{dry}, excess: {excess}, by zone "{decision.zone}"')
        if not dry:
            return Delay(decision.delay_ms / 1000)
    return None


def limit_conn(r: Request) -> Decision | None:
    """ngx_http_limit_conn_handler: "When this limit is exceeded, the server will return
    the error in reply to a request."  "Connections with an empty key value are not
    accounted."  The slots taken are kept in ``r.conn_slots`` until the request (or its
    tunnel) ends.  A zone kept in Redis (wsgate's ``redis=``) is asked on the event loop
    (:class:`~wsgate.limits_redis.ConnWait`); this handler then goes on from that zone."""
    settings = r.settings
    wait = r.conn_wait
    start = 0
    if wait is not None:
        r.conn_wait = None
        start = wait.index
    elif r.limit_conn_done:
        return None
    limits = settings.limit_conn
    for i in range(start, len(limits)):
        lc = limits[i]
        spec = lc.zone
        if wait is not None and i == start:
            got = wait.result  # a slot taken is the request's already
            if got is True:
                continue
        else:
            key = spec.key.render(r.ctx.lookup)
            if not key:
                continue
            # "r->main->limit_conn_status = NGX_HTTP_LIMIT_CONN_PASSED": once per request.
            r.limit_conn_done = True
            if spec.redis is not None:
                return _limit_conn_shared(r, i, key)
            zone = r.worker.limits.conn_zone(spec.name)
            got = zone.acquire(key, lc.conn)
            if got is True:
                r.conn_slots += ((zone, key),)
                continue
        dry = settings.limit_conn_dry_run
        if got is Refused.NO_MEMORY:
            # nginx: the slab allocator's line, and the limit's status.
            r.log("crit", f'ngx_slab_alloc() failed: no memory in limit_conn_zone "{spec.name}"')
        elif got is Refused.UNAVAILABLE:
            pass  # a Redis zone failing closed: it logs that itself, once per interval
        else:
            dry_text = ", dry run" if dry else ""
            r.log(
                settings.limit_conn_log_level,
                f'limiting connections{dry_text} by zone "{spec.name}"',
            )
        if not dry:
            raise HttpError(settings.limit_conn_status)
    return None


def _limit_conn_shared(r: Request, index: int, key: str) -> Decision:
    """Ask the Redis zone of ``limit_conn`` number ``index`` for a slot for ``key``."""
    from wsgate.limits_redis import ConnWait, zones_of

    lc = r.settings.limit_conn[index]
    zone = zones_of(r.worker).conn_zone(lc.zone)
    dry = r.settings.limit_conn_dry_run

    def taken(slot: RedisSlot) -> None:
        if dry:
            slot.limit = 0  # "the number of connections is not limited": never closed
        r.conn_slots += ((slot, key),)

    r.conn_wait = wait = ConnWait(index, zone, key, lc.conn, taken)
    return Await(wait.run)


def release_slots(r: Request) -> None:
    """Give back the ``limit_conn`` slots ``r`` holds (its request ended)."""
    for zone, key in r.conn_slots:
        zone.release(key)
    r.conn_slots = ()


# -- ACCESS ------------------------------------------------------------------------------------
def access(r: Request) -> Decision | None:
    """``allow``/``deny``, ``auth_basic`` and ``auth_request``, combined by ``satisfy``
    (:func:`wsgate.http.auth.access_phase`)."""
    return access_phase(r)


# -- TRY_FILES --------------------------------------------------------------------------------
def _internal(r: Request, uri: str) -> Restart:
    """``try_files``'s last parameter and ``index``: :func:`internal_redirect` to ``uri``
    (``$args`` as the caller set them), or :func:`named_location` for ``@name``."""
    r.ctx.add_uri_to_alias = False
    if uri.startswith("@"):
        return named_location(r, uri)
    return internal_redirect(r, uri, r.ctx.args)


def try_files(r: Request) -> Decision | None:
    """ngx_http_try_files_handler (see :func:`wsgate.content.files.try_files`): the first
    file found goes on to the content phase as ``$uri``; else the last parameter, an internal
    redirect or ``=code``."""
    if r.settings.try_files is None:
        return None
    got = files.try_files(r.settings, r.ctx)
    if got is None:
        return None
    if isinstance(got, int):
        raise HttpError(got)
    return _internal(r, got.uri)


# -- CONTENT -----------------------------------------------------------------------------------
def content(r: Request) -> Decision | None:
    """The location's content handler: ``stub_status`` and ``prometheus`` answer GET and
    HEAD only (``ngx_http_stub_status_handler``: "if (!(r->method & (NGX_HTTP_GET|
    NGX_HTTP_HEAD))) return NGX_HTTP_NOT_ALLOWED;"), ``proxy_pass`` refuses a declared body
    over ``client_max_body_size`` (413), and a location with none of them serves files
    (index, autoindex, static: :func:`static`)."""
    settings, head = r.settings, r.head
    if settings.stub_status or settings.prometheus or settings.readiness:
        if head.method not in ("GET", "HEAD"):
            raise HttpError(405)
        if settings.readiness:
            return Content.READINESS
        return Content.STUB_STATUS if settings.stub_status else Content.PROMETHEUS
    if settings.upstream_control:  # wsgate's: a command may come as a POST too
        if head.method not in ("GET", "HEAD", "POST"):
            raise HttpError(405)
        return Content.UPSTREAM_CONTROL
    if settings.proxy_pass is None:
        return static(r)
    if (
        head.content_length is not None
        and not r.discard_body
        and settings.client_max_body_size
        and head.content_length > settings.client_max_body_size
    ):
        raise HttpError(413, f"client intended to send too large body: {head.content_length} bytes")
    return Content.PROXY


def static(r: Request) -> Decision:
    """nginx's content handlers for a location without one of its own, in nginx's order:
    ``index`` (an internal redirect to the index file), ``autoindex``, the static module (the
    file, or a 301 to the directory's URI with a slash), and 403 for a directory with
    neither (:mod:`wsgate.content.files`)."""
    got = files.serve(r.settings, r.ctx, r.head.method, r.log, main=not r.subrequest)
    if isinstance(got, files.Internal):
        return _internal(r, got.uri)
    if isinstance(got, files.Moved):
        return Redirect(301, got.target)
    if isinstance(got, files.Listing):
        return Plain(200, got.body, got.content_type)
    return got


#: The handlers of each phase, in order (the LOG phase is the I/O layer's: it runs when the
#: response is done, or when a tunnel closes).
HANDLERS: tuple[tuple[Phase, tuple[Handler, ...]], ...] = (
    (Phase.POST_READ, (parse_target, check_tls, realip_post_read)),
    (Phase.SERVER_REWRITE, (server_rewrite,)),
    (Phase.FIND_CONFIG, (find_config,)),
    (Phase.REWRITE, (location_rewrite,)),
    (Phase.POST_REWRITE, (post_rewrite,)),
    (Phase.PREACCESS, (realip_preaccess, limit_req, limit_conn)),
    (Phase.ACCESS, (access,)),
    (Phase.TRY_FILES, (try_files,)),
    (Phase.CONTENT, (content,)),
)


def _flatten(
    table: Sequence[tuple[Phase, Sequence[Handler]]],
) -> tuple[tuple[Handler, ...], dict[Phase, int]]:
    """The handlers in order, and where each phase's first handler is."""
    handlers: list[Handler] = []
    starts: dict[Phase, int] = {}
    for phase in Phase:
        starts[phase] = len(handlers)
        for p, hs in table:
            if p is phase:
                handlers.extend(hs)
    return tuple(handlers), starts


_DEFAULT = _flatten(HANDLERS)


def _uri_change(r: Request, what: str) -> None:
    """Count one internal redirect (``r->uri_changes--``); the eleventh is a 500, "rewrite
    or internal redirection cycle" with ``what`` nginx says it was doing."""
    r.uri_changes -= 1
    if r.uri_changes == 0:
        raise HttpError(500, f"rewrite or internal redirection cycle {what}")


def internal_redirect(r: Request, uri: str, args: str) -> Restart:
    """``ngx_http_internal_redirect``: ``$uri`` and ``$args`` become ``uri`` and ``args``
    (as given: nothing is normalised), the request is internal, and the phases go on at
    ``SERVER_REWRITE`` with the server's settings (``r->loc_conf = cscf->ctx->loc_conf``)
    until ``FIND_CONFIG`` finds the location.  ``proxy_pass`` without a URI then sends
    ``$uri`` and ``$args`` (``r->valid_unparsed_uri = 0``).  ``error_page`` and
    ``try_files`` use it."""
    _uri_change(r, f'while internally redirecting to "{uri}"')
    ctx = r.ctx
    ctx.uri, ctx.args = uri, args
    # nginx keeps the values of cacheable variables (a map without ``volatile``) across an
    # internal redirect: r->variables is not cleared (map_volatile.t).
    r.internal = True
    r.valid_unparsed_uri = False
    _use_location(r, None)
    return Restart(Phase.SERVER_REWRITE)


def named_location(r: Request, name: str) -> Restart:
    """``ngx_http_named_location``: the server's ``location @name`` (``name`` with its
    ``@``) takes the request as it is (``$uri``, ``$args`` and the request-target sent by
    ``proxy_pass`` unchanged) and the phases go on at ``REWRITE`` there, without
    ``FIND_CONFIG``.  No such location, or an empty ``$uri``, is a 500.  ``error_page`` and
    ``try_files`` use it."""
    _uri_change(r, f'while redirect to named location "{name}"')
    if not r.ctx.uri:
        raise HttpError(500, f'empty URI in redirect to named location "{name}"')
    location = find_named_location(r.server, name)
    if location is None:
        raise HttpError(500, f'could not find named location "{name}"')
    r.internal = True
    _use_location(r, location)
    return Restart(Phase.REWRITE)


def _restart(r: Request, restart: Restart, starts: dict[Phase, int]) -> int:
    """Where the walk goes on after ``restart``; ``rewrite ... last`` is counted here, as
    ``ngx_http_core_post_rewrite_phase`` counts it."""
    if restart.phase is Phase.FIND_CONFIG:
        _uri_change(r, f'while processing "{r.ctx.uri}"')
    r.access = None  # an internal redirect clears the modules' contexts
    return starts[restart.phase]


def response_fields(r: Request, redirect: bool = False) -> tuple[tuple[str, str], ...]:
    """The fields a response gets from ``headers_out`` before its own: an intercepted 401's
    ``WWW-Authenticate``, and the ``Location`` of a redirect an error page took over
    (nginx keeps it in ``headers_out``); a redirect writes its own ``Location`` instead."""
    if redirect:
        return _without_location(r.headers_out)
    # A Location kept from a redirect is made absolute as nginx's header filter does.
    return tuple((n, r.absolute(v) if n == "Location" else v) for n, v in r.headers_out)


#: What :func:`on_error` consults, in order, when an error (or a redirect a handler makes)
#: would be answered with nginx's page: one may redirect internally (a :class:`Restart`) or
#: answer with a redirect instead.  The I/O layer passes
#: :data:`wsgate.http.errorpages.ERROR_HANDLERS` (``error_page``) to :func:`run`.
ErrorHandler = Callable[[Request, HttpError], Restart | Redirect | None]

#: Statuses nginx ends the request with and sends nothing for (``ngx_http_finalize_request``
#: terminates 408, 444 and 499 before ``ngx_http_special_response_handler``).
_NO_RESPONSE = frozenset({408, 444, 499})


def log_error(r: Request, exc: HttpError) -> None:
    """An error's line in the error log, when it happens (before any error page)."""
    level = exc.log_level
    if level is not None:
        r.log(level, exc.log)


def on_error(
    r: Request,
    exc: HttpError,
    handlers: Sequence[ErrorHandler] = (),
) -> Restart | Redirect | None:
    """``ngx_http_finalize_request`` with an error status: its log line, keep-alive off
    after the statuses nginx closes on (even when an error page answers), then the first
    error handler's decision; None: nginx's page for ``exc`` (or no response at all, for
    408, 444 and 499).  A :class:`Restart` it returns is counted already."""
    log_error(r, exc)
    if exc.status in _NO_RESPONSE:
        return None
    if closes_connection(exc.status):
        r.head.keep_alive = False
    if exc.status == 413:
        # ngx_http_core_find_config_phase: "(void) ngx_http_discard_request_body(r)"
        # before the 413, so an error page's location neither refuses nor sends it.
        r.discard_body = True
    for handler in handlers:
        decision = handler(r, exc)
        if decision is not None:
            return decision
    return None


def _without_location(fields: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """``ngx_http_clear_location``."""
    return tuple(f for f in fields if f[0].lower() != "location")


def run(
    r: Request,
    start: int = 0,
    table: Sequence[tuple[Phase, Sequence[Handler]]] | None = None,
    error: HttpError | None = None,
    errors: Sequence[ErrorHandler] = (),
) -> tuple[Decision, int]:
    """Walk the handlers from index ``start`` until one decides; returns the decision and
    the index to resume at after a :class:`Delay`.  ``error`` is one the content phase's
    I/O met: it goes through :func:`on_error` first, as every error a handler raises and
    every :class:`Redirect` a handler makes do.  A :class:`Restart` goes on where it says,
    at most :data:`MAX_URI_CHANGES` times ("rewrite or internal redirection cycle", 500).
    An error no error page answers leaves as the :class:`~wsgate.errors.HttpError` (the I/O
    layer sends nginx's page); the content phase always decides (404 at the latest)."""
    handlers, starts = _DEFAULT if table is None else _flatten(table)
    i = start
    while True:
        if error is None:
            if i == len(handlers):
                error = HttpError(404)
                continue
            try:
                decision = handlers[i](r)
            except HttpError as exc:
                error = exc
                continue
            i += 1
            if decision is None:
                continue
            if isinstance(decision, Restart):
                try:
                    i = _restart(r, decision, starts)
                except HttpError as exc:
                    error = exc
                continue
            if isinstance(decision, Offload | Pause | Subrequest | Await):
                return decision, i - 1  # the same handler goes on when the wait is over
            if not isinstance(decision, Redirect):
                return decision, i
            # ngx_http_finalize_request(r, 301..308) goes through error_page too; its
            # Location stays in headers_out until another redirect replaces it.
            r.headers_out = (*_without_location(r.headers_out), ("Location", decision.location))
            try:
                after = on_error(r, HttpError(decision.status), errors)
            except HttpError as exc:
                error = exc
                continue
            if after is None:
                return decision, i
        else:
            try:
                after = on_error(r, error, errors)
            except HttpError as exc:
                error = exc
                continue
            if after is None:
                raise error
            error = None
        if isinstance(after, Redirect):
            return after, i
        try:
            i = _restart(r, after, starts)
        except HttpError as exc:
            error = exc
