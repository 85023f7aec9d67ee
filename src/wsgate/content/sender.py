"""Sending a file response: the head, then the file's bytes with the kernel's ``sendfile``.

A :class:`~wsgate.http.static.FileResponse` is all decided (status, headers, which bytes of
the open file, in which order); this module writes it to the front connection and closes the
file.  A file is never read into memory whole (a body up to :data:`SMALL` bytes goes in
the head's write: one system call, one packet):

- ``sendfile on`` on a plain TCP connection: ``os.sendfile`` from the file to the socket,
  at most ``sendfile_max_chunk`` per call, waiting for the socket to be writable through the
  event loop when the kernel's buffer is full.  The transport's own buffer must be empty
  first (the head, the multipart boundaries go through it), so the bytes stay in order; the
  writability wait uses a duplicate of the socket's descriptor, because uvloop refuses
  ``add_writer`` on a descriptor its transport owns.
- ``sendfile off``, TLS, a transport without a socket, ``charset`` conversion or
  ``limit_rate`` (paced as :mod:`wsgate.proxy.pacing` paces proxied responses):
  ``os.pread`` of one chunk (``sendfile_max_chunk``, at most 256 KiB) at a time, written
  through the transport with its flow control (``drain``), as nginx's ``output_buffers``
  do.

A file that shrinks while it is sent ends the response early and closes the connection, with
nginx's ``[alert] ... was truncated`` replaced by an ``[error]`` line (a client cannot cause
it); a client that goes away ends it quietly (status 499 is not logged for a response
already started, as nginx logs the status it sent).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from wsgate.content.ssi import send_through_ssi, ssi_applies, ssi_framing, ssi_headers
from wsgate.http.gzip import (
    GunzipError,
    GunzipStream,
    GzipStream,
    gunzip_response,
    gzip_response,
    has_vary,
)
from wsgate.http.headers import (
    LAST_CHUNK,
    BodyFraming,
    build_client_response_head,
    encode_chunk,
    for_version,
    http_date,
    last_chunk,
)
from wsgate.http.headers_filter import filter_headers, trailers, wants_trailer
from wsgate.http.pages import STATUS_LINES
from wsgate.http.phases import response_fields
from wsgate.http.static import FileResponse
from wsgate.http.xar import with_kept
from wsgate.proxy.endpoint import Endpoint, PeerClosed
from wsgate.proxy.pacing import response_rate, send_paced

if TYPE_CHECKING:
    from wsgate.config.variables import RequestContext
    from wsgate.http.rate import WriteRate
    from wsgate.proxy.exchange import Exchange, Outcome

__all__ = ["send_file"]

#: The most one ``pread`` takes (nginx's default ``output_buffers 2 32k`` is smaller; a larger
#: chunk costs fewer loop turns and stays bounded).
READ_CHUNK = 256 * 1024
#: A body up to this size is read and written with the head in one write.
SMALL = 32 * 1024
#: Only Server and Date of wsgate's own are decided by the head builder.
_HIDDEN = frozenset({"server", "date", "connection", "keep-alive", "transfer-encoding"})


class Truncated(OSError):
    """The file ended before the bytes its response announced."""


async def send_file(ex: Exchange, resp: FileResponse) -> Outcome:
    """Write ``resp`` to the exchange's client and log the request; returns (keep the
    connection, keepalive_timeout)."""
    front, head, r = ex.front, ex.head, ex.r
    settings, ctx = r.settings, r.ctx
    keep = head.keep_alive
    try:
        status = resp.status
        ctx.status = status
        now = time.time()
        own = with_kept(response_fields(r), resp.headers) if r.headers_out else resp.headers
        ssi = resp.length > 0 and ssi_applies(settings, status, own)
        headers, added = filter_headers(
            status,
            ssi_headers(settings, own) if ssi else own,
            settings.add_headers,
            settings.expires,
            ctx.lookup,
            now,
        )
        gz: GzipStream | None = None
        gun: GunzipStream | None = None
        if settings.gunzip and status != 304:
            headers, added, gun = gunzip_response(
                settings, ctx.headers, ctx.version, headers, added, not r.subrequest, now
            )
        if settings.gzip and status != 304 and not r.subrequest and gun is None:
            headers, added, gz = gzip_response(
                settings,
                ctx.headers,
                ctx.version,
                status,
                headers,
                added,
                None if ssi else resp.length,
                now,
            )
        if resp.vary and settings.gzip_vary and not has_vary(headers):
            headers = [("Vary", "Accept-Encoding"), *headers]
        framing = BodyFraming.none() if status == 304 else BodyFraming.content_length(resp.length)
        # add_trailer: nginx's chunked filter chunks the body to carry the trailer.
        with_trailer = chunked = wants_trailer(status, head.method, head.version, settings)
        if chunked:
            framing = BodyFraming.chunked()
        if ssi or gz is not None or gun is not None:
            # The SSI output's length is unknown: chunked for HTTP/1.1, else to the close.
            plan = ssi_framing(settings, head, status, keep, trailers=with_trailer)
            framing, keep, chunked = plan.framing, plan.keep_alive, plan.chunked
        out = build_client_response_head(
            status,
            STATUS_LINES.get(status, ""),
            headers,
            server_tokens=settings.server_tokens,
            date=http_date(now),
            framing=framing,
            keep_alive=keep,
            keepalive_header=settings.keepalive_header,
            added=added,
            hidden=_HIDDEN,
        )
        ctx.sent_head = out
        out = for_version(head.version, out)
        ep = front.ep
        rate = response_rate(settings, ctx, lambda text: r.log("error", text))
        timeout = settings.send_timeout
        with_body = head.method != "HEAD" and status != 304
        if with_body and (ssi or gz is not None or gun is not None):
            # Compressed, decompressed or SSI-filtered as it is read, one pread chunk at a
            # time: no sendfile for it.
            pieces = _file_pieces(resp)
            if gun is not None:
                pieces = _gunzipped(pieces, gun)
            if ssi:
                sent = await send_through_ssi(ex, out, pieces, chunked, timeout, gz)
            else:
                sent = await _send_gzipped(ep, out, pieces, gz, chunked, timeout, rate)
            if gz is not None:
                ctx.gzip_ratio = gz.ratio
            if chunked:
                tail = (
                    last_chunk(trailers(status, settings.add_trailers, ctx.lookup, ctx))
                    if with_trailer
                    else LAST_CHUNK
                )
                ep.write(tail)
                sent += len(tail)
            ctx.bytes_sent = sent
            ctx.body_bytes_sent = sent - len(out)
            await _drain(ep, timeout)
            with_body = False
        elif with_body and chunked:
            ep.write(out)
            ctx.bytes_sent = len(out)
            sent = await _send_chunked(
                ep, resp, settings.sendfile_max_chunk, timeout, rate, len(out)
            )
            # Rendered when the body ends: $sent_http_* see the head.
            tail = last_chunk(trailers(status, settings.add_trailers, ctx.lookup, ctx))
            ep.write(tail)
            ctx.bytes_sent += sent + len(tail)
            ctx.body_bytes_sent = sent + len(tail)
            await _drain(ep, timeout)
            with_body = False
        elif with_body and rate is None and resp.length <= SMALL:
            # One write for the head and a small body: one system call, one packet (what
            # nginx gets from sendfile's header vector or tcp_nopush).
            body = _read_parts(resp)
            ep.write(out + body)
            ctx.bytes_sent = len(out) + len(body)
            ctx.body_bytes_sent = len(body)
            await _drain(ep, timeout)
            with_body = False
        elif rate is None:
            ep.write(out)
            ctx.bytes_sent = len(out)
        else:
            await send_paced(ep, out, rate, 0)
            ctx.bytes_sent = len(out)
        if with_body:
            chunk = settings.sendfile_max_chunk or 0
            # The counts grow as the bytes go (a response cut short logs what was sent).
            for part in resp.parts:
                if isinstance(part, bytes):
                    if rate is None:
                        ep.write(part)
                    else:
                        await send_paced(ep, part, rate, ctx.bytes_sent)
                    ctx.bytes_sent += len(part)
                    ctx.body_bytes_sent += len(part)
                elif rate is not None or resp.recode is not None:
                    await _pread_loop(ep, resp.fd, *part, chunk, timeout, ctx, resp.recode, rate)
                else:
                    await _send_range(ep, resp.fd, *part, settings.sendfile, chunk, timeout, ctx)
            await _drain(ep, timeout)
    except Truncated as exc:
        r.log("error", f'"{resp.path}" was truncated while it was sent ({exc})')
        keep = False
    except GunzipError as exc:
        r.log("error", f'{exc} while sending "{resp.path}"')
        keep = False
    except TimeoutError:
        # send_timeout: "If the client does not receive anything within this time, the
        # connection is closed."
        r.log(
            "info", "client timed out (110: Connection timed out) while sending response to client"
        )
        front.ep.abort()
        keep = False
    except (PeerClosed, ConnectionError):
        keep = False
    finally:
        os.close(resp.fd)
    ex.log()
    return keep, settings.keepalive_timeout


def _gunzipped(pieces: Iterator[bytes], gun: GunzipStream) -> Iterator[bytes]:
    """``pieces`` of a gzip file decompressed (``gunzip on``)."""
    for piece in pieces:
        yield gun.feed(piece)
    gun.finish()


async def _send_gzipped(
    ep: Endpoint,
    head: bytes,
    pieces: Iterator[bytes],
    gz: GzipStream | None,
    chunked: bool,
    timeout: float,
    rate: WriteRate | None,
) -> int:
    """The head, then ``pieces`` through ``gz`` (if any; each output chunked when
    ``chunked``, the last chunk not written); returns the bytes written, head included."""
    sent = 0

    async def write(data: bytes) -> None:
        nonlocal sent
        if not data:
            return
        framed = encode_chunk(data) if chunked else data
        if rate is None:
            ep.write(framed)
            sent += len(framed)
            await _drain(ep, timeout)
        else:
            sent = await send_paced(ep, framed, rate, sent)

    if rate is None:
        ep.write(head)
        sent = len(head)
    else:
        sent = await send_paced(ep, head, rate, 0)
    if gz is None:
        for piece in pieces:
            await write(piece)
        return sent
    # Each output goes with the next read's: what the last read made goes out with the
    # stream's end, in one chunk (a small file is one buffer to nginx's gzip filter:
    # header, data and trailer in one chunk; proxy_cache.t's "non-empty get stale").
    held = b""
    for piece in pieces:
        out = gz.compress(piece)
        if out:
            await write(held)
            held = out
    await write(held + gz.finish())
    return sent


def _file_pieces(resp: FileResponse) -> Iterator[bytes]:
    """The response's bytes one ``pread`` chunk at a time (converted by its ``charset``)."""
    for part in resp.parts:
        if isinstance(part, bytes):
            yield part
            continue
        offset, count = part
        done = 0
        while done < count:
            data = os.pread(resp.fd, min(READ_CHUNK, count - done), offset + done)
            if not data:
                raise Truncated(f"{done} of {count} bytes")
            done += len(data)
            yield data if resp.recode is None else data.translate(resp.recode)


