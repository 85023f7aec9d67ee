"""The chunked decoder against nginx's ``ngx_http_parse_chunked``: where a body ends, and that a
bad byte is refused when it arrives, not when a line end that may never come does."""

from __future__ import annotations

import pytest

from wsgate.http.body import MAX_CHUNK_LINE, MAX_TRAILER, ChunkedDecoder, InvalidChunk

BODY = b"5\r\nhello\r\n3;ext=1\r\n, w\r\n00A \t;x\r\n0123456789\r\n000;end\r\nT: 1\r\nU:\r\n\r\n"


def decode_all(data: bytes, step: int) -> tuple[bytes, int, bool]:
    dec = ChunkedDecoder()
    buf = bytearray()
    out = []
    for i in range(0, len(data), step):
        buf += data[i : i + step]
        pieces, pos = dec.decode(buf, 0)
        del buf[:pos]
        out += pieces
    return b"".join(out), len(buf), dec.done


@pytest.mark.parametrize("step", [1, 2, 7, len(BODY) + 5])
def test_body_in_any_pieces(step: int) -> None:
    assert decode_all(BODY + b"NEXT", step) == (b"hello, w0123456789", 4, True)


def test_incomplete_body_is_not_done() -> None:
    for end in range(len(BODY)):
        data, _, done = decode_all(BODY[:end], 1)
        assert not done, end
        assert b"hello, w0123456789".startswith(data)


@pytest.mark.parametrize(
    ("prefix", "bad"),
    [
        (b"5\r\nhello\r\n0\r\n\r", b"\x08"),  # issue 14: the last chunk's trailer end
        (b"5\r", b"\x08"),
        (b"5", b"x"),
        (b"", b"g"),
        (b"5\r\nhello", b"X"),
        (b"5\r\nhello\r", b"X"),
        (b"0\r\nT: 1\r", b"X"),
        (b"0;ext\r", b"X"),
        (b"5", b"\n"),  # no bare LF (nginx 1.29.4+)
        (b"5;ext", b"\n"),
        (b"0\r\n", b"\n"),
        (b"0\r\nT: 1", b"\n"),
    ],
)
def test_bad_byte_is_refused_at_once(prefix: bytes, bad: bytes) -> None:
    dec = ChunkedDecoder()
    pieces, pos = dec.decode(prefix, 0)
    assert pos == len(prefix) and not dec.done
    with pytest.raises(InvalidChunk):
        dec.decode(prefix + bad, pos)


def test_size_limit_is_nginx_off_t() -> None:
    """nginx refuses a size above ``NGX_MAX_OFF_T_VALUE / 16`` at the next byte; leading zeros
    are not digits that count."""
    ok = ChunkedDecoder()
    ok.decode(b"0" * 40 + b"7ffffffffffffff\r\n", 0)
    assert not ok.done
    with pytest.raises(InvalidChunk):
        ChunkedDecoder().decode(b"7fffffffffffffff\r\n", 0)


def test_line_and_trailer_caps() -> None:
    ext = b"1;" + b"x" * (MAX_CHUNK_LINE - 2)
    ChunkedDecoder().decode(ext + b"\r\n", 0)
    with pytest.raises(InvalidChunk):
        ChunkedDecoder().decode(ext + b"x", 0)
    trailer = b"0\r\n" + b"T" * MAX_TRAILER
    ChunkedDecoder().decode(trailer, 0)
    with pytest.raises(InvalidChunk):
        ChunkedDecoder().decode(trailer + b"T", 0)
