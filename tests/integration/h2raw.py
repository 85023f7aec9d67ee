"""Raw HTTP/2 frames for tests that send what a well-behaved client would not (hyperframe
and hpack, no state machine): the preface, a socket that has sent it, frames parsed out of
the bytes read so far.  Used by test_http2_errors.py and test_http2_attacks.py."""

from __future__ import annotations

import socket

from hpack import Encoder
from hyperframe.frame import Frame, HeadersFrame, SettingsFrame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def raw_connection(port: int, timeout: float, rcvbuf: int = 0) -> socket.socket:
    """A connection to ``port`` that has sent the preface and an empty SETTINGS frame
    (``rcvbuf``, when given, is its receive buffer, set before it connects)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    sock.sendall(PREFACE + SettingsFrame(0).serialize())
    return sock


def next_frame(data: bytes) -> tuple[Frame, bytes] | None:
    """The first frame in ``data`` and the bytes after it; None while it is incomplete."""
    if len(data) < 9:
        return None
    frame, length = Frame.parse_frame_header(memoryview(data[:9]))
    if len(data) < 9 + length:
        return None
    frame.parse_body(memoryview(data[9 : 9 + length]))
    return frame, data[9 + length :]


def frames_of(data: bytes) -> list[Frame]:
    """Every whole frame in ``data`` (an incomplete last one is left out)."""
    frames = []
    while (got := next_frame(data)) is not None:
        frame, data = got
        frames.append(frame)
    return frames


def headers_frame(
    sid: int, fields: list[tuple[str, str]] | bytes, flags: tuple[str, ...] = ()
) -> bytes:
    """A HEADERS frame of ``fields`` (encoded by a fresh encoder) or of a ready block."""
    frame = HeadersFrame(sid, fields if isinstance(fields, bytes) else Encoder().encode(fields))
    for flag in flags:
        frame.flags.add(flag)
    return frame.serialize()
