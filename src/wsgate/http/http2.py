"""HTTP/2 requests and responses as the HTTP/1.1 pipeline sees them (pure: no sockets).

The asyncio side (:mod:`wsgate.proxy.http2`) hands each stream's header list to
:func:`request_head`, which makes the :class:`~wsgate.http.request.RequestHead` the phases
already know, with nginx's rules for HTTP/2 (``ngx_http_v2_state_process_header``,
``ngx_http_v2_run_request``, ``ngx_http_v2_construct_request_line``,
``ngx_http_v2_construct_cookie_header``, nginx 1.31):

- ``:authority`` is the host (``Host`` too, when it is absent: "compatibility for
  $http_host"); both with different values is 400;
- the ``cookie`` crumbs (RFC 9113 §8.2.3) are joined with ``"; "``;
- header names are checked as ``ngx_http_v2_validate_header`` checks them (uppercase, ``:``
  or a control byte: 400; other odd bytes: ignored with ``ignore_invalid_headers``), pseudo
  headers as ``ngx_http_v2_pseudo_header`` (unknown, duplicate, after a regular field, missing
  ``:method``/``:scheme``/``:path``: 400), ``max_headers`` counts the fields;
- ``Connection``, ``Keep-Alive``, ``Transfer-Encoding``, ``Upgrade`` and a ``TE`` other than
  ``trailers`` are 400 ("client sent \\"Upgrade\\" header": since nginx 1.31 an HTTP/1.1
  upgrade is refused on HTTP/2 too); CONNECT and TRACE are 405, except RFC 8441's extended
  CONNECT (``:protocol``, when offered: wsgate's), which becomes an HTTP/1.1-style upgrade;
- without ``Content-Length`` a body that may follow is read as if chunked
  (``r->headers_in.chunked = 1``): the proxy then streams it chunked, or reads it whole for
  an HTTP/1.0 upstream;
- ``$request`` is ``METHOD PATH HTTP/2.0``.

The head keeps ``version`` ``"1.1"``: what the pipeline writes back is an HTTP/1.1 response
(its framing, chunked or by length), which :func:`response_fields` and the stream's
:class:`~wsgate.http.response.ResponseParser` turn back into HEADERS and DATA.  The request's
``$server_protocol`` is set to ``HTTP/2.0`` by the stream.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from typing import NamedTuple

from wsgate.errors import HttpError
from wsgate.http.request import _UNIQUE, RequestHead, normalize_host

__all__ = [
    "COMPRESSION_ERROR",
    "FRAME_SIZE_ERROR",
    "HOP_BY_HOP",
    "HPACK_TABLE_SIZE",
    "FrameGuard",
    "H2Refused",
    "Violation",
    "header_block_error",
    "header_block_scan",
    "request_head",
    "response_fields",
    "tunnel_fields",
    "websocket_key",
]

#: Response fields HTTP/2 forbids (RFC 9113 §8.2.2): connection-specific ones.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)
#: Request fields nginx refuses on a stream (``ngx_http_v2_run_request``).
_REFUSED = ("connection", "keep-alive", "transfer-encoding", "upgrade")
_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
#: Fields a stream may carry once (nginx's headers_in handlers, as on HTTP/1.1).
_ONCE = _UNIQUE | {b"host", b"content-length"}


#: RFC 9113 §7 error codes nginx gives a header block it cannot read.
FRAME_SIZE_ERROR = 0x6
COMPRESSION_ERROR = 0x9
#: ``NGX_HTTP_V2_INT_OCTETS``: nginx reads an HPACK integer of at most 4 octets.
_INT_OCTETS = 4


def _hpack_int(
    data: bytes | bytearray, pos: int, avail: int, size: int, prefix: int
) -> tuple[int, int] | int | None:
    """``ngx_http_v2_parse_int`` at ``pos`` of a block ending at ``size`` of which ``data``
    holds up to ``avail``: ``(value, next position)``, an error code (FRAME_SIZE_ERROR: the
    integer runs to the block's end; COMPRESSION_ERROR: longer than 4 octets), or None (more
    data needed)."""
    start = pos
    value = data[pos] & prefix
    pos += 1
    if value != prefix:
        return value, pos
    end = min(avail, start + _INT_OCTETS)
    shift = 0
    while pos < end:
        octet = data[pos]
        pos += 1
        value += (octet & 0x7F) << shift
        if octet < 0x80:
            return value, pos
        shift += 7
    if end - start >= size - start:
        return FRAME_SIZE_ERROR
    if end == start + _INT_OCTETS:
        return COMPRESSION_ERROR
    return None


def header_block_error(data: bytes, size: int | None = None) -> tuple[int, str] | None:
    """The connection error nginx gives the integers and lengths of an HPACK header block
    (``ngx_http_v2_state_header_block``, ``_field_len``, ``_field_raw``), of which ``data``
    has arrived (``size``: the whole block's length, ``len(data)`` by default): an integer
    longer than 4 octets is COMPRESSION_ERROR; an integer, a length or a string cut by the
    block's end is FRAME_SIZE_ERROR.  None: no such error (in what has arrived)."""
    return header_block_scan(data, len(data) if size is None else size)[0]


def header_block_scan(
    data: bytes | bytearray, size: int, start: int = 0
) -> tuple[tuple[int, str] | None, int]:
    """:func:`header_block_error` of the block ending at ``size`` in ``data`` (positions in
    ``data``), from the representation at ``start``; and where to start again when more of
    the block has arrived (the first representation not complete yet): a block arriving
    piece by piece is walked once, not once per piece."""
    avail = min(len(data), size)
    pos = start
    while pos < avail:
        begun = pos
        first = data[pos]
        if first & 0x80:
            prefix, strings = 0x7F, 0  # indexed field
        elif first & 0x40:
            prefix, strings = 0x3F, 1  # literal with incremental indexing
        elif first & 0x20:
            prefix, strings = 0x1F, 0  # dynamic table size update
        else:
            prefix, strings = 0x0F, 1  # literal without indexing / never indexed
        got = _hpack_int(data, pos, avail, size, prefix)
        if not isinstance(got, tuple):
            return _int_error(got, "header index" if prefix != 0x1F else "size update"), begun
        index, pos = got
        if strings and index == 0:
            strings = 2  # a new name, then the value
        for _ in range(strings):
            if pos >= size:
                return (FRAME_SIZE_ERROR, "client sent header block with incorrect length"), begun
            if pos >= avail:
                return None, begun
            got = _hpack_int(data, pos, avail, size, 0x7F)
            if not isinstance(got, tuple):
                return _int_error(got, None), begun
            length, pos = got
            if pos + length > size:
                return (FRAME_SIZE_ERROR, "client sent header field with incorrect length"), begun
            pos += length
        if pos > avail:
            return None, begun  # the string is still arriving
    return None, pos


def _int_error(code: int | None, what: str | None) -> tuple[int, str] | None:
    if code is None:
        return None
    if code == FRAME_SIZE_ERROR:
        return code, "client sent header block with incorrect length"
    if what is None:
        return code, "client sent header field with too long length value"
    return code, f"client sent header block with too long {what} value"


class H2Refused(HttpError):
    """A stream's request nginx refuses: the error answers it, the head is still usable for
    the error page (its server, its variables)."""

    def __init__(self, status: int, log: str, head: RequestHead) -> None:
        super().__init__(status, log)
        self.head = head


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")


_NAME_OK = frozenset(b"abcdefghijklmnopqrstuvwxyz-0123456789")
_NAME_FATAL = frozenset(range(0x21)) | {0x7F, ord(":")} | frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_METHOD_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_-"


def _name_check(name: bytes, underscores: bool) -> bool | None:
    """``ngx_http_v2_validate_header`` on a name: True valid, False invalid (ignored with
    ``ignore_invalid_headers``), None refused (400)."""
    invalid = False
    for ch in name[1:] if name[:1] == b":" else name:
        if ch in _NAME_OK or (ch == 0x5F and underscores):
            continue
        if ch in _NAME_FATAL:
            return None
        invalid = True
    return not invalid


def request_head(
    fields: Iterable[tuple[bytes, bytes]],
    end_stream: bool,
    *,
    block_size: int = 0,
    max_headers: int = 1000,
    underscores: bool = False,
    ignore_invalid: bool = True,
    connect_protocol: bool = False,
    key: str = "",
) -> RequestHead:
    """The request of one stream's HEADERS (``block_size``: the header block's length, nginx's
    ``$request_length`` of a stream).  Raises :class:`H2Refused` with nginx's status and log
    line and the head as far as it was read (for the error page).

    ``connect_protocol``: ``SETTINGS_ENABLE_CONNECT_PROTOCOL`` was sent, so ``:protocol``
    (RFC 8441) is accepted: the extended CONNECT becomes an upgrade
    (:func:`_extended_connect`, ``key`` its ``Sec-WebSocket-Key``, random when empty);
    without it ``:protocol`` is an unknown pseudo-header (400), and CONNECT without
    ``:protocol`` is 405 as in nginx."""
    pseudo: dict[bytes, str] = {}
    headers: list[tuple[str, str]] = []
    ignored: list[str] = []
    cookies: list[str] = []
    once: dict[bytes, bytes] = {}
    error: tuple[int, str] | None = None

    def refuse(status: int, text: str) -> None:
        nonlocal error
        if error is None:
            error = (status, text)

    for name, value in fields:
        text = _text(name)
        ok = _name_check(name, underscores) if name else None
        if ok is None:
            refuse(400, f'client sent invalid header name: "{text}"')
            continue
        if b"\0" in value or b"\n" in value or b"\r" in value:
            refuse(400, f'client sent header "{text}" with invalid value: "{_text(value)}"')
            continue
        if name[:1] == b":":
            if headers or cookies:
                refuse(400, f'client sent pseudo-header "{text}" after regular header')
            elif name not in _PSEUDO and not (name == b":protocol" and connect_protocol):
                refuse(400, f'client sent unknown pseudo-header "{text}"')
            elif name in pseudo:
                shown = '":authority"' if name == b":authority" else text
                refuse(400, f"client sent duplicate {shown} header")
            else:
                pseudo[name] = _text(value)
            continue
        if not ok:
            if ignore_invalid:
                ignored.append(text)
                continue
        if name == b"cookie":
            cookies.append(_text(value))
            continue
        if len(headers) >= max_headers:
            refuse(494, "client sent too many header lines")
            continue
        if name in _ONCE:
            # ngx_http_process_host, ngx_http_process_unique_header_line.
            prev = once.get(name)
            if prev is not None:
                what = "host header" if name == b"host" else "header line"
                refuse(
                    400,
                    f'client sent duplicate {what}: "{text}: {_text(value)}", '
                    f'previous value: "{text}: {_text(prev)}"',
                )
                continue
            once[name] = value
        headers.append((text, _text(value)))
    if cookies:
        headers.append(("cookie", "; ".join(cookies)))
    method = pseudo.get(b":method", "")
    protocol = pseudo.get(b":protocol")
    path = pseudo.get(b":path", "")
    authority = pseudo.get(b":authority")
    host_field = next((v for k, v in headers if k == "host"), None)
    raw_host = authority if authority is not None else host_field
    host = normalize_host(raw_host) if raw_host else None
    if authority is not None and host_field is None:
        headers.insert(0, ("host", authority))
    length_text = next((v for k, v in headers if k == "content-length"), None)
    content_length: int | None = None
    if length_text is not None and length_text.isascii() and length_text.isdigit():
        content_length = int(length_text)
    head = RequestHead(
        method=method or "GET",
        target=path,
        version="1.1",
        headers=headers,
        keep_alive=True,
        content_length=content_length,
        chunked=content_length is None and not end_stream,
        upgrade=None,
        host=host,
        request_line=f"{method} {path} HTTP/2.0" if method and path else "",
        head_size=block_size,
        ignored_headers=ignored,
    )
    if error is None:
        if not method:
            refuse(400, "client sent no :method header")
        elif method.encode("latin-1").translate(None, _METHOD_CHARS):
            refuse(400, f'client sent invalid method: "{method}"')
        elif b":scheme" not in pseudo:
            refuse(400, "client sent no :scheme header")
        elif not path:
            refuse(400, "client sent no :path header")
        elif (path[0] != "/" and not (path == "*" and method == "OPTIONS")) or any(
            c <= " " or c == "\x7f" for c in path
        ):
            # ngx_http_parse_uri: no control bytes, no spaces.
            refuse(400, f'client sent invalid :path header: "{path}"')
    if error is None:
        names = {k for k, _ in headers}
        for refused in _REFUSED:
            if refused in names:
                shown = "Keep-Alive" if refused == "keep-alive" else refused.title()
                refuse(400, f'client sent "{shown}" header')
                break
    if error is None:
        te = [v for k, v in headers if k == "te"]
        if te and (len(te) > 1 or te[0].lower() != "trailers"):
            refuse(400, 'client sent invalid "TE" header')
        elif raw_host is None:
            refuse(400, 'client sent neither ":authority" nor "Host" header')
        elif host is None:
            refuse(400, "client sent invalid host header")
        elif authority is not None and host_field is not None and host_field != authority:
            refuse(400, 'client sent ":authority" and "Host" headers with different values')
        elif length_text is not None and content_length is None:
            refuse(400, 'client sent invalid "Content-Length" header')
        elif content_length and end_stream:
            refuse(400, "client prematurely closed stream")
        elif protocol is not None and method != "CONNECT":
            # RFC 8441 §4: ":protocol" only with CONNECT (a malformed request).
            refuse(400, 'client sent ":protocol" header without CONNECT method')
        elif protocol is not None and not protocol:
            refuse(400, 'client sent empty ":protocol" header')
        elif method in ("CONNECT", "TRACE") and protocol is None:
            refuse(405, f"client sent {method} method")
    if error is not None:
        raise H2Refused(error[0], error[1], head)
    if protocol is not None:
        _extended_connect(head, protocol, key)
    return head


#: HTTP/2 error codes (RFC 9113 §7) a :class:`Violation` carries.
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, ENHANCE_YOUR_CALM = 0, 1, 3, 6, 11
#: nginx's HPACK dynamic table (``NGX_HTTP_V2_TABLE_SIZE``): the most a client may make our
#: encoder keep, whatever its ``SETTINGS_HEADER_TABLE_SIZE`` says (RFC 7541 §4.2 lets the
#: encoder use less).
HPACK_TABLE_SIZE = 4096
_DATA, _HEADERS, _PRIORITY, _SETTINGS, _PING, _CONTINUATION = 0, 1, 2, 4, 6, 9
_END_HEADERS, _ACK = 0x4, 0x1
_PREFACE = 24


class Violation(NamedTuple):
    """What ends a connection: the GOAWAY error code (None: closed without GOAWAY, as nginx
    closes a connection whose output it cannot queue), the ``[info]`` line, the stream the
    GOAWAY names (0: the last one served)."""

    code: int | None
    text: str
    sid: int = 0


class FrameGuard:
    """nginx's defences against HTTP/2 floods (``src/http/v2/ngx_http_v2.c``, 1.31), counted
    over the frame headers of the bytes a client sends, before the protocol library holds or
    parses them (pure: the connection feeds it bytes and events).

    - A header block (HEADERS and its CONTINUATION frames) longer than ``header_limit`` is
      ENHANCE_YOUR_CALM ("client sent too large header", nginx's ``header_limit``), seen at
      the frame header, so the library never buffers it (CONTINUATION flood).
    - A DATA frame longer than any stream window we grant (``data_limit``) is
      FLOW_CONTROL_ERROR, another frame longer than ``frame_limit`` FRAME_SIZE_ERROR: no
      frame is held whole beyond what a client may legitimately send.
    - ``ngx_http_v2_state_priority``: PRIORITY frames beyond ``max(concurrent, 100)`` plus
      ``concurrent`` per stream opened are ENHANCE_YOUR_CALM.
    - ``ngx_http_v2_read_handler``: when the bytes read plus the control frames answered,
      divided by 8, exceed the payload (request header blocks and body DATA,
      :meth:`credit`) by more than 1 MiB, "http2 flood detected": GOAWAY NO_ERROR (SETTINGS,
      PING, WINDOW_UPDATE, empty DATA, empty CONTINUATION, RST_STREAM floods).
    - ``ngx_http_v2_idle_handler``: more than ``10 * keepalive_requests`` reads while no
      stream is open (:meth:`idle_read`): "http2 flood detected", GOAWAY NO_ERROR.
    - ``ngx_http_v2_get_frame``: more than 10000 control frames owed to a client that does
      not read them (acks of PING and SETTINGS, RST_STREAM refusals, counted until the
      output is seen empty, :meth:`sent`): "http2 flood detected", closed without GOAWAY.
    """

    __slots__ = (
        "header_limit",
        "data_limit",
        "frame_limit",
        "concurrent",
        "total",
        "payload",
        "owed",
        "priority_limit",
        "block_sid",
        "block_size",
        "_head",
        "_skip",
        "_end",
        "_preface",
        "cut",
        "idle_limit",
        "idle",
    )

    #: ``total_bytes / 8 > payload_bytes + 1048576`` (ngx_http_v2_read_handler).
    RATIO = 8
    GRACE = 1 << 20
    #: ``h2c->frames < 10000`` (ngx_http_v2_get_frame).
    MAX_OWED = 10000

    def __init__(
        self,
        *,
        header_limit: int,
        data_limit: int,
        frame_limit: int,
        concurrent: int,
        idle_limit: int = 10000,
        preface: bool = True,
    ) -> None:
        self.header_limit = header_limit
        self.data_limit = data_limit
        self.frame_limit = frame_limit
        self.concurrent = concurrent
        self.total = 0
        self.payload = 0
        self.owed = 0
        self.priority_limit = max(concurrent, 100)
        #: The stream whose header block is not complete yet (0: none).
        self.block_sid = 0
        self.block_size = 0
        self._head = b""
        self._skip = 0
        #: The frame being skipped ends a header block.
        self._end = False
        self._preface = _PREFACE if preface else 0
        #: Where, in the bytes :meth:`feed` refused, the refused frame starts.
        self.cut = 0
        #: ``h2c->idle``: reads while no stream is open, never reset; past ``idle_limit``
        #: (nginx: ``10 * keepalive_requests``) the connection is flooding.
        self.idle_limit = idle_limit
        self.idle = 0

    def feed(self, data: bytes) -> Violation | None:
        """The bytes of one read, before the library sees them; on a violation, :attr:`cut`
        says how many of them come before the frame refused."""
        self.total += len(data)
        view = memoryview(data)
        pos = min(self._preface, len(view))
        self._preface -= pos
        end = len(view)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                if not self._skip and self._end:
                    self.block_sid = 0
                continue
            need = 9 - len(self._head)
            start = pos - len(self._head)
            head = self._head + bytes(view[pos : pos + need])
            pos += min(need, end - pos)
            if len(head) < 9:
                self._head = head
                break
            self._head = b""
            verdict = self._frame(
                int.from_bytes(head[:3], "big"),
                head[3],
                head[4],
                int.from_bytes(head[5:9], "big") & 0x7FFFFFFF,
            )
            if verdict is not None:
                self.cut = max(start, 0)
                return verdict
        return None

    def _frame(self, length: int, kind: int, flags: int, sid: int) -> Violation | None:
        self._skip = length
        self._end = False
        if kind in (_HEADERS, _CONTINUATION):
            if kind == _HEADERS:
                self.block_sid, self.block_size = sid, 0
                self.priority_limit += self.concurrent
            self.block_size += length
            self._end = bool(flags & _END_HEADERS)
            if self.block_size > self.header_limit:
                return Violation(ENHANCE_YOUR_CALM, "client sent too large header", sid)
            if not length and self._end:
                self.block_sid = 0
            return None
        if kind == _DATA:
            if length > self.data_limit:
                return Violation(
                    FLOW_CONTROL_ERROR,
                    f"client violated flow control for stream {sid}: received DATA frame"
                    f" length {length}, available window {self.data_limit}",
                )
            return None
        if length > self.frame_limit:
            return Violation(
                FRAME_SIZE_ERROR, f"client sent frame of type {kind} with too large length"
            )
        if kind == _PRIORITY:
            self.priority_limit -= 1
            if self.priority_limit <= 0:
                return Violation(ENHANCE_YOUR_CALM, "client sent too many PRIORITY frames")
        elif kind in (_PING, _SETTINGS) and not flags & _ACK:
            self.answered(17 if kind == _PING else 9)
        return None

    def answered(self, size: int) -> None:
        """A control frame of ``size`` bytes owed to the client (an ack, a refusal)."""
        self.owed += 1
        self.total += size

    def credit(self, size: int) -> None:
        """Payload: a request's header block, request body or tunnel DATA."""
        self.payload += size

    def idle_read(self) -> Violation | None:
        """A read while no stream is open (ngx_http_v2_idle_handler)."""
        self.idle += 1
        if self.idle > self.idle_limit + 1:
            return Violation(NO_ERROR, "http2 flood detected")
        return None

    def sent(self, unsent: int) -> None:
        """The output holds ``unsent`` bytes; when none, what was owed has gone out."""
        if not unsent:
            self.owed = 0

    def flooded(self) -> Violation | None:
        """nginx's two flood checks, after a read has been processed."""
        if self.owed > self.MAX_OWED:
            return Violation(None, "http2 flood detected")
        if self.total // self.RATIO > self.payload + self.GRACE:
            return Violation(NO_ERROR, "http2 flood detected")
        return None


def websocket_key(raw: bytes) -> str:
    """A ``Sec-WebSocket-Key`` (RFC 6455 §4.1: 16 bytes, base64) from 16 random bytes."""
    return base64.b64encode(raw[:16]).decode("ascii")


def _extended_connect(head: RequestHead, protocol: str, key: str) -> None:
    """RFC 8441 §5: an extended CONNECT becomes the HTTP/1.1 upgrade the pipeline knows, a
    ``GET`` with ``Upgrade: PROTOCOL`` and ``Connection: Upgrade`` (the client's
    ``Sec-WebSocket-Version``, ``-Protocol`` and ``-Extensions`` are among its fields and
    pass as they are).  The client sends no ``Sec-WebSocket-Key`` over HTTP/2 (§5: the
    ``:status 200`` replaces the key's proof); ``key`` is the upstream's.  No body: after
    the ``200`` the DATA frames are the tunnel's."""
    head.method = "GET"
    head.headers = [(n, v) for n, v in head.headers if n != "sec-websocket-key"]
    head.headers += [("upgrade", protocol), ("connection", "Upgrade")]
    if protocol.lower() == "websocket":
        head.headers.append(("sec-websocket-key", key or websocket_key(os.urandom(16))))
    head.upgrade = protocol
    head.content_length = None
    head.chunked = False


def tunnel_fields(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """RFC 8441 §5: the ``:status 200`` of a stream whose upstream answered ``101``, with the
    101's fields but the connection-specific ones and ``Sec-WebSocket-Accept`` (the
    HTTP/2 handshake has no key to prove)."""
    return [
        field
        for field in response_fields(200, headers)
        if field[0] not in (b"sec-websocket-accept", b"content-length")
    ]


def response_fields(status: int, headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """An HTTP/1.1 response head as an HTTP/2 HEADERS list: ``:status`` first, names in
    lowercase (RFC 9113 §8.2.1), the connection-specific fields dropped (§8.2.2)."""
    out = [(b":status", str(status).encode())]
    for name, value in headers:
        low = name.lower()
        if low in HOP_BY_HOP:
            continue
        out.append((low.encode("latin-1"), value.encode("latin-1")))
    return out
