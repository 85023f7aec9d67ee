"""The compiled head splitter (``wsgate.http._heads``) changes no answer of the parsers.

A request head taken by :meth:`RequestParser._common_head` (the request line matched, the
header lines split in C) must give the very :class:`RequestHead` the line-by-line parser gives,
or the very error (status and log text); a head it does not take must be left untouched for
that parser.  Heads are generated from common pieces and from odd ones (underscores, obs-text,
bare LF, tabs, duplicates, control bytes, long lines, an invalid Host, absolute targets, other
versions) and parsed both ways, whole and split at a random point.  The same for the
response parser's common heads and for ``normalize_host``'s regular-expression shortcut.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgate.errors import HttpError
from wsgate.http import request as request_mod
from wsgate.http import response as response_mod
from wsgate.http.request import HeadLimits, RequestParser, normalize_host
from wsgate.http.response import ResponseParser

try:
    from wsgate.http import _heads
except ImportError:  # pragma: no cover - only where no compiler built it
    if (shutil.which("cc") or shutil.which("gcc")) and not os.environ.get("CC"):
        raise  # a compiler is here: the extension must have been built (pip install -e .)
    pytest.skip("no C compiler: the extension was not built", allow_module_level=True)

LIMITS = HeadLimits(header_buffer_size=256, large_buffers=2, large_buffer_size=300, max_headers=6)


def _outcome(parse: Any) -> Any:
    try:
        return ("ok", parse())
    except HttpError as exc:
        return ("error", type(exc).__name__, exc.status, exc.log)


def _request(data: bytes, split: int, compiled: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        m.setattr(request_mod, "_heads", _heads if compiled else None)

        def parse() -> Any:
            parser = RequestParser(LIMITS)
            events = parser.feed(data[:split])
            events += parser.feed(data[split:])
            # what is left after the head (the state, the bytes kept) must be the same too
            return [repr(e) for e in events], parser._state.name, bytes(parser._buf)

        return _outcome(parse)


FIELD_NAMES = [
    "Host",
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Key",
    "X-A",
    "Content-Length",
    "Transfer-Encoding",
    "Expect",
    "If-Match",
    "x_under",
    "X-Ü",
    "",
    "Bad Name",
]
FIELD_VALUES = [
    "t",
    "example.com:8080",
    "websocket",
    "Upgrade",
    "  padded \t",
    "",
    "5",
    "chunked",
    "100-continue",
    "a\tb",
    "caf\xe9",
    "ctl\x01",
    "x" * 280,
    "[::1]:80",
    "a..b",
    "bad/host",
    "0",
]


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "HEAD", "CONNECT", "TRACE", "get", "G_T"]))
    target = draw(st.sampled_from(["/", "/ws?a=b", "/%41", "http://h/x", "*", "/a b", "/\x7f"]))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.10", ""]))
    line = f"{method} {target} {version}".rstrip() if version else f"{method} {target}"
    if draw(st.booleans()):
        line = line.replace(" ", draw(st.sampled_from(["  ", "\t", " "])), 1)
    fields = draw(
        st.lists(st.tuples(st.sampled_from(FIELD_NAMES), st.sampled_from(FIELD_VALUES)), max_size=8)
    )
    eol = draw(st.sampled_from(["\r\n", "\r\n", "\r\n", "\n"]))
    text = draw(st.sampled_from(["", "\r\n"])) + line + "\r\n"
    for name, value in fields:
        text += f"{name}:{draw(st.sampled_from([' ', '', '  ']))}{value}{eol}"
    text += eol + draw(st.sampled_from(["", "abcde", "GET / HTTP/1.1\r\n\r\n"]))
    return text.encode("latin-1")


@settings(max_examples=1500, deadline=None)
@given(request_heads(), st.integers(min_value=0, max_value=400))
def test_request_heads_parse_the_same_both_ways(data: bytes, split: int) -> None:
    with pytest.MonkeyPatch.context() as mp:
        split = min(split, len(data))
        whole = _request(data, len(data), True, mp)
        assert whole == _request(data, len(data), False, mp), data
        assert _request(data, split, True, mp) == _request(data, split, False, mp), (data, split)


def test_the_common_head_takes_the_compiled_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only the same answer: the common head is really split in C (the test above would
    pass if the fast path never ran)."""
    calls = []
    real = _heads.split_fields

    def counting(*args: Any) -> Any:
        result = real(*args)
        calls.append(result)
        return result

    monkeypatch.setattr(request_mod, "_heads", type("M", (), {"split_fields": counting}))
    data = (
        b"GET /ws HTTP/1.1\r\nHost: t:80\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    events = RequestParser().feed(data)
    head = events[0]
    assert calls and calls[0] is not None
    assert head.headers == [
        ("Host", "t:80"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
    ]
    assert (head.method, head.target, head.version, head.host, head.upgrade) == (
        "GET",
        "/ws",
        "1.1",
        "t",
        "websocket",
    )
    assert head.head_size == len(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"X: 1\r\n", [("X", "1")]),
        (b"X:1\r\nY-2:  a b \t\r\n", [("X", "1"), ("Y-2", "a b")]),
        (b"X_Y: 1\r\n", None),  # an underscore: nginx's own rules
        (b"X: \x80\r\n", None),  # obs-text
        (b"X: 1\n", None),  # a bare LF
        (b"X: 1\rY: 2\r\n", None),  # a bare CR
        (b"X : 1\r\n", None),  # a space before the colon
        (b": 1\r\n", None),  # no name
        (b"X: \x7f\r\n", None),  # DEL
        (b"X: 1\r\n X: folded\r\n", None),  # obs-fold
    ],
)
def test_split_fields(data: bytes, expected: Any) -> None:
    assert _heads.split_fields(data, 0, len(data), 100) == expected


