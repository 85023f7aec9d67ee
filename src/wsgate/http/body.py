"""Message-body events, framing, and a chunked decoder shared by the request and response parsers.

Why our own chunked decoder instead of llhttp's: the proxy handles one message at a time, so a
parser must stop exactly at the end of a message and keep the following bytes (pipelined
requests, tunnel data).  httptools reports no byte offsets for ``on_message_complete``, so the
end of a chunked body could not be located with it.  The grammar is RFC 9112 §7.1
(https://www.rfc-editor.org/rfc/rfc9112#section-7.1) as nginx's
``src/http/ngx_http_parse.c ngx_http_parse_chunked`` reads it: CR LF line ends (no bare LF since
nginx 1.29.4), any chunk extension after ``;``, space or tab, trailer lines skipped, and an
invalid byte rejected as soon as it arrives.
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

#: Longest chunk-size line (size plus extensions) we accept; nginx skips any length, we cap it.
MAX_CHUNK_LINE = 4096
#: Largest trailer section we accept (trailers are skipped, as nginx does; nginx has no cap).
MAX_TRAILER = 16384
_MAX_CHUNK_SIZE = 2**63 - 1  # nginx: NGX_MAX_OFF_T_VALUE


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


class _St(enum.IntEnum):
    """nginx's ``ngx_http_parse_chunked`` states, in its order."""

    CHUNK_START = 0
    CHUNK_SIZE = 1
    CHUNK_EXTENSION = 2
    CHUNK_EXTENSION_ALMOST_DONE = 3
    DATA = 4
    AFTER_DATA = 5
    AFTER_DATA_ALMOST_DONE = 6
    LAST_CHUNK_EXTENSION = 7
    LAST_CHUNK_EXTENSION_ALMOST_DONE = 8
    TRAILER = 9
    TRAILER_ALMOST_DONE = 10
    TRAILER_HEADER = 11
    TRAILER_HEADER_ALMOST_DONE = 12
    DONE = 13


#: The states that skip bytes up to the next CR (an extension, a trailer line); a bare LF
#: there is invalid.
_SKIPPING = frozenset({_St.CHUNK_EXTENSION, _St.LAST_CHUNK_EXTENSION, _St.TRAILER_HEADER})
#: The state a CR leads to from each skipping state.
_AFTER_CR = {
    _St.CHUNK_EXTENSION: _St.CHUNK_EXTENSION_ALMOST_DONE,
    _St.LAST_CHUNK_EXTENSION: _St.LAST_CHUNK_EXTENSION_ALMOST_DONE,
    _St.TRAILER_HEADER: _St.TRAILER_HEADER_ALMOST_DONE,
}
#: nginx's ``NGX_MAX_OFF_T_VALUE / 16``: a size above it is invalid at the next byte.
_MAX_SIZE_BEFORE_DIGIT = _MAX_CHUNK_SIZE // 16


def _hex(ch: int) -> int:
    """The value of hex digit ``ch``, or -1."""
    if 0x30 <= ch <= 0x39:
        return ch - 0x30
    c = ch | 0x20
    if 0x61 <= c <= 0x66:
        return c - 0x61 + 10
    return -1