async def _send_chunked(
    ep: Endpoint,
    resp: FileResponse,
    max_chunk: int,
    timeout: float,
    rate: WriteRate | None,
    before: int,
) -> int:
    """The body as chunks, each bytes part or ``pread`` of the file one chunk; returns the
    bytes written, chunk framing included."""
    step = min(max_chunk, READ_CHUNK) if max_chunk else READ_CHUNK
    sent = 0

    async def write(data: bytes) -> None:
        nonlocal sent
        framed = encode_chunk(data)
        if rate is None:
            ep.write(framed)
            await _drain(ep, timeout)
        else:
            await send_paced(ep, framed, rate, before + sent)
        sent += len(framed)

    for part in resp.parts:
        if isinstance(part, bytes):
            await write(part)
            continue
        offset, count = part
        done = 0
        while done < count:
            data = os.pread(resp.fd, min(step, count - done), offset + done)
            if not data:
                raise Truncated(f"{done} of {count} bytes")
            done += len(data)
            await write(data if resp.recode is None else data.translate(resp.recode))
    return sent


def _read_parts(resp: FileResponse) -> bytes:
    """The whole (small) body: its bytes parts and its file parts read."""
    out = []
    for part in resp.parts:
        if isinstance(part, bytes):
            out.append(part)
            continue
        data = os.pread(resp.fd, part[1], part[0])
        if len(data) < part[1]:
            raise Truncated(f"{len(data)} of {part[1]} bytes")
        out.append(data if resp.recode is None else data.translate(resp.recode))
    return b"".join(out)


