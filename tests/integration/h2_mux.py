"""A test driver: many plain WebSocket clients over ONE HTTP/2 connection (RFC 8441).

:class:`H2WebSocketMux` listens on loopback for ordinary ``ws://`` clients (any WebSocket
client library, e.g. kosoku's Autobahn fuzzing client) and carries each one as an extended
CONNECT stream (``:method CONNECT``, ``:protocol websocket``) on a single HTTP/2 connection
to the server under test (wsgate, cleartext prior knowledge).  It is the client half of
RFC 8441 done by hand with the ``h2`` library, so the same WebSocket clients run through an
HTTP/2 tunnel:

* the client's HTTP/1.1 handshake becomes the stream's HEADERS: its path, ``Host`` as
  ``:authority`` and its fields but the connection-specific ones and ``Sec-WebSocket-Key``
  (RFC 8441 §5 has no key over HTTP/2); ``Sec-WebSocket-Version``, ``-Protocol``,
  ``-Extensions`` pass as they are;
* ``:status 200`` becomes ``101 Switching Protocols`` with the ``Sec-WebSocket-Accept`` for the
  client's own key and the response's other fields (``Sec-WebSocket-Extensions`` above all,
  so permessage-deflate is negotiated end to end); any other status is sent back as it is,
  with ``Connection: close``;
* then bytes ⇄ DATA frames, within the server's flow-control windows (a client's reading
  pauses while more than :data:`BACKLOG` bytes wait for a window); the client's FIN →
  END_STREAM, the stream's END_STREAM → FIN to the client (half-closes, as a TCP relay
  passes them); RST_STREAM from the server → the client's socket aborted; the client's
  socket failing → RST_STREAM CANCEL;
* as a browser, it never opens more streams than the server's
  ``SETTINGS_MAX_CONCURRENT_STREAMS`` (a client waits for one to close), and a stream refused
  with REFUSED_STREAM before any answer is sent again on a new stream (RFC 9113 §8.7).

It runs its own event loop on a thread (a context manager, as ``TcpRelay`` in
test_autobahn.py) and counts what it did: streams opened, their peak concurrency, DATA
bytes each way, and every TCP connection it made to the server (one, unless the connection
failed).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes

__all__ = ["H2WebSocketMux"]

#: Bytes of one client waiting for the server's window before its reading pauses.
BACKLOG = 1 << 20
#: The stream and connection windows this client grants the server.
WINDOW = 1 << 24
#: Fields that may not cross into HTTP/2 (RFC 9113 §8.2.2), and what RFC 8441 replaces.
DROPPED = frozenset(
    {
        "connection",
        "upgrade",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "host",
        "sec-websocket-key",
    }
)
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: How often one client's stream may be refused before its connection is dropped.
REFUSED_RETRIES = 200


class _Refused(ConnectionError):
    """The server refused the stream (RST_STREAM REFUSED_STREAM): it may be sent again."""


@dataclass(eq=False)
class _Stream:
    sid: int
    writer: asyncio.StreamWriter
    response: asyncio.Future[dict[str, str]]
    out: bytearray = field(default_factory=bytearray)
    #: The client sent FIN: END_STREAM once ``out`` is sent.
    end_pending: bool = False
    ended_out: bool = False
    ended_in: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)


class H2WebSocketMux:
    """``ws://127.0.0.1:PORT`` clients carried on one HTTP/2 connection to ``target_port``."""

    def __init__(self, target_port: int, authority: str = "localhost") -> None:
        self.target_port = target_port
        self.authority = authority
        self.port = 0
        #: Statistics (read them after leaving the context).
        self.connections = 0
        self.streams_opened = 0
        #: The most streams open at once (open or half-closed, by h2's state machine).
        self.peak_streams = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.statuses: dict[int, int] = {}
        #: Streams still open when the driver stopped (after waiting up to 5 s for them).
        self.left_open = 0
        #: Clients that waited for a stream because the server's
        #: SETTINGS_MAX_CONCURRENT_STREAMS were all open (a browser queues them so too).
        self.queued = 0
        #: Streams the server refused with REFUSED_STREAM, each sent again on a new stream.
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._streams: dict[int, _Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._h2 = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self._writer: asyncio.StreamWriter | None = None
        self._ready: asyncio.Future[None] | None = None
        #: Set whenever streams may have closed (a slot under the server's stream limit).
        self._slots = asyncio.Event()

    # -- the one HTTP/2 connection --------------------------------------------------------------

    def _send(self) -> None:
        data = self._h2.data_to_send()
        if data and self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    async def _connect(self) -> None:
        reader, self._writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.connections += 1
        self._ready = self._loop.create_future()
        self._h2.local_settings.max_concurrent_streams = 0  # no pushes, no server streams
        self._h2.initiate_connection()
        self._h2.update_settings(
            {SettingCodes.INITIAL_WINDOW_SIZE: WINDOW, SettingCodes.ENABLE_PUSH: 0}
        )
        self._h2.increment_flow_control_window(WINDOW)
        self._send()
        self._spawn(self._read(reader))
        await asyncio.wait_for(self._ready, 10)
        if not self._h2.remote_settings.enable_connect_protocol:
            raise AssertionError("the server did not send SETTINGS_ENABLE_CONNECT_PROTOCOL 1")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(1 << 18):
                for event in self._h2.receive_data(data):
                    self._event(event)
                self._flush()
                self._slots.set()
        except (OSError, H2Error):
            pass
        finally:
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(ConnectionError("the HTTP/2 connection closed"))
            for st in list(self._streams.values()):
                self._abort(st)

    def _event(self, event: object) -> None:
        if isinstance(event, RemoteSettingsChanged):
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        if isinstance(event, ConnectionTerminated):
            for st in list(self._streams.values()):
                self._abort(st)
            return
        st = self._streams.get(getattr(event, "stream_id", 0) or 0)
        if st is None:
            return
        if isinstance(event, ResponseReceived):
            fields = dict(event.headers or [])
            if not st.response.done():
                st.response.set_result(fields)
        elif isinstance(event, DataReceived):
            self.bytes_down += len(event.data)
            if not st.writer.is_closing():
                st.writer.write(event.data)
            self._h2.acknowledge_received_data(event.flow_controlled_length, st.sid)
        elif isinstance(event, StreamEnded):
            st.ended_in = True
            if st.writer.can_write_eof() and not st.writer.is_closing():
                try:
                    st.writer.write_eof()
                except OSError:
                    pass
            self._done_if_both(st)
        elif isinstance(event, StreamReset):
            if event.error_code == ErrorCodes.REFUSED_STREAM and not st.response.done():
                st.response.set_exception(_Refused("REFUSED_STREAM"))
                self._forget(st)  # the client waits for its retry
            elif event.error_code == ErrorCodes.NO_ERROR and st.ended_in:
                st.writer.close()  # after END_STREAM: everything was delivered
                self._forget(st)
            else:
                self._abort(st)
        elif isinstance(event, WindowUpdated):
            pass  # _flush runs after every batch of events

    def _flush(self) -> None:
        """Send what waits, as far as the windows allow."""
        for st in list(self._streams.values()):
            while st.out:
                try:
                    window = min(
                        self._h2.local_flow_control_window(st.sid),
                        self._h2.max_outbound_frame_size,
                    )
                except H2Error:
                    st.out.clear()
                    break
                if window <= 0:
                    break
                piece = bytes(st.out[:window])
                del st.out[:window]
                try:
                    self._h2.send_data(st.sid, piece)
                except H2Error:  # the server has reset or closed the stream meanwhile
                    st.out.clear()
                    break
                self.bytes_up += len(piece)
            if not st.out:
                st.drained.set()
                if st.end_pending and not st.ended_out:
                    st.ended_out = True
                    try:
                        self._h2.end_stream(st.sid)
                    except H2Error:
                        pass
                    self._done_if_both(st)
        self._send()

    # -- each client --------------------------------------------------------------------------

    def _spawn(self, coro: object) -> None:
        task = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, st: _Stream) -> None:
        self._streams.pop(st.sid, None)
        st.drained.set()
        self._slots.set()

    def _full(self) -> bool:
        """As many streams open as the server allows (RFC 9113 §5.1.2)."""
        return self._h2.open_outbound_streams >= self._h2.remote_settings.max_concurrent_streams

    def _done_if_both(self, st: _Stream) -> None:
        if st.ended_in and st.ended_out:
            st.writer.close()
            self._forget(st)

    def _abort(self, st: _Stream) -> None:
        if not st.response.done():
            st.response.set_exception(ConnectionError("stream reset"))
        st.writer.transport.abort()
        self._forget(st)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            await self._carry(reader, writer)
        except asyncio.CancelledError:  # _stop: the driver is going away
            writer.transport.abort()

    async def _open(
        self, writer: asyncio.StreamWriter, path: str, authority: str, fields: list[Any]
    ) -> tuple[_Stream, dict[str, str]] | None:
        """The client's extended CONNECT on a new stream, and the response's fields; None when
        the stream failed.  A stream refused with REFUSED_STREAM ("closed prior to any
        processing", RFC 9113 §8.7) is sent again on a new stream, as browsers do."""
        self.streams_opened += 1
        for attempt in range(REFUSED_RETRIES):
            if self._full():
                self.queued += 1
                while self._full():
                    self._slots.clear()
                    await self._slots.wait()
            sid = self._h2.get_next_available_stream_id()
            st = _Stream(sid, writer, self._loop.create_future())
            self._streams[sid] = st
            self._h2.send_headers(
                sid,
                [
                    (":method", "CONNECT"),
                    (":protocol", "websocket"),
                    (":scheme", "http"),
                    (":path", path),
                    (":authority", authority),
                    *((k.lower(), v) for k, v in fields if k.lower() not in DROPPED),
                ],
            )
            self._send()
            self.peak_streams = max(self.peak_streams, self._h2.open_outbound_streams)
            try:
                return st, await st.response
            except _Refused:
                self.refused += 1
                await asyncio.sleep(min(0.001 * 2**attempt, 0.05))
            except ConnectionError:
                return None
        return None

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client: its handshake as an extended CONNECT, then its bytes both ways."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        _method, path, _version = lines[0].split(" ", 2)
        fields = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if line]
        key = next((v for k, v in fields if k.lower() == "sec-websocket-key"), "")
        authority = next((v for k, v in fields if k.lower() == "host"), self.authority)
        opened = await self._open(writer, path, authority, fields)
        if opened is None:
            writer.transport.abort()
            return
        st, response = opened
        sid = st.sid
        status = int(response.pop(":status"))
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status != 200:
            writer.write(f"HTTP/1.1 {status} Refused\r\nConnection: close\r\n\r\n".encode())
            writer.close()
            self._h2.reset_stream(sid, ErrorCodes.CANCEL)
            self._forget(st)
            self._send()
            return
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in response.items() if k not in ("date",))
        writer.write(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n{extra}\r\n".encode()
        )
        try:
            while data := await reader.read(1 << 16):
                if sid not in self._streams:
                    return
                st.out += data
                self._flush()
                while len(st.out) > BACKLOG and sid in self._streams:
                    st.drained.clear()
                    await st.drained.wait()
            if sid in self._streams:
                st.end_pending = True
                self._flush()
        except OSError:
            if sid in self._streams:
                try:
                    self._h2.reset_stream(sid, ErrorCodes.CANCEL)
                except H2Error:
                    pass
                self._forget(st)
                self._send()

    # -- lifecycle ----------------------------------------------------------------------------

    async def _start(self) -> None:
        await self._connect()
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        # The client may return before its last connections' FINs have reached us: let those
        # streams end on their own first.
        for _ in range(500):
            if not self._streams:
                break
            await asyncio.sleep(0.01)
        self.left_open = len(self._streams)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._writer is not None:
            self._h2.close_connection()
            self._send()
            self._writer.close()
        await self._server.wait_closed()

    def __enter__(self) -> H2WebSocketMux:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(15)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def main() -> None:
    """``python -m tests.integration.h2_mux TARGET_PORT``: run the driver in a process of its own
    (so it does not share an interpreter lock with the WebSocket clients it carries), print
    ``Listening on 127.0.0.1:PORT``, carry clients until stdin closes, then print its counts
    as one JSON line."""
    import json
    import sys

    with H2WebSocketMux(int(sys.argv[1])) as mux:
        print(f"Listening on 127.0.0.1:{mux.port}", flush=True)
        sys.stdin.read()
    counts = {name: getattr(mux, name) for name in STATS}
    print(json.dumps(counts), flush=True)


#: The counts :func:`main` prints.
STATS = (
    "connections",
    "streams_opened",
    "peak_streams",
    "queued",
    "refused",
    "statuses",
    "bytes_up",
    "bytes_down",
    "left_open",
)

if __name__ == "__main__":
    main()