class ChunkedDecoder:
    """Incremental chunked-body decoder that reports where the body ends.

    ``decode(buf, pos)`` consumes from ``buf[pos:]`` and returns ``(pieces, new_pos)``; ``done``
    becomes true once the last chunk and trailers are consumed, and bytes after ``new_pos`` belong
    to whatever follows the message.

    A byte-for-byte port of nginx's ``ngx_http_parse_chunked`` (1.29.4+, "Disabled bare LF in
    chunked transfer encoding"): every line ends with CR LF, and a byte that cannot continue
    the body raises :class:`InvalidChunk` as soon as it arrives, never waiting for a line end
    (a CR followed by anything but LF, a bad byte after the size).  Chunk data is copied in
    bulk; only the framing is walked byte by byte.
    """

    __slots__ = ("_size", "_state", "_line_bytes", "_trailer_bytes")

    def __init__(self) -> None:
        self._state = _St.CHUNK_START
        self._size = 0
        self._line_bytes = 0
        self._trailer_bytes = 0

    @property
    def done(self) -> bool:
        return self._state is _St.DONE

    def decode(self, buf: bytes | bytearray, pos: int) -> tuple[list[bytes], int]:
        out: list[bytes] = []
        end = len(buf)
        st = self._state
        try:
            while pos < end:
                if st is _St.DATA:
                    take = min(self._size, end - pos)
                    out.append(bytes(buf[pos : pos + take]))
                    pos += take
                    self._size -= take
                    if self._size == 0:
                        st = _St.AFTER_DATA
                    continue
                if st is _St.DONE:  # never consume past the end of the message
                    break
                if st in _SKIPPING:
                    # Extensions and trailer lines are skipped up to their CR (not parsed, as
                    # nginx does), but their length is capped.
                    cr = buf.find(b"\r", pos)
                    stop = end if cr < 0 else cr
                    if buf.find(b"\n", pos, stop) >= 0:
                        raise InvalidChunk("bare LF")
                    self._count(st, stop - pos)
                    pos = stop
                    if cr < 0:
                        break
                    st = _AFTER_CR[st]
                    pos += 1
                    continue
                ch = buf[pos]
                pos += 1
                st = self._step(st, ch)
        finally:
            self._state = st
        return out, pos

    def _count(self, st: _St, n: int) -> None:
        if st is _St.TRAILER_HEADER:
            self._trailer_bytes += n
            if self._trailer_bytes > MAX_TRAILER:
                raise InvalidChunk("trailer section too large")
        else:
            self._line_bytes += n
            if self._line_bytes > MAX_CHUNK_LINE:
                raise InvalidChunk("chunk size line too long")

    def _step(self, st: _St, ch: int) -> _St:
        """One framing byte: nginx's ``switch (state)``."""
        if st is _St.CHUNK_START:
            digit = _hex(ch)
            if digit < 0:
                raise InvalidChunk("missing chunk size")
            self._size = digit
            self._line_bytes = 1
            return _St.CHUNK_SIZE
        if st is _St.CHUNK_SIZE:
            if self._size > _MAX_SIZE_BEFORE_DIGIT:
                raise InvalidChunk("chunk size overflow")
            self._count(st, 1)
            digit = _hex(ch)
            if digit >= 0:
                self._size = self._size * 16 + digit
                return st
            last = self._size == 0
            if ch == 0x0D:
                if last:
                    return _St.LAST_CHUNK_EXTENSION_ALMOST_DONE
                return _St.CHUNK_EXTENSION_ALMOST_DONE
            if ch in (0x3B, 0x20, 0x09):  # ';', ' ', '\t'
                return _St.LAST_CHUNK_EXTENSION if last else _St.CHUNK_EXTENSION
            raise InvalidChunk("invalid character after chunk size")
        if st is _St.CHUNK_EXTENSION_ALMOST_DONE:
            if ch != 0x0A:
                raise InvalidChunk("CR without LF in chunk size line")
            return _St.DATA
        if st is _St.AFTER_DATA:
            if ch != 0x0D:
                raise InvalidChunk("missing CRLF after chunk data")
            return _St.AFTER_DATA_ALMOST_DONE
        if st is _St.AFTER_DATA_ALMOST_DONE:
            if ch != 0x0A:
                raise InvalidChunk("CR without LF after chunk data")
            return _St.CHUNK_START
        if st is _St.LAST_CHUNK_EXTENSION_ALMOST_DONE:
            if ch != 0x0A:
                raise InvalidChunk("CR without LF in last chunk line")
            return _St.TRAILER
        if st is _St.TRAILER:
            if ch == 0x0D:
                return _St.TRAILER_ALMOST_DONE
            if ch == 0x0A:
                raise InvalidChunk("bare LF in trailer")
            self._count(_St.TRAILER_HEADER, 1)
            return _St.TRAILER_HEADER
        if st is _St.TRAILER_ALMOST_DONE:
            if ch != 0x0A:
                raise InvalidChunk("CR without LF at the end of the trailer")
            return _St.DONE
        # TRAILER_HEADER_ALMOST_DONE
        if ch != 0x0A:
            raise InvalidChunk("CR without LF in trailer")
        return _St.TRAILER


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