def _socket_fd(ep: Endpoint) -> int | None:
    """The TCP socket under ``ep``'s transport, if bytes may go to it directly (not TLS)."""
    transport = ep.transport
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        return None
    try:
        fd: int = sock.fileno()
    except OSError:
        return None
    return fd if fd >= 0 else None


async def _drain(ep: Endpoint, timeout: float) -> None:
    """``ep.drain()`` within ``send_timeout`` (``TimeoutError``)."""
    async with asyncio.timeout(timeout):
        await ep.drain()


async def _send_range(
    ep: Endpoint,
    fd: int,
    offset: int,
    count: int,
    use_sendfile: bool,
    max_chunk: int,
    timeout: float,
    ctx: RequestContext,
) -> None:
    """``count`` bytes of ``fd`` from ``offset`` to the client, counted in ``ctx``'s
    ``$bytes_sent``/``$body_bytes_sent`` as they go.  Each wait for the client is at most
    ``timeout`` (``send_timeout``)."""
    if not use_sendfile or _socket_fd(ep) is None:
        return await _pread_loop(ep, fd, offset, count, max_chunk, timeout, ctx)
    loop = asyncio.get_running_loop()
    # The transport must have written everything it holds before the kernel sends the file.
    await _drain(ep, timeout)
    transport = ep.transport
    assert transport is not None
    # The descriptor is asked for after the wait, not before: a transport may close its socket
    # at once (the compiled one does), so a number read before could be another's by now.
    sock_fd = _socket_fd(ep)
    if sock_fd is None or transport.get_write_buffer_size():
        return await _pread_loop(ep, fd, offset, count, max_chunk, timeout, ctx)
    # The file goes to a duplicate of the socket, which stays this connection's however
    # the transport closes its own descriptor meanwhile.
    watch = os.dup(sock_fd)
    sent = 0
    try:
        while sent < count:
            if ep.closed:
                raise PeerClosed("connection lost")
            size = count - sent if not max_chunk else min(count - sent, max_chunk)
            try:
                n = os.sendfile(watch, fd, offset + sent, size)
            except BlockingIOError:
                async with asyncio.timeout(timeout):
                    await _writable(loop, watch)
                continue
            if n == 0:
                raise Truncated(f"{sent} of {count} bytes")
            sent += n
            ctx.bytes_sent += n
            ctx.body_bytes_sent += n
            if max_chunk and sent < count:
                # sendfile_max_chunk: "prevents one fast connection from seizing the
                # worker process entirely".
                await asyncio.sleep(0)
    finally:
        os.close(watch)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    waiter: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not waiter.done():
            waiter.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await waiter
    finally:
        loop.remove_writer(fd)


async def _pread_loop(
    ep: Endpoint,
    fd: int,
    offset: int,
    count: int,
    max_chunk: int,
    timeout: float,
    ctx: RequestContext,
    recode: bytes | None = None,
    rate: WriteRate | None = None,
) -> None:
    """``count`` bytes of ``fd`` read one chunk at a time (converted by ``recode``, paced
    by ``limit_rate``'s ``rate``), counted in ``ctx`` as they go."""
    step = min(max_chunk, READ_CHUNK) if max_chunk else READ_CHUNK
    sent = 0
    while sent < count:
        data = os.pread(fd, min(step, count - sent), offset + sent)
        if not data:
            raise Truncated(f"{sent} of {count} bytes")
        if recode is not None:
            data = data.translate(recode)
        if rate is None:
            ep.write(data)
            _count(ctx, len(data))
            await _drain(ep, timeout)
        else:
            await send_paced(ep, data, rate, ctx.bytes_sent, tally=lambda n: _count(ctx, n))
        sent += len(data)


def _count(ctx: RequestContext, n: int) -> None:
    """``n`` more body bytes of the response went to the client."""
    ctx.bytes_sent += n
    ctx.body_bytes_sent += n
