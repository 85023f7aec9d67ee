"""The little of WebSocket (RFC 6455) that the benchmark's own peers need, on raw bytes.

The load generator and the echo backend do not use a WebSocket library on the hot path: a
library's per-message callback would make them, not the proxy under test, the bottleneck.
Instead:

* the client sends fixed-size binary frames that are built once (:func:`client_frame`). They
  are masked (RFC 6455 §5.3 requires it) with the all-zero key, a valid 32-bit value, so the
  payload bytes are the same masked and unmasked and nobody has to XOR them;
* the client counts the echoes by bytes: every reply of a connection has the same length
  (:func:`server_frame`), so ``bytes received // reply length`` is the number of messages;
* the backend (:class:`EchoParser`) recognises a stream of identical frames with one
  comparison per read and echoes them from a cache; anything else (a Close, a Ping, other
  sizes or keys) goes through a complete, slower frame parser, so it is a real echo server
  for any client.

https://www.rfc-editor.org/rfc/rfc6455#section-5.2 (framing),
https://www.rfc-editor.org/rfc/rfc6455#section-4.2.2 (the server's handshake answer).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable

__all__ = [
    "CLIENT_CLOSE",
    "EchoParser",
    "SERVER_CLOSE",
    "WS_KEY",
    "accept_key",
    "client_frame",
    "handshake_request",
    "payload",
    "server_frame",
    "switching_protocols",
]

#: The client's Sec-WebSocket-Key: any 16 bytes, base64; one fixed key is enough here.
WS_KEY = base64.b64encode(b"wsgate-benchmark").decode()
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_FIN_BINARY = 0x82
_OP_CLOSE = 0x8
_OP_PING = 0x9
_OP_PONG = 0xA


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for ``key`` (RFC 6455 §4.2.2, item 5.4)."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def handshake_request(host: str, path: str = "/") -> bytes:
    """The client's opening handshake (RFC 6455 §4.1)."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def switching_protocols(key: str) -> bytes:
    """The server's 101 answer for ``key``."""
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
    ).encode()


def _header(opcode_byte: int, size: int, mask_bit: int) -> bytes:
    if size <= 125:
        return bytes((opcode_byte, mask_bit | size))
    if size < 1 << 16:
        return bytes((opcode_byte, mask_bit | 126)) + struct.pack("!H", size)
    return bytes((opcode_byte, mask_bit | 127)) + struct.pack("!Q", size)


