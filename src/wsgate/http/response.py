"""Sans-I/O parser for an upstream's HTTP/1.x response, with nginx's errors.

Events: one :class:`ResponseHead`, then :class:`~wsgate.http.body.Body` pieces (de-chunked) and
:class:`~wsgate.http.body.EndOfMessage`.  Framing follows RFC 9112 §6.3
(https://www.rfc-editor.org/rfc/rfc9112#section-6.3): no body for HEAD, 1xx, 204 and 304; chunked;
Content-Length; otherwise the body ends when the upstream closes.

**101 Switching Protocols.**  The parser stops right after the head (no ``EndOfMessage``) and keeps
whatever followed it.  The caller then either calls :meth:`ResponseParser.take_buffered` (the client
sent ``Upgrade``: start the tunnel, send these bytes to the client first) or drops the parser (no
client ``Upgrade``: only the 101's head reaches the client, see
:func:`wsgate.proxy.relay.relay_response`).

**Errors** are :class:`~wsgate.errors.HttpError` with status 502 and nginx's ERROR-level message
(``src/http/modules/ngx_http_proxy_module.c ngx_http_proxy_process_status`` and
``ngx_http_proxy_process_header``).  A close before the head is complete is the retryable
"upstream prematurely closed connection while reading response header from upstream"; a close inside
a Content-Length or chunked body raises :class:`UpstreamPrematureClose` instead, because by then the
head has gone to the client and the only thing left is to log and close it.

As in :mod:`wsgate.http.request`, the head is split into lines here (nginx's ``proxy_buffer_size``
limit, bare LF accepted) and each line is validated by ``httptools.HttpResponseParser``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import httptools

from wsgate.errors import HttpError
from wsgate.http.body import Body, BodyReader, EndOfMessage, InvalidChunk
from wsgate.http.fields import first_value, has_ctl_or_space
from wsgate.http.request import _heads

__all__ = [
    "InvalidHeader",
    "ResponseEvent",
    "ResponseHead",
    "ResponseParser",
    "UpstreamPrematureClose",
]

_MAX_OFF_T = 2**63 - 1
_RENAMED = {b"content-length": b"X-Wsgate-Cl", b"transfer-encoding": b"X-Wsgate-Te"}
_PREMATURE_HEADER = (
    "upstream prematurely closed connection while reading response header from upstream"
)


class InvalidHeader(HttpError):
    """The upstream's head (or a chunked body read with it) is malformed or too big: what
    ``proxy_next_upstream invalid_header`` names ("a server returned an empty or invalid
    response"; nginx's ``NGX_HTTP_UPSTREAM_INVALID_HEADER``, which
    ``ngx_http_upstream_process_content_length`` and ``..._transfer_encoding`` return for a
    duplicate ``Content-Length``, both framings at once, or an unknown coding), as opposed to
    the other 502s here (a premature close, a non-HTTP status line), which are ``error``."""


@dataclass(slots=True)
class ResponseHead:
    """A parsed response head; ``reason`` is verbatim (nginx copies it to the client)."""

    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    content_length: int | None
    chunked: bool
    keep_alive: bool
    head_size: int = 0

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        return first_value(self.headers, name)


ResponseEvent = ResponseHead | Body | EndOfMessage


class UpstreamPrematureClose(HttpError):
    """The upstream closed inside a Content-Length or chunked body: log it and close the client."""


class _State(enum.Enum):
    HEAD = 0
    BODY = 1
    BODY_CLOSE = 3
    SWITCHED = 4
    DONE = 5
    RETIRED = 6
    FAILED = 7


_CTL = bytes(range(1, 9)) + bytes(range(0x0B, 0x20)) + b"\x7f"
#: What llhttp refuses in a value and wsgate's own heads may carry: checked as spaces.
_CTL_AS_SPACE = bytes.maketrans(_CTL, b" " * len(_CTL))
#: The status line of a common head (HTTP/1.0 or 1.1, a status of three digits, a reason of
#: visible ASCII and spaces): with header lines ``_heads.split_fields`` takes, it is parsed at
#: once (:meth:`ResponseParser._common_head`); anything else line by line.
_COMMON_STATUS = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9]) ([\x20-\x7e]*)")


def _printable(data: bytes, limit: int = 64) -> str:
    text = "".join(chr(c) if 0x20 <= c < 0x7F else f"\\x{c:02x}" for c in data[:limit])
    return text + ("..." if len(data) > limit else "")


class _StatusCatcher:
    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason = b""

    def on_status(self, status: bytes) -> None:
        self.reason += status


class ResponseParser:
    """Incremental upstream response parser.

    ``head_request``: the request was HEAD, so no body follows whatever the headers say.
    ``max_head``: nginx ``proxy_buffer_size`` (4k); a longer head is "upstream sent too big header".
    ``own``: the response is wsgate's own (an HTTP/2 stream reads back what its exchange
    wrote): control bytes in a value (a client's, through ``add_header``) pass as nginx
    sends them.
    """

    def __init__(self, head_request: bool, max_head: int = 4096, own: bool = False) -> None:
        self.head_request = head_request
        self.max_head = max_head
        self.own = own
        self._buf = bytearray()
        self._state = _State.HEAD
        self._eof = False
        self._body: BodyReader | None = None
        self._scan = 0
        self._deferred: HttpError | None = None

    @property
    def done(self) -> bool:
        """True once ``EndOfMessage`` was returned."""
        return self._state is _State.DONE

    @property
    def buffered(self) -> int:
        """Bytes held but not parsed (after the message: the connection is not reusable)."""
        return len(self._buf)

    def check(self) -> None:
        """Raise the error found after the events last returned (a body invalid in the same
        bytes as its head), if any: call it before waiting for more bytes."""
        exc = self._deferred
        if exc is not None:
            self._deferred = None
            raise exc

    def feed(self, data: bytes) -> list[ResponseEvent]:
        """Add bytes from the upstream; returns the events they complete."""
        self.check()
        st = self._state
        if st is _State.RETIRED or st is _State.FAILED or self._eof:
            raise RuntimeError(f"ResponseParser.feed() in state {st.name}")
        if st is _State.BODY_CLOSE:
            return [Body(data)] if data else []
        if st is _State.BODY and not self._buf and data:
            # Fast path: Content-Length body bytes straight through, no copy into the buffer.
            assert self._body is not None
            split = self._body.read_direct(data)
            if split is not None:
                part, rest = split
                events: list[ResponseEvent] = [Body(part)]
                if rest:
                    self._buf += rest
                if self._body.done:
                    events.append(EndOfMessage())
                    self._state = _State.DONE
                return events
        self._buf += data
        if st is _State.SWITCHED or st is _State.DONE:
            return []
        return self._run()

    def feed_eof(self) -> list[ResponseEvent]:
        """The upstream closed.  Ends a close-delimited body; raises if the response was cut."""
        self.check()
        self._eof = True
        st = self._state
        if st is _State.HEAD:
            self._state = _State.FAILED
            raise HttpError(502, _PREMATURE_HEADER)
        if st is _State.BODY_CLOSE:
            self._state = _State.DONE
            return [EndOfMessage()]
        if st is _State.BODY:
            self._state = _State.FAILED
            raise UpstreamPrematureClose(
                502, "upstream prematurely closed connection while reading upstream"
            )
        return []

    def take_buffered(self) -> bytes:
        """After a 101 (or the message): take the bytes that followed and retire the parser."""
        if self._state is not _State.SWITCHED and self._state is not _State.DONE:
            raise RuntimeError(f"take_buffered() in state {self._state.name}")
        data = bytes(self._buf)
        self._buf.clear()
        self._state = _State.RETIRED
        return data

    # -- internals ----------------------------------------------------------------------------

    def _run(self) -> list[ResponseEvent]:
        events: list[ResponseEvent] = []
        try:
            st = self._state
            if st is _State.HEAD:
                head = self._parse_head()
                if head is None:
                    return events
                events.append(head)
                st = self._state
            if st is _State.BODY:
                body = self._body
                assert body is not None
                try:
                    data = body.read(self._buf)
                except InvalidChunk as exc:
                    raise InvalidHeader(502, "upstream sent invalid chunked response") from exc
                if data:
                    events.append(Body(data))
                if body.done:
                    events.append(EndOfMessage())
                    self._state = _State.DONE
            elif st is _State.BODY_CLOSE and self._buf:
                events.append(Body(bytes(self._buf)))
                self._buf.clear()
            elif st is _State.DONE and events and not isinstance(events[-1], EndOfMessage):
                events.append(EndOfMessage())
        except HttpError as exc:
            self._state = _State.FAILED
            if not events:
                raise
            # A body that goes bad in the bytes that completed its head: the head is handed
            # out first, and goes to the client, as nginx sends the head before it reads the
            # body; the error comes from check() or the next feed().
            self._deferred = exc
        return events

    def _find_head_end(self) -> int:
        """Offset just past the blank line ending the head, or -1 if not there yet."""
        buf = self._buf
        while True:
            nl = buf.find(b"\n", self._scan)
            if nl < 0:
                return -1
            line_start = self._scan
            self._scan = nl + 1
            if line_start > 0 and (
                nl == line_start or (nl == line_start + 1 and buf[line_start] == 0x0D)
            ):
                return self._scan

    def _parse_head(self) -> ResponseHead | None:
        end = self._find_head_end()
        if end < 0:
            if len(self._buf) >= self.max_head:
                raise InvalidHeader(502, "upstream sent too big header")
            if len(self._buf) >= 5 and not self._buf.startswith(b"HTTP/"):
                raise HttpError(502, "upstream sent no valid HTTP/1.0 header")
            return None
        if end > self.max_head:
            raise InvalidHeader(502, "upstream sent too big header")
        if _heads is not None:
            common = self._common_head(end)
            if common is not None:
                return common
        raw_lines = bytes(self._buf[:end]).split(b"\n")[:-2]  # drop the blank line and after
        del self._buf[:end]
        lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in raw_lines]

        status_line = lines[0]
        catcher = _StatusCatcher()
        parser = httptools.HttpResponseParser(catcher)
        if not status_line.startswith(b"HTTP/") or b"\r" in status_line:
            raise HttpError(502, "upstream sent no valid HTTP/1.0 header")
        try:
            parser.feed_data(status_line + b"\r\n")
        except httptools.HttpParserError as exc:
            raise HttpError(502, "upstream sent no valid HTTP/1.0 header") from exc
        status = parser.get_status_code()
        if status < 100:
            raise HttpError(502, "upstream sent no valid HTTP/1.0 header")
        version = parser.get_http_version()

        headers: list[tuple[str, str]] = []
        cl_raw: bytes | None = None
        te_raw: bytes | None = None
        close = version < "1.1"
        for line in lines[1:]:
            colon = line.find(b":")
            name = line[:colon] if colon > 0 else b""
            bad = not name or b"\r" in line or has_ctl_or_space(name)
            lname = name.lower()
            renamed = _RENAMED.get(lname)
            if not bad:
                fed = renamed + line[colon:] if renamed else line
                if self.own:
                    fed = fed.translate(_CTL_AS_SPACE)
                try:
                    parser.feed_data(fed + b"\r\n")
                except httptools.HttpParserError:
                    bad = True
            if bad:
                raise InvalidHeader(502, f'upstream sent invalid header: "{_printable(line)}"')
            value = line[colon + 1 :].strip(b" \t")
            if renamed is not None:
                prev = cl_raw if renamed is _RENAMED[b"content-length"] else te_raw
                if prev is not None:
                    raise InvalidHeader(
                        502,
                        f'upstream sent duplicate header line: "{_printable(line)}", '
                        f'previous value: "{name.decode("latin-1")}: {_printable(prev)}"',
                    )
                if lname == b"content-length":
                    cl_raw = value
                else:
                    te_raw = value
            elif lname == b"connection" and b"close" in value.lower():
                close = True
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
        try:
            parser.feed_data(b"\r\n")
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError as exc:
            if "Upgrade" not in str(exc):  # llhttp pauses on every 101 ("Pause on CONNECT/Upgrade")
                raise InvalidHeader(502, "upstream sent invalid header") from exc
        reason = catcher.reason.decode("latin-1")
        return self._finish_head(status, reason, version, headers, cl_raw, te_raw, close, end)

    def _common_head(self, end: int) -> ResponseHead | None:
        """A head of the common kind (a status line of :data:`_COMMON_STATUS`, header lines
        ``_heads.split_fields`` takes, CRLF line ends, one Content-Length or
        Transfer-Encoding at most) parsed at once, with the line-by-line parser's result or
        error (a differential test holds them to it); None, nothing consumed, for any other."""
        assert _heads is not None
        buf = self._buf
        nl = buf.find(b"\r\n")
        if buf[end - 4 : end] != b"\r\n\r\n" or not 0 < nl < end - 2:
            return None
        m = _COMMON_STATUS.fullmatch(buf, 0, nl)
        if m is None:
            return None
        fields = _heads.split_fields(buf, nl + 2, end - 2, end) if end - 2 > nl + 2 else []
        if fields is None:
            return None
        version = "1.1" if m.group(1) == b"1" else "1.0"
        close = version == "1.0"
        framing: dict[str, bytes] = {}  # Content-Length and Transfer-Encoding, raw
        for name, value in fields:
            lname = name.lower()
            if lname == "content-length" or lname == "transfer-encoding":
                if lname in framing:
                    return None  # the line-by-line parser words the duplicate
                framing[lname] = value.encode("latin-1")
            elif lname == "connection" and "close" in value.lower():
                close = True
        status, reason = int(m.group(2)), m.group(3).decode("latin-1")
        del buf[:end]  # (after the groups: they are read from the buffer when asked for)
        cl_raw, te_raw = framing.get("content-length"), framing.get("transfer-encoding")
        return self._finish_head(status, reason, version, fields, cl_raw, te_raw, close, end)

    def _finish_head(
        self,
        status: int,
        reason: str,
        version: str,
        headers: list[tuple[str, str]],
        cl_raw: bytes | None,
        te_raw: bytes | None,
        close: bool,
        end: int,
    ) -> ResponseHead:
        """The framing checks of a parsed head, the parser's next state, and the head."""
        content_length: int | None = None
        if cl_raw is not None:
            if not cl_raw.isdigit() or not cl_raw.isascii() or int(cl_raw) > _MAX_OFF_T:
                raise InvalidHeader(
                    502,
                    f'upstream sent invalid "Content-Length" header: '
                    f'"Content-Length: {_printable(cl_raw)}"',
                )
            content_length = int(cl_raw)
        chunked = False
        if te_raw is not None:
            if te_raw.lower() != b"chunked":
                raise InvalidHeader(
                    502, f'upstream sent unknown "Transfer-Encoding": "{_printable(te_raw)}"'
                )
            if content_length is not None:
                raise InvalidHeader(
                    502,
                    'upstream sent "Content-Length" and "Transfer-Encoding" headers '
                    "at the same time",
                )
            chunked = True

        if status == 101:
            self._state = _State.SWITCHED
            close = True
        elif self.head_request or status < 200 or status in (204, 304):
            self._state = _State.DONE
        elif chunked or content_length:
            self._body = BodyReader(content_length or 0, chunked)
            self._state = _State.BODY
        elif content_length is not None:  # Content-Length: 0
            self._state = _State.DONE
        else:
            self._state = _State.BODY_CLOSE
            close = True
        return ResponseHead(
            status=status,
            reason=reason,
            version=version,
            headers=headers,
            content_length=content_length,
            chunked=chunked,
            keep_alive=not close,
            head_size=end,
        )
