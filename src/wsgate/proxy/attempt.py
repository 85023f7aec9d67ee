"""One try of a request on one upstream server: connect, send, read the response head.

An :class:`Attempt` takes a kept connection when the group has one (``keepalive``) or opens
a new one (``proxy_connect_timeout``; TLS for ``proxy_pass https://``, see
:class:`wsgate.proxy.connect.UpstreamOpen`), sends the rebuilt head and the body (streamed:
``proxy_send_timeout`` between writes), and reads the response head (``proxy_read_timeout``;
interim 1xx responses are skipped).  Whatever fails in a way ``proxy_next_upstream`` names
raises :class:`TryFailed` with its :class:`~wsgate.upstream.next.Failure` kind, the status the
client gets if it is the last try and nginx's error-log text; whether to try the next server
is :class:`~wsgate.proxy.proxying.Proxying`'s question, answered by the pure
:func:`wsgate.upstream.next.may_retry`.

A kept connection found closed by the upstream is replaced by a new one to the same server,
once, without counting a failure, when the request can be sent again (nginx: "if
(u->peer.cached && ft_type == FT_ERROR) u->peer.tries++").  Kept connections are keyed by peer
*and* TLS settings, so a location proxying with ``http://`` never gets a TLS connection to the
same upstream (nginx matches kept connections by address only).
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator, Callable, Hashable
from typing import TYPE_CHECKING

from wsgate.config.model import LocationSettings
from wsgate.config.variables import RequestContext
from wsgate.errors import HttpError
from wsgate.http.headers import LAST_CHUNK, BodyFraming, Framing, encode_chunk
from wsgate.http.reqbody import RequestBody
from wsgate.http.request import RequestHead
from wsgate.http.response import InvalidHeader, ResponseEvent, ResponseHead, ResponseParser
from wsgate.proxy.connect import HANDSHAKING, HandshakeFailed, UpstreamOpen, save_session
from wsgate.proxy.deadline import Deadline
from wsgate.proxy.endpoint import CountedEndpoint, Endpoint, KeptEndpoints, PeerClosed, Ready
from wsgate.upstream.next import Failure, replayable
from wsgate.upstream.pool import Kept
from wsgate.upstream.tls import UpstreamTls

if TYPE_CHECKING:
    from wsgate.proxy.context import WorkerContext
    from wsgate.upstream.roundrobin import Peer

__all__ = ["Attempt", "ResponseStart", "TryFailed"]

#: The response head, its parser, and the events read with it (body bytes, or its end).
ResponseStart = tuple[ResponseHead, ResponseParser, list[ResponseEvent]]

_READING_HEADER = "reading response header from upstream"


class TryFailed(Exception):
    """A try failed in a way ``proxy_next_upstream`` names (``kind``); ``status`` is what the
    client gets if it is the last one, ``log`` nginx's error-log text, ``phase`` the action
    for the "temporarily disabled" warning, ``answered`` whether any response byte came."""

    def __init__(
        self, kind: Failure, status: int, log: str, phase: str, answered: bool = False
    ) -> None:
        super().__init__(log)
        self.kind = kind
        self.status = status
        self.log = log
        self.phase = phase
        self.answered = answered


class Attempt:
    """What one try did so far: the connection, whether the request (and a body) was sent."""

    __slots__ = (
        "gw",
        "client",
        "body",
        "number",
        "head",
        "settings",
        "tls",
        "name",
        "up",
        "kept",
        "sent",
        "streamed",
        "counts",
        "times",
        "started",
        "head_request",
        "memory",
        "limit",
        "ready",
    )

    def __init__(
        self,
        gw: WorkerContext,
        client: Endpoint,
        body: Callable[[float], AsyncIterator[bytes]],
        number: int,
        head: RequestHead,
        settings: LocationSettings,
        *,
        streamed: bool,
        tls: UpstreamTls | None,
        name: str,
        head_request: bool | None = None,
        memory: int = 0,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.gw = gw
        #: The request sent upstream is a HEAD (not so for a HEAD the cache converts to GET).
        self.head_request = head.method == "HEAD" if head_request is None else head_request
        #: The client's endpoint: its close ends the wait for the head (499), and it gets
        #: ``100 Continue`` before the body is read.
        self.client = client
        #: The request body's decoded chunks (the front connection's reader).
        self.body = body
        self.number = number
        self.head = head
        self.settings = settings
        self.tls = tls
        self.name = name
        self.up: Endpoint | None = None
        self.kept: Kept[Endpoint] | None = None
        self.sent = False
        #: A body was streamed (by this try or an earlier one): it cannot be sent again.
        self.streamed = streamed
        #: This try's [bytes received, bytes sent] (``$upstream_bytes_received``/``_sent``).
        self.counts = [0, 0]
        #: This try's [connect time, header time] as nginx prints them ("-": not reached;
        #: ``$upstream_connect_time``/``$upstream_header_time``), from :attr:`started`.
        self.times = ["-", "-"]
        self.started = gw.loop.time()
        #: A streamed body's bytes while they fit ``limit`` (its buffer): ``$request_body``.
        self.memory: list[bytes] | None = None
        self.limit = memory
        #: Whether more of the body (bytes, or its end) is already here: what is to be sent
        #: waits for it, to go out in one write.
        self.ready = ready

    async def run(
        self,
        peer: Peer,
        keep: KeptEndpoints | None,
        request: bytes,
        buffered_body: RequestBody | None,
        framing: BodyFraming,
        ctx: RequestContext,
    ) -> ResponseStart:
        """One try on ``peer``: a kept connection if there is one, else a new one."""
        key: Hashable = (peer, self.tls)
        if keep is not None:
            kept = await keep.take(key)
            if kept is not None:
                self.up, self.kept = kept.conn, kept
                # "u->state->connect_time" of a cached connection: no time spent connecting.
                self.times[0] = "0.000"
                try:
                    return await self._send(request, buffered_body, framing)
                except TryFailed as failed:
                    # The upstream closed the kept connection meanwhile: nginx retries through
                    # its next-upstream logic ("if (u->peer.cached && ft_type == FT_ERROR)
                    # u->peer.tries++"); wsgate opens a new connection to the same server,
                    # once, counting no failure, when the request can be sent again.
                    allowed = self.settings.proxy_next_upstream
                    if not (
                        failed.kind is Failure.ERROR
                        and not failed.answered
                        and replayable(self.streamed, self.head.method, allowed)
                    ):
                        raise
                    self.gw.error_log.log(
                        "info", f"{failed.log} (kept connection, retrying)", self.number, ctx
                    )
                    kept.conn.abort()
                    self.up = self.kept = None
                    self.sent = False
        self.up = await self._connect(peer)
        self.times[0] = self._elapsed()
        self.kept = keep.new(key, self.up) if keep is not None else None
        result = await self._send(request, buffered_body, framing)
        if self.tls is not None:
            save_session(self.tls, peer, self.up)
        return result

    async def _send(
        self, request: bytes, buffered_body: RequestBody | None, framing: BodyFraming
    ) -> ResponseStart:
        """Send the request on ``self.up`` and read the response head."""
        up = self.up
        assert up is not None
        self.sent = True
        if self.kept is not None:
            self.kept.requests += 1
        # The head goes out with the body bytes already here, in one write (nginx's writev
        # of the head and the preread body); alone when the body is still to come.
        lead = request
        if framing.kind is Framing.NONE or (
            buffered_body is None and (self.ready is None or not self.ready())
        ):
            up.write(request)
            lead = b""
        self.counts[1] += len(request)
        head = self.head
        if head.expect_continue and head.version == "1.1" and framing.kind is Framing.NONE:
            # ngx_http_read_client_request_body tests Expect before it looks at the length:
            # "Content-Length: 0" gets its 100 too (http_expect_100_continue.t), once.
            head.expect_continue = False
            self.client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if buffered_body is not None:
            for piece in buffered_body.pieces():
                up.write(lead + piece if lead else piece)
                lead = b""
                self.counts[1] += len(piece)
                await self._drain_upstream(up)
            if lead:
                up.write(lead)
        elif framing.kind is not Framing.NONE:
            if self.streamed:  # pragma: no cover - may_retry never repeats a streamed body
                raise TryFailed(Failure.ERROR, 502, "request body already sent", "sending request")
            self.streamed = True
            await self._stream_body(up, framing, lead)
        start = await self._read_response_head(up)
        self.times[1] = self._elapsed()
        return start

    def _elapsed(self) -> str:
        return f"{self.gw.loop.time() - self.started:.3f}"

    async def _connect(self, peer: Peer) -> Endpoint:
        gw = self.gw
        excess = gw.upstream_room()
        if excess:
            gw.upstream_caches.drop_idle(excess)
        loop = gw.loop
        opening = UpstreamOpen(
            loop, peer, self.tls, self.name, factory=lambda: CountedEndpoint(loop, gw)
        )
        # The socket being connected is a connection (worker_connections, a descriptor) too.
        gw.upstream_opening()
        try:
            async with Deadline(loop, self.settings.proxy_connect_timeout):
                ep = await opening.run()
        except TimeoutError:
            if opening.ep is not None:
                opening.ep.abort()
            raise TryFailed(
                Failure.TIMEOUT,
                504,
                f"upstream timed out (110: Connection timed out) while {opening.phase}",
                opening.phase,
            ) from None
        except HandshakeFailed as exc:
            if opening.ep is not None:
                opening.ep.abort()
            log = f"{exc.args[0]} while {HANDSHAKING}"
            raise TryFailed(Failure.ERROR, 502, log, HANDSHAKING) from None
        except OSError as exc:
            code = exc.errno or errno.ECONNREFUSED
            raise TryFailed(
                Failure.ERROR,
                502,
                f"connect() failed ({code}: {os.strerror(code)}) while connecting to upstream",
                "connecting to upstream",
            ) from None
        finally:
            gw.upstream_closed()  # connected: counted by the endpoint from now on
        return ep

    async def _read_response_head(self, up: Endpoint) -> ResponseStart:
        settings = self.settings
        max_head = max(settings.proxy_buffer_size, 4096)
        rparser = ResponseParser(head_request=self.head_request, max_head=max_head)
        timeout = settings.proxy_read_timeout
        client_gone = self.client.gone()
        answered = False
        while True:
            ready = await up.wait_data_or(client_gone, timeout)
            if ready is Ready.DATA:
                data = up.take() if up.buffer else b""
            elif ready is Ready.OTHER:
                # ngx_http_upstream_check_broken_connection: a client that closed while we
                # wait for the upstream ends the request with 499, upstream closed too.
                raise HttpError(
                    499,
                    "client prematurely closed connection, so upstream connection is closed "
                    "too while reading response header from upstream",
                )
            else:
                raise TryFailed(
                    Failure.TIMEOUT,
                    504,
                    "upstream timed out (110: Connection timed out) while reading "
                    "response header from upstream",
                    _READING_HEADER,
                    answered,
                )
            try:
                if not data:
                    if up.error is not None and not isinstance(up.error, PeerClosed):
                        raise TryFailed(
                            Failure.ERROR,
                            502,
                            f"recv() failed ({_errno_text(up.error)}) while reading "
                            "response header from upstream",
                            _READING_HEADER,
                            answered,
                        )
                    events = rparser.feed_eof()
                else:
                    answered = True
                    self.counts[0] += len(data)
                    events = rparser.feed(data)
            except HttpError as exc:
                # A malformed head is ``invalid_header``; a close or a head nginx rejects
                # for other reasons is ``error``.
                invalid = isinstance(exc, InvalidHeader) or not exc.log
                kind = Failure.INVALID_HEADER if invalid else Failure.ERROR
                log = exc.log or "upstream sent invalid header"
                raise TryFailed(kind, 502, log, _READING_HEADER, answered) from None
            while True:
                resp = next((ev for ev in events if isinstance(ev, ResponseHead)), None)
                if resp is None:
                    break
                if resp.status >= 200 or resp.status == 101:
                    return resp, rparser, [e for e in events if e is not resp]
                # An interim 1xx (100 Continue, 103 Early Hints) is not relayed; nginx reads
                # on to the final response.
                rest = rparser.take_buffered()
                rparser = ResponseParser(head_request=self.head_request, max_head=max_head)
                events = rparser.feed(rest) if rest else []
            if not data:
                raise TryFailed(
                    Failure.ERROR,
                    502,
                    "upstream prematurely closed connection while reading response "
                    "header from upstream",
                    _READING_HEADER,
                    answered,
                )

    async def _stream_body(self, up: Endpoint, framing: BodyFraming, lead: bytes) -> None:
        head, settings = self.head, self.settings
        if head.expect_continue and head.version == "1.1":
            self.client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        size = 0
        chunked = framing.kind is Framing.CHUNKED
        memory: list[bytes] | None = []
        async for data in self.body(settings.client_body_timeout):
            size += len(data)
            if memory is not None:
                memory = memory if size <= self.limit else None
                if memory is not None:
                    memory.append(data)
            if settings.client_max_body_size and size > settings.client_max_body_size:
                raise HttpError(
                    413, f"client intended to send too large chunked body: {size} bytes"
                )
            out = encode_chunk(data) if chunked else data
            self.counts[1] += len(out)
            if self.ready is not None and self.ready():
                # More is here already (the body's end too): one write for what one read
                # brought, as nginx sends it.
                lead += out
                continue
            up.write(lead + out if lead else out)
            lead = b""
            await self._drain_upstream(up)
        if chunked:
            up.write(lead + LAST_CHUNK)
            self.counts[1] += len(LAST_CHUNK)
        elif lead:
            up.write(lead)
        self.memory = memory

    async def _drain_upstream(self, up: Endpoint) -> None:
        """Wait for the upstream to take the body: ``proxy_send_timeout`` "is set only between
        two successive write operations"; a failed write is ``error``."""
        phase = "sending request to upstream"
        try:
            async with asyncio.timeout(self.settings.proxy_send_timeout):
                await up.drain()
        except TimeoutError:
            raise TryFailed(
                Failure.TIMEOUT,
                504,
                f"upstream timed out (110: Connection timed out) while {phase}",
                phase,
            ) from None
        except PeerClosed:
            raise TryFailed(
                Failure.ERROR, 502, f"writev() failed (32: Broken pipe) while {phase}", phase
            ) from None


def _errno_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return f"{exc.errno}: {os.strerror(exc.errno)}"
    return f"{errno.ECONNRESET}: Connection reset by peer"