def payload(size: int) -> bytes:
    """The benchmark's message of ``size`` bytes (not all zeros, so nothing can shortcut it)."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def client_frame(size: int) -> bytes:
    """A final binary frame of ``size`` payload bytes, masked with the zero key."""
    return _header(_FIN_BINARY, size, 0x80) + b"\0\0\0\0" + payload(size)


def server_frame(size: int) -> bytes:
    """The echo of :func:`client_frame` as the server sends it (unmasked)."""
    return _header(_FIN_BINARY, size, 0) + payload(size)


#: A client Close frame with code 1000 (zero mask key), and the server's reply.
CLIENT_CLOSE = bytes((0x88, 0x82)) + b"\0\0\0\0" + struct.pack("!H", 1000)
SERVER_CLOSE = bytes((0x88, 0x02)) + struct.pack("!H", 1000)


def _unmask(data: bytes, key: bytes, offset: int) -> bytes:
    """XOR ``data`` with ``key`` starting at key byte ``offset`` (big-int XOR: C speed)."""
    if key == b"\0\0\0\0" or not data:
        return data
    n = len(data)
    rotated = key[offset % 4 :] + key[: offset % 4]
    stream = (rotated * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


class _Repeat:
    """A client stream made of one frame repeated: its echo, precomputed per count."""

    __slots__ = ("frame", "reply", "doubled", "replies")

    def __init__(self, frame: bytes, reply: bytes) -> None:
        self.frame = frame
        self.reply = reply
        self.doubled = frame * 2
        self.replies: dict[int, bytes] = {}

    def replies_for(self, count: int) -> bytes:
        out = self.replies.get(count)
        if out is None:
            out = self.reply * count
            if len(self.replies) < 256:
                self.replies[count] = out
        return out


#: Streams seen by any connection of this process, by their frame (shared echo caches).
_REPEATS: dict[bytes, _Repeat] = {}


class EchoParser:
    """Server side of a WebSocket connection after the handshake: echoes data frames, answers
    Ping with Pong and Close with Close (then ``close()``), per RFC 6455 §5.5.

    Fast path: once a connection's frames are all copies of one frame, a read that holds only
    whole or partial copies of it is checked with one comparison and answered from a cache.
    """

    __slots__ = ("write", "close", "repeat", "offset", "buf", "closed", "_last")

    def __init__(self, write: Callable[[bytes], None], close: Callable[[], None]) -> None:
        self.write = write
        self.close = close
        self.repeat: _Repeat | None = None  # fast path on: this frame repeats
        self.offset = 0  # fast path: bytes of the current copy already received
        self.buf = b""  # slow path: unparsed bytes (a partial frame)
        self.closed = False
        self._last: bytes | None = None  # the last whole data frame parsed (slow path)

    def feed(self, data: bytes) -> None:
        repeat = self.repeat
        if repeat is not None:
            frame = repeat.frame
            size = len(frame)
            offset = self.offset
            n = len(data)
            if offset == 0 and n == size:
                if data == frame:
                    self.write(repeat.reply)
                    return
            elif offset + n <= size:
                if data == frame[offset : offset + n]:
                    end = offset + n
                    if end == size:
                        self.offset = 0
                        self.write(repeat.reply)
                    else:
                        self.offset = end
                    return
            elif offset == 0 and n % size == 0:
                if data == frame * (n // size):
                    self.write(repeat.replies_for(n // size))
                    return
            else:
                end = offset + n
                count = end // size
                wrapped = repeat.doubled if end <= 2 * size else frame * (count + 1)
                if data == wrapped[offset:end]:
                    self.offset = end - count * size
                    self.write(repeat.replies_for(count))
                    return
            # Not a copy: hand the stream to the general parser, partial copy included.
            self.repeat = None
            self.buf = frame[:offset]
            self.offset = 0
        self._parse(self.buf + data if self.buf else data)

    def _parse(self, data: bytes) -> None:
        out: list[bytes] = []
        pos = 0
        n = len(data)
        last: bytes | None = None
        only_repeats = True
        while pos < n and not self.closed:
            if n - pos < 2:
                break
            b0, b1 = data[pos], data[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = struct.unpack_from("!H", data, pos + 2)[0]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = struct.unpack_from("!Q", data, pos + 2)[0]
                head = 10
            masked = b1 & 0x80
            if masked:
                head += 4
            end = pos + head + length
            if end > n:
                break
            key = data[pos + head - 4 : pos + head] if masked else b"\0\0\0\0"
            body = _unmask(data[pos + head : end], key, 0)
            opcode = b0 & 0x0F
            if opcode == _OP_CLOSE:
                code = body[:2]
                out.append(_header(0x88, len(code), 0) + code)
                self.closed = True
                only_repeats = False
            elif opcode == _OP_PING:
                out.append(_header(0x80 | _OP_PONG, len(body), 0) + body)
                only_repeats = False
            elif opcode != _OP_PONG:
                frame = data[pos:end]
                out.append(_header(b0, length, 0) + body)
                if b0 != _FIN_BINARY or key != b"\0\0\0\0" or (last and frame != last):
                    only_repeats = False
                last = frame
            pos = end
        self.buf = data[pos:] if not self.closed else b""
        if out:
            self.write(b"".join(out) if len(out) > 1 else out[0])
        if self.closed:
            self.close()
            return
        if only_repeats and last is not None and not self.buf:
            # Every frame so far in this read was the same final, zero-keyed binary frame:
            # switch to the fast path for the rest of the stream.
            if self._last is None or self._last == last:
                repeat = _REPEATS.get(last)
                if repeat is None:
                    # Every reply in ``out`` is the echo of ``last``.
                    repeat = _Repeat(last, out[-1])
                    _REPEATS[last] = repeat
                self.repeat = repeat
            self._last = last
