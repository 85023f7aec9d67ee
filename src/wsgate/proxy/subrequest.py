"""Subrequests: the phases for another URI of the same server, with the main request's
headers and no body.  ``auth_request``'s keeps only the response's status and head
(:meth:`SubExchange.perform`); SSI's ``include`` keeps its body (:meth:`SubExchange.output`:
the response is made as for a client, into a :class:`CaptureEndpoint` that hands the body on,
in order, as it comes).

As ``ngx_http_subrequest`` makes it: the method is ``GET`` (``sr->method = NGX_HTTP_GET``;
``$request_method`` still names the main request's), the request headers are the main
request's (``sr->headers_in = r->headers_in``), there is no body (auth_request gives it "a fake
request body"), the virtual server is the main request's, and the phases run from the start
but skip the access phase (``ngx_http_core_access_phase``: "if (r != r->main)").  Its
``proxy_pass`` is header-only (``sr->header_only = 1``): the upstream's response head is read,
its body is not, and the upstream connection is closed.  A response body is never sent to the
client, so a ``101`` from an auth service is only a status like any other (not 2xx: a 500).
``$upstream_http_*`` of the subrequest are what ``auth_request_set`` reads.

A failure of the subrequest (the upstream refused, timed out, answered garbage) is its status
(502, 504), which the main request turns into 500 ("auth request unexpected status"); a client
that went away (499), or a ``return 444``, ends the main request too (nginx terminates it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

from wsgate.config.variables import RequestContext
from wsgate.errors import HttpError
from wsgate.http.body import Body
from wsgate.http.fields import set_cookie_value
from wsgate.http.phases import Close, Content, Delay, Plain, Redirect, Request, release_slots, run
from wsgate.http.response import ResponseHead, ResponseParser
from wsgate.http.static import FileResponse
from wsgate.http.suspend import Await, Subrequest
from wsgate.proxy.exchange import Exchange
from wsgate.proxy.proxying import Proxying

if TYPE_CHECKING:
    from wsgate.proxy.endpoint import Endpoint
    from wsgate.proxy.front import FrontConnection

__all__ = [
    "CaptureEndpoint",
    "SubExchange",
    "SubrequestContext",
    "run_subrequest",
]

#: Where a subrequest's body goes (the parent's output, or a buffer for ``set=``).
Sink = Callable[[bytes], Awaitable[None]]

#: Statuses that end the main request as well (``ngx_http_terminate_request``).
_TERMINATE = frozenset({408, 444, 499})


class SubrequestContext(RequestContext):
    """A subrequest's variables; ``subrequest`` is its URI, which its error-log lines name
    (``ngx_http_log_error_handler``: ``, subrequest: "/auth"``)."""

    __slots__ = ("subrequest",)
    subrequest: str


def subrequest_context(parent: RequestContext, uri: str, args: str = "") -> SubrequestContext:
    """The subrequest's variables: the main request's, with its own URI and no upstream
    values yet (nginx's subrequest shares the main request's variable values; wsgate's keeps
    a copy of the values set so far, so its ``$upstream_http_*`` stay its own)."""
    ctx = SubrequestContext.__new__(SubrequestContext)
    for name in RequestContext.__slots__:
        setattr(ctx, name, getattr(parent, name))
    # Its own cold fields (the loop shared the main request's): the rest as the main
    # request has them, the upstream's per-try values its own.
    ctx.own_cold_fields()
    ctx.subrequest = uri
    ctx.uri, ctx.args = uri, args
    ctx.proxy_host = ctx.proxy_port = ""
    ctx.status = ctx.bytes_sent = ctx.body_bytes_sent = 0
    ctx.upstream_addrs, ctx.upstream_statuses, ctx.upstream_times = [], [], []
    ctx.upstream_lengths, ctx.upstream_bytes, ctx.upstream_phase_times = [], [], []
    ctx.upstream_headers = ()
    ctx.upstream_started = 0.0
    ctx.captures = ()
    ctx.variables = dict(parent.variables) if parent.variables else None
    ctx.invalidate()
    return ctx


class SubExchange(Exchange):
    """One subrequest: an :class:`Exchange` over the main one's connection, whose response
    is kept instead of written."""

    __slots__ = ("_parent_depth",)

    def __init__(self, main: Exchange, uri: str, args: str = "") -> None:
        # No Exchange.__init__: the server is the main request's, the head a GET of ``uri``.
        self.front = main.front
        self.upgrade = False
        self.head = dataclasses.replace(
            main.head,
            method="GET",
            target=f"{uri}?{args}" if args else uri,
            content_length=None,
            chunked=False,
            upgrade=None,
            expect_continue=False,
        )
        parent = main.r
        self.r = Request(
            parent.worker,
            parent.number,
            self.head,
            subrequest_context(parent.ctx, uri, args),
            parent.server,
            tls_vars=parent.tls_vars,
            connection_requests=parent.connection_requests,
            connection_started=parent.connection_started,
            subrequest=True,
        )
        # The limits count once per main request (``r->main->limit_req_status``): a
        # subrequest applies only those the main request did not.
        self.r.limit_req_done = parent.limit_req_done
        self.r.limit_conn_done = parent.limit_conn_done
        # "sr->internal = 1": an ``internal`` location (nginx's usual auth location) serves it.
        self.r.internal = True
        # SSI's variables and blocks are the main request's (``r->main``'s context).
        if parent.ssi_vars is None:
            parent.ssi_vars = {}
        if parent.ssi_blocks is None:
            parent.ssi_blocks = {}
        self.r.ssi_vars, self.r.ssi_blocks = parent.ssi_vars, parent.ssi_blocks
        self._parent_depth = parent.ssi_depth

    async def output(self, sink: Sink) -> int:
        """Make the response as for a client (phases, content handler, error page) and hand
        its body to ``sink`` as it comes; returns its status.  Nothing of it is logged
        (``log_subrequest off``) and its head is not sent (``r != r->main``)."""
        # How deep in SSI includes this is (``MAX_DEPTH``); its URI is not parsed again.
        self.r.ssi_depth = self._parent_depth + 1
        capture = CaptureEndpoint(sink, self.front.ep)
        main_front = self.front
        self.front = cast("FrontConnection", _SubFront(main_front, capture))
        try:
            await self.run()
            await capture.drain()  # what a response left without a drain of its own
        finally:
            self.front = main_front
        return capture.status or self.r.ctx.status

    async def perform(self) -> tuple[int, ResponseHead | None]:
        """Walk the phases and make the response, keeping it: its status, and the upstream's
        response head when it was proxied."""
        r = self.r
        try:
            decision, index = run(r)
            # A limit_req delay, or a limit zone kept in Redis (the access phase is skipped).
            while isinstance(decision, Delay | Await):
                await self._wait(decision)
                decision, index = run(r, index)
            if isinstance(decision, Redirect | Plain):
                return decision.status, None
            if isinstance(decision, Close):
                raise HttpError(decision.status)
            if decision is Content.PROXY:
                proxying = Proxying(self, header_only=True)
                await proxying.run()
                resp = proxying.response
                assert resp is not None
                return resp.status, resp
            if isinstance(decision, FileResponse):  # a file: its status, not its body
                os.close(decision.fd)
                return decision.status, None
            if isinstance(decision, Content):  # stub_status, prometheus
                return 200, None
            # The access phase is skipped: no other wait can come.
            raise AssertionError(f"no subrequest response for {decision!r}")
        finally:
            release_slots(r)


class _SubFront:
    """The main request's front connection as a subrequest sees it: its writes go to a
    :class:`CaptureEndpoint`, it has no log phase and never a tunnel."""

    __slots__ = ("_main", "ep")
    tunnel = None

    def __init__(self, main: FrontConnection, ep: CaptureEndpoint) -> None:
        self._main = main
        self.ep = ep

    def __getattr__(self, name: str) -> object:
        return getattr(self._main, name)

    def log_access(self, *args: object) -> None:
        """``log_subrequest off``: a subrequest has no access-log line."""


class CaptureEndpoint:
    """Takes the bytes of a response made for a client (head and framed body), parses them
    back, and hands the body to ``sink`` at each :meth:`drain`: the writer's flow control is
    the sink's.  A subrequest's response reaches its parent's output in order this way,
    whatever made it (a file, a proxied response, an error page, a nested SSI document)."""

    __slots__ = ("sink", "client", "parser", "pending", "status", "closed", "write_paused")

    transport = None

    def __init__(self, sink: Sink, client: Endpoint) -> None:
        self.sink = sink
        #: The main request's client connection (whose loss ends the subrequest too).
        self.client = client
        self.parser = ResponseParser(head_request=False, max_head=1 << 20)
        self.pending: list[bytes] = []
        self.status = 0
        self.closed = False
        self.write_paused = False

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.parser.feed(data)
        except (HttpError, RuntimeError):
            # Bytes wsgate made for a client that its upstream parser does not take (a head
            # after a 101): the rest of this response is not included.
            self.closed = True
            return
        for ev in events:
            if isinstance(ev, ResponseHead):
                self.status = ev.status
            elif isinstance(ev, Body) and ev.data:
                self.pending.append(ev.data)

    async def drain(self) -> None:
        while self.pending:
            data = b"".join(self.pending)
            self.pending.clear()
            await self.sink(data)

    def gone(self) -> asyncio.Future[None]:
        """The client's: a subrequest waiting for its upstream ends when the client goes."""
        return self.client.gone()

    def abort(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True


def _upstream_values(sub: Subrequest, main: Request, resp: ResponseHead) -> None:
    """The ``$upstream_http_*`` and ``$upstream_cookie_*`` values ``auth_request_set`` reads,
    into the subrequest's variables: for a field, "the name ... converted to lower case, with
    dashes replaced by underscores", several fields of one name joined with ``, `` (nginx
    1.23.0+); for a cookie, its value in the answer's ``Set-Cookie``."""
    ctx = sub.ctx
    assert ctx is not None
    for av in main.settings.auth_request_set:
        for name in av.value.variables:
            low = name.lower()
            if low.startswith("upstream_http_"):
                want = low[14:]
                values = [v for k, v in resp.headers if k.lower().replace("-", "_") == want]
                ctx.set_variable(low, ", ".join(values))
            elif low.startswith("upstream_cookie_"):
                ctx.set_variable(low, set_cookie_value(resp.headers, name[16:]))


async def run_subrequest(main: Exchange, call: Subrequest) -> None:
    """Perform ``call`` for the request of ``main``: fill its status, the upstream's
    ``WWW-Authenticate`` fields and the subrequest's variables, and mark it done."""
    sub = SubExchange(main, call.uri)
    resp: ResponseHead | None = None
    try:
        status, resp = await sub.perform()
    except HttpError as exc:
        if exc.status in _TERMINATE:
            raise
        if exc.log and exc.status != 404:
            level = "error" if exc.status in (403, 413, 500, 502, 504) else "info"
            sub.r.log(level, exc.log)
        status = exc.status
    call.status = status
    call.ctx = sub.r.ctx
    if resp is not None:
        call.www_authenticate = [(k, v) for k, v in resp.headers if k.lower() == "www-authenticate"]
        _upstream_values(call, main.r, resp)
    call.done = True
