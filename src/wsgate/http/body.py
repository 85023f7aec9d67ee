"""Message-body events, framing, and a chunked decoder shared by the request and response parsers.

Why our own chunked decoder instead of llhttp's: the proxy handles one message at a time, so a
parser must stop exactly at the end of a message and keep the following bytes (pipelined
requests, tunnel data).  httptools reports no byte offsets for ``on_message_complete``, so the
end of a chunked body could not be located with it.  The grammar is RFC 9112 §7.1
(https://www.rfc-editor.org/rfc/rfc9112#section-7.1) with nginx's leniencies from
``src/http/ngx_http_parse.c ngx_http_parse_chunked``: bare LF line ends, any chunk extension after
``;``, space or tab, trailer lines skipped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "BodyReader",
    "MAX_CHUNK_LINE",
    "MAX_TRAILER",
    "Body",
    "BodyFraming",
    "ChunkedDecoder",
    "EndOfMessage",
    "Framing",
    "InvalidChunk",
]

#: Longest chunk-size line (size plus extensions) we buffer; nginx streams extensions, we cap them.
MAX_CHUNK_LINE = 4096
#: Largest trailer section we buffer (trailers are parsed and dropped, as nginx does).
MAX_TRAILER = 16384
_MAX_CHUNK_SIZE = 2**63 - 1  # nginx: NGX_MAX_OFF_T_VALUE
_HEX = frozenset(b"0123456789abcdefABCDEF")


@dataclass(slots=True)
class Body:
    """A piece of decoded body (chunk framing removed)."""

    data: bytes


@dataclass(slots=True)
class EndOfMessage:
    """The current message is complete; the parser stops until told to go on."""


class Framing(enum.Enum):
    """How a message body is delimited on the wire (RFC 9112 §6.3)."""

    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"


@dataclass(frozen=True, slots=True)
class BodyFraming:
    """A body's framing: no body, ``Content-Length: N``, chunked, or delimited by close."""

    kind: Framing
    length: int = 0

    @classmethod
    def none(cls) -> BodyFraming:
        return cls(Framing.NONE)

    @classmethod
    def content_length(cls, n: int) -> BodyFraming:
        if n < 0:
            raise ValueError("negative Content-Length")
        return cls(Framing.LENGTH, n)

    @classmethod
    def chunked(cls) -> BodyFraming:
        return cls(Framing.CHUNKED)

    @classmethod
    def close(cls) -> BodyFraming:
        return cls(Framing.CLOSE)


class InvalidChunk(ValueError):
    """The chunked body is malformed; callers turn it into 400 (client) or 502 (upstream)."""


class _St(enum.Enum):
    SIZE = 0
    DATA = 1
    AFTER_DATA = 2
    TRAILER = 3
    DONE = 4


class ChunkedDecoder:
    """Incremental chunked-body decoder that reports where the body ends.

    ``decode(buf, pos)`` consumes from ``buf[pos:]`` and returns ``(pieces, new_pos)``; ``done``
    becomes true once the last chunk and trailers are consumed, and bytes after ``new_pos`` belong
    to whatever follows the message.
    """

    __slots__ = ("_remaining", "_state", "_trailer_bytes")

    def __init__(self) -> None:
        self._state = _St.SIZE
        self._remaining = 0
        self._trailer_bytes = 0

    @property
    def done(self) -> bool:
        return self._state is _St.DONE

    def decode(self, buf: bytes | bytearray, pos: int) -> tuple[list[bytes], int]:
        out: list[bytes] = []
        end = len(buf)
        while pos < end:
            st = self._state
            if st is _St.DATA:
                take = min(self._remaining, end - pos)
                out.append(bytes(buf[pos : pos + take]))
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _St.AFTER_DATA
            elif st is _St.AFTER_DATA:
                c = buf[pos]
                if c == 0x0A:
                    pos += 1
                elif c == 0x0D:
                    if pos + 1 >= end:
                        break
                    if buf[pos + 1] != 0x0A:
                        raise InvalidChunk("CR without LF after chunk data")
                    pos += 2
                else:
                    raise InvalidChunk("missing CRLF after chunk data")
                self._state = _St.SIZE
            elif st is _St.SIZE:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    if end - pos > MAX_CHUNK_LINE:
                        raise InvalidChunk("chunk size line too long")
                    break
                if nl - pos > MAX_CHUNK_LINE:
                    raise InvalidChunk("chunk size line too long")
                size = _parse_size_line(bytes(buf[pos:nl]))
                pos = nl + 1
                if size == 0:
                    self._state = _St.TRAILER
                else:
                    self._remaining = size
                    self._state = _St.DATA
            elif st is _St.TRAILER:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    if self._trailer_bytes + end - pos > MAX_TRAILER:
                        raise InvalidChunk("trailer section too large")
                    break
                line = bytes(buf[pos:nl])
                self._trailer_bytes += nl + 1 - pos
                if self._trailer_bytes > MAX_TRAILER:
                    raise InvalidChunk("trailer section too large")
                pos = nl + 1
                if line.endswith(b"\r"):
                    line = line[:-1]
                if b"\r" in line:
                    raise InvalidChunk("CR without LF in trailer")
                if not line:
                    self._state = _St.DONE
            else:  # DONE: never consume past the end of the message
                break
        return out, pos


def _parse_size_line(line: bytes) -> int:
    if line.endswith(b"\r"):
        line = line[:-1]
    if b"\r" in line:
        raise InvalidChunk("CR without LF in chunk size line")
    i = 0
    n = len(line)
    while i < n and line[i] in _HEX:
        i += 1
    if i == 0:
        raise InvalidChunk("missing chunk size")
    if i < n and line[i] not in b"; \t":
        raise InvalidChunk("invalid character after chunk size")
    digits = line[:i].lstrip(b"0")
    if len(digits) > 16:
        raise InvalidChunk("chunk size overflow")
    size = int(digits or b"0", 16)
    if size > _MAX_CHUNK_SIZE:
        raise InvalidChunk("chunk size overflow")
    return size


class BodyReader:
    """One message body framed by ``Content-Length`` or chunked coding (RFC 9112 §6.3).

    Shared by the request and the response parsers.  :meth:`read` decodes what the parser's
    buffer holds and removes it; :meth:`read_direct` is the zero-copy path for
    ``Content-Length`` bytes arriving while nothing is buffered.
    """

    __slots__ = ("remaining", "decoder")

    def __init__(self, length: int = 0, chunked: bool = False) -> None:
        self.remaining = length
        self.decoder = ChunkedDecoder() if chunked else None

    @property
    def done(self) -> bool:
        return self.decoder.done if self.decoder is not None else self.remaining == 0

    def read(self, buf: bytearray) -> bytes:
        """The body bytes ``buf`` holds, removed from it; raises :class:`InvalidChunk`."""
        if self.decoder is not None:
            pieces, pos = self.decoder.decode(buf, 0)
            del buf[:pos]
            return b"".join(pieces)
        take = min(self.remaining, len(buf))
        data = bytes(buf[:take])
        del buf[:take]
        self.remaining -= take
        return data

    def read_direct(self, data: bytes) -> tuple[bytes, bytes] | None:
        """``(body part, rest)`` of ``data`` for a ``Content-Length`` body, without copying
        the body part; ``None`` for a chunked body (it goes through :meth:`read`)."""
        if self.decoder is not None:
            return None
        take = min(self.remaining, len(data))
        self.remaining -= take
        if take == len(data):
            return data, b""
        return data[:take], data[take:]
