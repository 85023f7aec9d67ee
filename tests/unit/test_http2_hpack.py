"""nginx's reading of an HPACK header block's integers and lengths
(``ngx_http_v2_parse_int``, ``ngx_http_v2_state_field_len``; nginx-tests h2_headers.t
"ngx_http_v2_parse_int() error handling"), without sockets."""

from __future__ import annotations

import pytest
from hpack import Encoder

from wsgate.http.http2 import COMPRESSION_ERROR, FRAME_SIZE_ERROR, header_block_error

FIELDS = [(":method", "GET"), (":path", "/"), ("x-long", "v" * 300), ("n" * 200, "b")]


def test_a_well_formed_block_has_no_error() -> None:
    block = Encoder().encode(FIELDS)
    assert header_block_error(block) is None
    # Every prefix of it, as it arrives, is not an error yet.
    assert all(header_block_error(block[:n], len(block)) is None for n in range(len(block)))


@pytest.mark.parametrize(
    ("block", "size", "code"),
    [
        # An integer cut by the block's end: the index, a string's length.
        (b"\xff", None, FRAME_SIZE_ERROR),
        (b"\x42\xff", None, FRAME_SIZE_ERROR),
        # Four octets, all continued, with more of the block to come: too long.
        (b"\xff\xff\xff\xff", 5, COMPRESSION_ERROR),
        (b"\x42\xff\xff\xff\xff", 6, COMPRESSION_ERROR),
        # ...but four octets that are the block's end are cut, not too long.
        (b"\xff\xff\xff\xff", None, FRAME_SIZE_ERROR),
        # A literal whose value length is missing, a string past the block's end.
        (b"\x42", None, FRAME_SIZE_ERROR),
        (b"\x40\x03ab", None, FRAME_SIZE_ERROR),
        # A size update (5-bit prefix) too long.
        (b"\x3f\xff\xff\xff", 8, COMPRESSION_ERROR),
    ],
)
def test_integer_and_length_errors(block: bytes, size: int | None, code: int) -> None:
    error = header_block_error(block, size)
    assert error is not None and error[0] == code


@pytest.mark.parametrize(
    ("block", "size"),
    [
        (b"\xff\xff\xff", 8),  # three octets continued: more may come (NGX_AGAIN)
        (b"\xff\x80\x80\x00", None),  # four octets, ended: taken (a bad index is hpack's)
        (b"\x40\x03ab", 9),  # a string still arriving
    ],
)
def test_at_the_limit_no_error(block: bytes, size: int | None) -> None:
    assert header_block_error(block, size) is None


def test_the_wording() -> None:
    assert header_block_error(b"\xff\xff\xff\xff", 5) == (
        COMPRESSION_ERROR,
        "client sent header block with too long header index value",
    )
    assert header_block_error(b"\x42\xff\xff\xff\xff", 6) == (
        COMPRESSION_ERROR,
        "client sent header field with too long length value",
    )


def test_huffman_only_when_shorter() -> None:
    """ngx_http_v2_string_encode: "{{{{{" (15 bits a character) goes raw, "aaaaa" coded."""
    from hpack import Decoder

    from wsgate.proxy.http2 import _Encoder

    fields = [(b":status", b"200"), (b"x-foo", b"{{{{{"), (b"x-bar", b"aaaaa")]
    block = _Encoder().encode(fields)
    assert b"{{{{{" in block and b"aaaaa" not in block
    assert Decoder().decode(block, raw=True) == fields


def test_own_response_head_keeps_control_bytes() -> None:
    """An HTTP/2 stream reads back its own response: a client's control bytes echoed by
    add_header pass (an upstream's are refused, 502)."""
    from wsgate.http.response import InvalidHeader, ResponseHead, ResponseParser

    value = bytes(range(1, 10)) + b"\x0b\x0c" + bytes(range(14, 256))
    head = b"HTTP/1.1 200 OK\r\nX-Sent-Foo: a" + value + b"\r\nContent-Length: 0\r\n\r\n"
    events = ResponseParser(False, own=True).feed(head)
    assert isinstance(events[0], ResponseHead)
    assert events[0].headers[0] == ("X-Sent-Foo", ("a" + value.decode("latin-1")))
    with pytest.raises(InvalidHeader):
        ResponseParser(False).feed(head)


def test_scan_resumes_at_the_first_unfinished_representation() -> None:
    from wsgate.http.http2 import header_block_scan

    block = Encoder().encode(FIELDS)
    start = 0
    for n in range(1, len(block) + 1):
        error, again = header_block_scan(block[:n], len(block), start)
        assert error is None and start <= again <= n
        start = again
    assert start == len(block)


def test_frame_buffer_finds_the_error_before_the_frame_ends() -> None:
    """The unfinished HEADERS frame of h2_headers.t "too long index", byte by byte: the
    error comes with the fourth octet of the integer, its fifth byte never sent."""
    from h2.exceptions import ProtocolError

    from wsgate.proxy.http2 import _FrameBuffer

    buffer = _FrameBuffer(server=False)
    buffer.max_frame_size = 16384
    frame = b"\x00\x00\x05\x01\x05\x00\x00\x00\x01\xff\xff\xff\xff"
    for byte in frame[:-1]:
        buffer.add_data(bytes([byte]))
        assert list(buffer) == []
    buffer.add_data(frame[-1:])
    with pytest.raises(ProtocolError) as info:
        list(buffer)
    assert info.value.error_code == COMPRESSION_ERROR and buffer.failed_stream == 1


def test_frame_buffer_skips_altsvc_and_refuses_push_promise_at_its_header() -> None:
    from h2.exceptions import ProtocolError
    from hyperframe.frame import ExtensionFrame, PingFrame

    from wsgate.proxy.http2 import _FrameBuffer

    buffer = _FrameBuffer(server=False)
    buffer.max_frame_size = 16384
    buffer.add_data(b"\x00\x00\x07\x0a\x00\x00\x00\x00\x00payload" + PingFrame(0).serialize())
    frames = list(buffer)
    assert [type(f) for f in frames] == [ExtensionFrame, PingFrame]
    buffer.add_data(b"\x00\x00\x04\x05\x00\x00\x00\x00\x01")
    with pytest.raises(ProtocolError, match="PUSH_PROMISE"):
        list(buffer)
