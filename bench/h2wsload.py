"""WebSocket load over HTTP/2 (RFC 8441): ``python -m bench.loadgen h2throughput``.

``--conns`` HTTP/2 connections (cleartext, prior knowledge), each with ``--streams``
extended CONNECT streams (``:method CONNECT``, ``:protocol websocket``). Every stream keeps
``--window`` messages of ``--size`` bytes in flight, as :mod:`bench.loadgen`'s ``throughput``
mode does on HTTP/1.1 connections: the same client frames (masked with the zero key), echoes
counted by bytes, the same measurement window and ``--watch`` CPU samples.

The opening is done by the ``h2`` library (HPACK, SETTINGS, the server's
``SETTINGS_ENABLE_CONNECT_PROTOCOL``, the ``:status 200`` of every stream). The measurement
then runs on raw frames, so that the load generator, not the proxy, is not the bottleneck:
each stream's DATA frames are built once, and the reader walks the frame headers of a read,
adding the DATA lengths to their stream's count, acknowledging SETTINGS and PING, and giving
the server back connection window every GiB. The client announces a stream window of
2^31-1, so the server never waits for it in a run. The server's stream window for the
client's DATA (``http2_body_preread_size``, 64 KiB by default) is not tracked: a run keeps at
most ``--window`` messages unanswered per stream, which must stay below it.

https://www.rfc-editor.org/rfc/rfc8441, https://www.rfc-editor.org/rfc/rfc9113#section-4.1
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import TYPE_CHECKING, Any, cast

from bench.wsproto import client_frame, server_frame
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamReset,
)
from h2.settings import SettingCodes

if TYPE_CHECKING:
    from bench.loadgen import Target, Watch

__all__ = ["run_h2_throughput"]

_MAX_WINDOW = 2**31 - 1
#: The server's initial stream window for the client's DATA (nginx's http2_body_preread_size).
SERVER_STREAM_WINDOW = 65536
_DATA, _RST, _SETTINGS, _PING, _GOAWAY = 0, 3, 4, 6, 7
_END_STREAM, _ACK, _PADDED = 0x1, 0x1, 0x8
_SETTINGS_ACK = b"\0\0\0\x04\x01\0\0\0\0"


def data_frame(stream_id: int, payload: bytes) -> bytes:
    """One HTTP/2 DATA frame (no flags) carrying ``payload`` on ``stream_id``."""
    return len(payload).to_bytes(3, "big") + b"\0\0" + stream_id.to_bytes(4, "big") + payload


def window_update(stream_id: int, increment: int) -> bytes:
    return b"\0\0\x04\x08\0" + stream_id.to_bytes(4, "big") + increment.to_bytes(4, "big")


class _Stream:
    __slots__ = ("done", "frames", "rx", "sent")

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames  # frames[k]: k messages in DATA frames of this stream
        self.rx = 0
        self.done = 0
        self.sent = 0


class H2Gen:
    """What every connection of a run shares: the frame, the counts."""

    def __init__(self, size: int, window: int, authority: str) -> None:
        self.message = client_frame(size)
        self.reply_len = len(server_frame(size))
        self.window = window
        self.authority = authority
        self.count = 0
        self.lost = 0  # streams or connections ended while the load ran
        self.sending = True
        if window * len(self.message) >= SERVER_STREAM_WINDOW:
            raise SystemExit("--size x --window must stay below the server's stream window")


class H2Flow(asyncio.Protocol):
    """One HTTP/2 connection carrying ``streams`` WebSocket streams."""

    def __init__(self, gen: H2Gen, streams: int) -> None:
        self.gen = gen
        self.want = streams
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.raw = False
        self.buf = b""
        self.unacked = 0  # DATA bytes received and not yet given back as connection window
        self.opened = 0  # streams answered 200
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    # -- the opening, through the h2 library ----------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.conn.initiate_connection()
        self.conn.update_settings(
            {SettingCodes.INITIAL_WINDOW_SIZE: _MAX_WINDOW, SettingCodes.ENABLE_PUSH: 0}
        )
        self.conn.increment_flow_control_window(_MAX_WINDOW - 65535)
        self.transport.write(self.conn.data_to_send())

    def _open_streams(self) -> None:
        if not self.conn.remote_settings.enable_connect_protocol:
            self._fail(ConnectionError("the server does not offer extended CONNECT"))
            return
        for _ in range(self.want):
            sid = self.conn.get_next_available_stream_id()
            self.conn.send_headers(
                sid,
                [
                    (b":method", b"CONNECT"),
                    (b":protocol", b"websocket"),
                    (b":scheme", b"http"),
                    (b":path", b"/"),
                    (b":authority", self.gen.authority.encode()),
                    (b"sec-websocket-version", b"13"),
                ],
            )
            msg = self.gen.message
            self.streams[sid] = _Stream(
                [data_frame(sid, msg) * k for k in range(self.gen.window + 1)]
            )

    def _opening(self, data: bytes) -> None:
        opened = 0
        for event in self.conn.receive_data(data):
            if isinstance(event, RemoteSettingsChanged) and not self.streams:
                self._open_streams()
            elif isinstance(event, ResponseReceived):
                status = dict(event.headers).get(b":status")
                if status != b"200":
                    self._fail(ConnectionError(f"stream answered {status!r}"))
                opened += 1
            elif isinstance(event, StreamReset | ConnectionTerminated):
                self._fail(ConnectionError(f"{type(event).__name__} while opening"))
        assert self.transport is not None
        out = self.conn.data_to_send()
        if out:
            self.transport.write(out)
        self.opened += opened
        if self.opened == self.want and not self.ready.done():
            # From here on the frames are read by hand (see data_received).
            self.raw = True
            self.buf = bytes(self.conn.incoming_buffer._data)
            self.ready.set_result(True)

    # -- the measurement, on raw frames ---------------------------------------------------

    def start(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        window = self.gen.window
        self.transport.write(b"".join(st.frames[window] for st in self.streams.values()))
        for st in self.streams.values():
            st.sent = window

    def data_received(self, data: bytes) -> None:
        if not self.raw:
            self._opening(data)
            return
        gen = self.gen
        buf = self.buf + data if self.buf else data
        n = len(buf)
        i = 0
        out: list[bytes] = []
        while n - i >= 9:
            length = int.from_bytes(buf[i : i + 3], "big")
            end = i + 9 + length
            if end > n:
                break
            kind, flags = buf[i + 3], buf[i + 4]
            if kind == _DATA:
                sid = int.from_bytes(buf[i + 5 : i + 9], "big") & 0x7FFFFFFF
                st = self.streams[sid]
                st.rx += length - (buf[i + 9] + 1 if flags & _PADDED else 0)
                self.unacked += length
                done = st.rx // gen.reply_len
                new = done - st.done
                if new:
                    st.done = done
                    gen.count += new
                    if gen.sending:
                        out.append(st.frames[new])
                        st.sent += new
                if flags & _END_STREAM and gen.sending:
                    gen.lost += 1
            elif kind == _SETTINGS and not flags & _ACK:
                out.append(_SETTINGS_ACK)
            elif kind == _PING and not flags & _ACK:
                out.append(b"\0\0\x08\x06\x01\0\0\0\0" + buf[i + 9 : end])
            elif kind in (_RST, _GOAWAY) and gen.sending:
                gen.lost += 1
            i = end
        self.buf = buf[i:] if i < n else b""
        if self.unacked >= 1 << 30:
            out.append(window_update(0, self.unacked))
            self.unacked = 0
        if out:
            assert self.transport is not None
            self.transport.write(b"".join(out))

    def _fail(self, exc: BaseException) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("closed before every stream was open"))
        if self.raw and self.gen.sending:
            self.gen.lost += 1


async def run_h2_throughput(
    args: argparse.Namespace, target: Target, watch: Watch
) -> dict[str, Any]:
    gen = H2Gen(args.size, args.window, f"{target.addr[0]}:{target.addr[1]}")
    flows: list[H2Flow] = []
    for _ in range(args.conns):
        _, proto = await target.connect(lambda: H2Flow(gen, args.streams))
        flows.append(cast(H2Flow, proto))
    try:
        await asyncio.wait_for(asyncio.gather(*(f.ready for f in flows)), 30)
    except (TimeoutError, OSError, ConnectionError) as exc:
        raise SystemExit(f"opening the HTTP/2 WebSocket streams failed: {exc!r}") from exc
    for flow in flows:
        flow.start()
    await asyncio.sleep(args.warmup)
    c0 = gen.count
    watch.begin()
    await asyncio.sleep(args.duration)
    c1 = gen.count
    window = watch.end()
    gen.sending = False
    deadline = time.monotonic() + 10
    while (
        any(st.done < st.sent for f in flows for st in f.streams.values())
        and time.monotonic() < deadline
    ):
        await asyncio.sleep(0.02)
    for flow in flows:
        assert flow.transport is not None
        flow.transport.abort()
    echoed = c1 - c0
    return {
        "mode": "h2throughput",
        "size": args.size,
        "conns": args.conns,
        "streams_per_conn": args.streams,
        "window": args.window,
        "echoes": echoed,
        "relayed": 2 * echoed,
        "relayed_per_s": round(2 * echoed / window["elapsed_s"], 1),
        "lost_conns": gen.lost,
        **window,
    }