def test_split_fields_line_limit() -> None:
    line = b"X: " + b"a" * 95 + b"\r\n"  # 100 bytes with its CRLF
    assert _heads.split_fields(line, 0, len(line), 100) == [("X", "a" * 95)]
    assert _heads.split_fields(line, 0, len(line), 99) is None
    with pytest.raises(ValueError):
        _heads.split_fields(line, 0, len(line) + 1, 100)


def _response(data: bytes, compiled: bool, mp: pytest.MonkeyPatch, head: bool = False) -> Any:
    with mp.context() as m:
        m.setattr(response_mod, "_heads", _heads if compiled else None)

        def parse() -> Any:
            parser = ResponseParser(head_request=head, max_head=300)
            return [repr(e) for e in parser.feed(data)], parser.buffered

        return _outcome(parse)


@st.composite
def response_heads(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from(["101", "200", "204", "304", "099", "1000", "abc", "301"]))
    reason = draw(st.sampled_from([" Switching Protocols", " OK", "", " ", " caf\xe9", " a\x01"]))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 "]))
    fields = draw(
        st.lists(st.tuples(st.sampled_from(FIELD_NAMES), st.sampled_from(FIELD_VALUES)), max_size=6)
    )
    eol = draw(st.sampled_from(["\r\n", "\r\n", "\n"]))
    text = f"{version} {status}{reason}\r\n"
    for name, value in fields:
        text += f"{name}: {value}{eol}"
    text += eol + draw(st.sampled_from(["", "hello", "0\r\n\r\n"]))
    return text.encode("latin-1")


@settings(max_examples=1000, deadline=None)
@given(response_heads(), st.booleans())
def test_response_heads_parse_the_same_both_ways(data: bytes, head: bool) -> None:
    with pytest.MonkeyPatch.context() as mp:
        assert _response(data, True, mp, head) == _response(data, False, mp, head), data


@settings(max_examples=2000, deadline=None)
@given(
    st.binary(max_size=12) | st.from_regex(rb"[a-zA-Z0-9.\-]{0,8}(:[0-9]{0,6})?", fullmatch=True)
)
def test_normalize_host_shortcut_gives_the_loop_answer(raw: bytes) -> None:
    fast = normalize_host(raw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(request_mod, "_PLAIN_HOST", re.compile(rb"(?!)"))  # never matches
        assert normalize_host(raw) == fast, raw


def test_the_common_response_takes_the_compiled_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = _heads.split_fields

    def counting(*args: Any) -> Any:
        calls.append(real(*args))
        return calls[-1]

    monkeypatch.setattr(response_mod, "_heads", type("M", (), {"split_fields": counting}))
    data = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi"
    )
    parser = ResponseParser(head_request=False, max_head=4096)
    (head,) = parser.feed(data)
    assert calls and calls[0] is not None
    assert (head.status, head.reason, head.version, head.keep_alive) == (
        101,
        "Switching Protocols",
        "1.1",
        False,
    )
    assert head.headers[2] == ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    assert parser.take_buffered() == b"\x81\x02hi"
