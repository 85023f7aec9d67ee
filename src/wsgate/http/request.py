"""Sans-I/O HTTP/1.x request parser with nginx's limits, checks and error statuses.

Bytes go in with :meth:`RequestParser.feed`; events come out: one :class:`RequestHead`, zero or more
:class:`~wsgate.http.body.Body` (de-chunked), then :class:`~wsgate.http.body.EndOfMessage`.
Bad input raises :class:`~wsgate.errors.HttpError` carrying nginx's status and INFO log message.

**One request at a time.**  After ``EndOfMessage`` the parser is *paused*: bytes fed meanwhile are
kept, not parsed (pipelined requests are answered strictly in order, nginx
``ngx_http_set_keepalive``).
The caller then does exactly one of:

- :meth:`RequestParser.next_request` -- parse the kept bytes as the next request (keep-alive,
  pipelining; also after an ``Upgrade`` request that the upstream answered with a non-101);
- :meth:`RequestParser.take_buffered` -- take the kept bytes and retire the parser (the upstream
  answered 101: these bytes go upstream first when the tunnel starts).

**Upgrade requests** need nothing special: the request's own body (if it declares one, per
Content-Length or chunked, as nginx reads it) is parsed, then the parser pauses right after the
message, so for the usual bodyless WebSocket handshake it stops right after the head with every
following byte kept.  (llhttp would treat the body of an upgrade request as tunnel data; nginx does
not, so neither do we.)

**How httptools is used.**  Framing and limits need byte offsets that httptools does not report, so
this module splits the head into lines itself (measuring each line, as nginx's buffers do) and
parses the request line with nginx's rules (``src/http/ngx_http_parse.c
ngx_http_parse_request_line``).  Each header line is then fed to an ``httptools.HttpRequestParser``,
which validates the header syntax (token characters, value characters, obs-fold, bare CR).
Content-Length and Transfer-Encoding are renamed before llhttp sees them, so their semantics and
error order are nginx's (``src/http/ngx_http_request.c ngx_http_process_request_header``), not
llhttp's.  Bodies are framed here (see :mod:`wsgate.http.body`).

References: RFC 9112 (https://www.rfc-editor.org/rfc/rfc9112), nginx
https://nginx.org/en/docs/http/ngx_http_core_module.html#large_client_header_buffers.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from types import ModuleType

import httptools

from wsgate.compiled import extension, pure_note
from wsgate.errors import HttpError
from wsgate.http.body import Body, BodyReader, EndOfMessage, InvalidChunk
from wsgate.http.fields import first_value, has_ctl_or_space

__all__ = [
    "HeadLimits",
    "IncompleteRequest",
    "RequestEvent",
    "RequestHead",
    "RequestParser",
    "normalize_host",
]

_MAX_OFF_T = 2**63 - 1


@dataclass(slots=True)
class HeadLimits:
    """nginx ``client_header_buffer_size`` (1k), ``large_client_header_buffers`` (4 8k) and
    ``max_headers`` (1000).

    The limits applied: the request line including its line end may be at most
    ``max(header_buffer_size, large_buffer_size)`` bytes (else 414), so may each header line (else
    494), and the whole head at most ``max(header_buffer_size, large_buffers * large_buffer_size)``
    (else 494).  nginx's real capacity is a little lower because a line never straddles two of its
    buffers; we use the plain bound.

    ``max_headers`` (nginx 1.29.8+, ``ngx_http_process_request_headers``): "if
    (r->headers_in.count++ >= cscf->max_headers)" the request ends with 494 (sent as 400),
    "client sent too many header lines"; header lines ignored as invalid do not count.
    """

    header_buffer_size: int = 1024
    large_buffers: int = 4
    large_buffer_size: int = 8192
    max_headers: int = 1000
    #: ``ignore_invalid_headers`` (on): a header whose name has a byte other than a letter,
    #: a digit or ``-`` (or ``_`` with ``underscores_in_headers on``) is dropped and logged
    #: at ``info``; off: it is kept and passed on.
    ignore_invalid: bool = True
    #: ``underscores_in_headers`` (off): ``_`` is such an invalid byte.
    underscores: bool = False

    @property
    def max_line(self) -> int:
        return max(self.header_buffer_size, self.large_buffer_size)

    @property
    def max_head(self) -> int:
        return max(self.header_buffer_size, self.large_buffers * self.large_buffer_size)


@dataclass(slots=True)
class RequestHead:
    """A parsed request head.

    ``target`` is the request-target exactly as sent; ``headers`` keep original case, order and
    duplicates (latin-1), minus names nginx ignores (``ignore_invalid_headers``: any character but
    letters, digits and ``-``); ``ignored_headers`` are those lines, for nginx's ``info``
    line "client sent invalid header line".  ``host`` is nginx's ``$host`` candidate: the
    absolute-form host if any, else the Host header, lowercased, port and one trailing dot
    removed.
    """

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    keep_alive: bool
    content_length: int | None
    chunked: bool
    upgrade: str | None
    host: str | None
    request_line: str
    head_size: int
    expect_continue: bool = False
    ignored_headers: list[str] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        return first_value(self.headers, name)

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


RequestEvent = RequestHead | Body | EndOfMessage


class IncompleteRequest(HttpError):
    """The client closed the connection in the middle of a request (nothing can be sent back)."""


class _State(enum.Enum):
    HEAD = 0
    BODY = 1
    PAUSED = 3
    TUNNEL = 4
    FAILED = 5


# Byte classes as ``bytes.translate(None, delete)`` arguments: what is left after deleting
# the allowed bytes is what is not allowed, found in C instead of a Python loop per byte.
_METHOD_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_-"
_NAME_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-"
_NAME_CHARS_UNDERSCORE = _NAME_CHARS + b"_"
#: What llhttp is shown instead of a name nginx finds invalid but keeps
#: (``ignore_invalid_headers off``): the value is still checked.
_KEPT_INVALID = b"X-Wsgate-Invalid"
#: Control bytes and DEL (not allowed in a request target).
_CTL = bytes(range(0x20)) + b"\x7f"
_VERSION_RE = re.compile(rb"HTTP/([0-9]+)\.([0-9]+)")
_SCHEME_RE = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://")
#: The beginnings of ``_SCHEME_RE`` (an absolute-form target still arriving).
_SCHEME_PREFIX_RE = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*(?::/?)?")
#: A CONNECT target (nginx 1.29.3+: ``sw_spaces_before_host`` .. ``sw_port``): the authority
#: form ``host:port`` only, with a port of at least one digit; and what may begin one.
_CONNECT_SUB = rb"[0-9A-Za-z:\-._~!$&'()*+,;=]"
#: An absolute-form authority (``sw_host`` .. ``sw_port``; an IP literal or IPvFuture).
_AUTHORITY_RE = re.compile(rb"(\[" + _CONNECT_SUB + rb"*\]|[A-Za-z0-9._\-]*)(?::[0-9]*)?")
_CONNECT_RE = re.compile(rb"(\[" + _CONNECT_SUB + rb"*\]|[A-Za-z0-9.\-]*):[0-9]+")
_CONNECT_PREFIX_RE = re.compile(
    rb"(\[" + _CONNECT_SUB + rb"*(\](:[0-9]*)?)?|[A-Za-z0-9.\-]*(:[0-9]*)?)"
)
_SYNTHETIC_LINE = b"GET / HTTP/1.1\r\n"
#: Fields nginx's headers_in table reads with ``ngx_http_process_unique_header_line``: a
#: second one is 400 "client sent duplicate header line" (Host, Content-Length and
#: Transfer-Encoding are checked on their own).
_UNIQUE = frozenset(
    (
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-match",
        b"if-none-match",
        b"content-range",
        b"if-range",
        b"expect",
        b"authorization",
        b"proxy-authorization",
    )
)
_RENAMED = {b"content-length": b"X-Wsgate-Cl", b"transfer-encoding": b"X-Wsgate-Te"}

#: ``wsgate.http._heads`` (src/wsgate/http/_heads.c) when the extension was built and
#: ``WSGATE_PURE`` is not set: the header lines of a common head split in C, the rest of the
#: parser unchanged (:meth:`RequestParser._common_head`).
_heads: ModuleType | None = extension("wsgate.http._heads")
#: What ``wsgate -V`` says splits the header lines.
HEADS = "compiled" if _heads is not None else "pure Python" + pure_note()
#: The request line of a common head (one space each side of an origin-form target of
#: visible ASCII, HTTP/1.0 or 1.1): anything else goes through the line-by-line parser.
_COMMON_LINE = re.compile(rb"([A-Z_\-]+) (/[\x21-\x7e]*) HTTP/1\.([01])")
#: The fields the line-by-line parser checks for a second line: a common head has one.
_WATCHED = frozenset(
    ["host", "content-length", "transfer-encoding", *(n.decode() for n in _UNIQUE)]
)


def _printable(data: bytes, limit: int = 64) -> str:
    text = "".join(chr(c) if 0x20 <= c < 0x7F else f"\\x{c:02x}" for c in data[:limit])
    return text + ("..." if len(data) > limit else "")


#: ``ngx_http_validate_host`` (nginx 1.29.4+): what a host name may hold (letters, digits,
#: unreserved, sub-delims, ``%``) and what an IP literal may (the same without ``%``).
_HOST_CHARS = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=%"
)
_LITERAL_CHARS = _HOST_CHARS - {0x25}


#: A name of letters, digits and ``-`` in dot-separated labels, perhaps a port: nothing of it
#: to cut but the port, nothing to refuse but a port above 65535.
_PLAIN_HOST = re.compile(rb"([A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*)(?::([0-9]{1,5}))?")


def normalize_host(value: bytes | str) -> str | None:
    """Validate and normalise a host as current nginx's ``ngx_http_validate_host`` (1.29.4+);
    None if invalid.

    Lowercases, cuts ``:port`` and one trailing dot.  A name may hold letters, digits,
    ``-._~``, sub-delims and ``%``; ``[...]`` (an IP literal) only at the start, followed by
    nothing or ``:port``; the port is digits only, at most 65535; ``..`` and an empty result
    are refused.  (nginx 1.22 let any byte above 0x20 but ``/`` and ``\\`` through and did not
    check the port.)
    """
    raw = value.encode("latin-1") if isinstance(value, str) else value
    m = _PLAIN_HOST.fullmatch(raw)
    if m is not None:  # the common case, whose answer the loop below would give too
        port = m.group(2)
        if port is not None and int(port) > 65535:
            return None
        return m.group(1).decode("latin-1").lower()
    dot_pos = len(raw)
    host_len = len(raw)
    port = 0
    state = 0  # 0 start, 1 host, 2 literal, 3 after literal, 4 port
    for i, ch in enumerate(raw):
        if state == 0:
            if ch == 0x5B:  # '['
                state = 2
                continue
            state = 1
        if state in (1, 2):
            if ch == 0x2E:  # '.'
                if dot_pos == i - 1:
                    return None
                dot_pos = i
            elif state == 1 and ch == 0x3A:  # ':'
                host_len = i
                state = 4
            elif state == 2 and ch == 0x5D:  # ']'
                host_len = i + 1
                state = 3
            elif ch not in (_HOST_CHARS if state == 1 else _LITERAL_CHARS) and not (
                state == 2 and ch == 0x3A
            ):
                return None
        elif state == 3:
            if ch != 0x3A:
                return None
            state = 4
        elif 0x30 <= ch <= 0x39:
            port = port * 10 + ch - 0x30
            if port > 65535:
                return None
        else:
            return None
    if state == 2:
        return None
    if dot_pos == host_len - 1:
        host_len -= 1
    if host_len <= 0:
        return None
    return raw[:host_len].decode("latin-1").lower()


def _check_target(target: bytes, *, complete: bool, connect: bool = False) -> str | None:
    """Check a request target as nginx's request-line states do; returns the normalised host
    of an absolute-form target (or of a CONNECT's ``host:port``).  ``complete=False``:
    ``target`` may be cut short (the line is still arriving), so only what is already wrong is
    refused."""
    if len(target.translate(None, _CTL)) != len(target):
        raise HttpError(400, "client sent invalid request")
    if connect:
        if (_CONNECT_RE if complete else _CONNECT_PREFIX_RE).fullmatch(target) is None:
            raise HttpError(400, "client sent invalid request")
        if not complete:
            return None
        host = normalize_host(target)
        if host is None:
            raise HttpError(400, "client sent invalid host in request line")
        return host
    if target[0] == 0x2F:  # '/': origin-form
        return None
    m = _SCHEME_RE.match(target)
    if m is None:
        if complete or _SCHEME_PREFIX_RE.fullmatch(target) is None:
            raise HttpError(400, "client sent invalid request")
        return None
    rest_t = target[m.end() :]
    cut = len(rest_t)
    for sep_b in (b"/", b"?", b"#"):
        i = rest_t.find(sep_b)
        if 0 <= i < cut:
            cut = i
    if not complete and cut == len(rest_t):
        return None  # the authority may go on
    authority = rest_t[:cut]
    if _AUTHORITY_RE.fullmatch(authority) is None:
        raise HttpError(400, "client sent invalid request")
    host = normalize_host(authority)
    if host is None:
        raise HttpError(400, "client sent invalid host in request line")
    return host


def _scan_version(version: bytes) -> tuple[int, int] | None:
    """``HTTP/major.minor`` as nginx reads it (``sw_http_H`` .. ``sw_minor_digit``): (major,
    minor), or None while it is only a valid beginning.  A major version above 1 is 505 as
    soon as its digit is read ("HTTP/2", "HTTP/11"); a leading 0, a fourth minor digit or
    any other byte is 400."""
    n = len(version)
    if version[:5] != b"HTTP/"[:n]:
        raise HttpError(400, "client sent invalid request")
    major = minor = -1
    for ch in version[5:]:
        digit = ch - 0x30
        if minor < 0 and ch == 0x2E and major > 0:  # '.'
            minor = -2
        elif not 0 <= digit <= 9 or (major < 0 and digit == 0):
            raise HttpError(400, "client sent invalid request")
        elif minor == -1:
            major = digit if major < 0 else major * 10 + digit
            if major > 1:
                raise HttpError(505, "client sent invalid version")
        elif minor > 99:
            raise HttpError(400, "client sent invalid request")
        else:
            minor = digit if minor < 0 else minor * 10 + digit
    return (major, minor) if minor >= 0 else None


class RequestParser:
    """Incremental request parser; see the module docstring for the pause/upgrade protocol."""

    def __init__(self, limits: HeadLimits | None = None) -> None:
        self.limits = limits or HeadLimits()
        self._buf = bytearray()
        self._state = _State.HEAD
        self._eof = False
        self._body: BodyReader | None = None
        self._deferred: HttpError | None = None
        self._reset_head()

    # -- public API ---------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """True after ``EndOfMessage`` until :meth:`next_request` or :meth:`take_buffered`."""
        return self._state is _State.PAUSED

    @property
    def buffered(self) -> int:
        """Bytes held but not yet parsed (pause reading when this grows while paused)."""
        return len(self._buf)

    @property
    def request_started(self) -> bool:
        """True once bytes of a request line arrived (nginx logs a 408 only then)."""
        if self._state is not _State.HEAD:
            return self._state is _State.BODY
        return bool(self._buf.lstrip(b"\r\n"))

    @property
    def request_line(self) -> str:
        """The current request line once it is complete, else ``""`` (for a 408 log line)."""
        return self._request_line.decode("latin-1") if self._line_done else ""

    def check(self) -> None:
        """Raise the error found after the events last returned (a body invalid in the same
        bytes as its head), if any: call it before waiting for more bytes."""
        exc = self._deferred
        if exc is not None:
            self._deferred = None
            raise exc

    def feed(self, data: bytes) -> list[RequestEvent]:
        """Add bytes from the client; returns the events they complete."""
        self.check()
        st = self._state
        if st is _State.TUNNEL or st is _State.FAILED:
            raise RuntimeError(f"RequestParser.feed() in state {st.name}")
        if self._eof:
            raise RuntimeError("RequestParser.feed() after feed_eof()")
        if st is _State.BODY and not self._buf and data:
            # Fast path: Content-Length body bytes straight through, no copy into the buffer.
            assert self._body is not None
            split = self._body.read_direct(data)
            if split is not None:
                part, rest = split
                events: list[RequestEvent] = [Body(part)]
                if rest:
                    self._buf += rest
                if self._body.done:
                    self._body = None
                    events.append(EndOfMessage())
                    self._state = _State.PAUSED
                return events
        self._buf += data
        if st is _State.PAUSED:
            return []
        return self._run()

    def next_request(self) -> list[RequestEvent]:
        """Leave the pause and parse the kept bytes as the next request."""
        if self._state is not _State.PAUSED:
            raise RuntimeError(f"next_request() in state {self._state.name}")
        self._state = _State.HEAD
        self._reset_head()
        events = self._run()
        if self._eof:
            self._check_eof()
        return events

    def take_buffered(self) -> bytes:
        """Take the bytes that followed the last message and retire the parser (tunnel start)."""
        if self._state is not _State.PAUSED:
            raise RuntimeError(f"take_buffered() in state {self._state.name}")
        data = bytes(self._buf)
        self._buf.clear()
        self._state = _State.TUNNEL
        return data

    def feed_eof(self) -> list[RequestEvent]:
        """The client closed its side.  A clean close between requests returns ``[]``; a close
        inside a head or body raises :class:`IncompleteRequest` (status 400, nothing to send)."""
        self._eof = True
        if self._state in (_State.HEAD, _State.BODY):
            self._check_eof()
        return []

    # -- internals ----------------------------------------------------------------------------

    def _reset_head(self) -> None:
        self._scan = 0
        self._line_done = False  # request line parsed
        self._llhttp: httptools.HttpRequestParser | None = None
        self._method = ""
        self._target = b""
        self._version = (1, 1)
        self._request_line = b""
        self._abs_host: str | None = None
        self._headers: list[tuple[str, str]] = []
        self._ignored: list[str] = []
        self._host_raw: bytes | None = None
        self._cl_raw: bytes | None = None
        self._te_raw: bytes | None = None
        #: The first line of each field nginx requires to be unique (``_UNIQUE``).
        self._unique: dict[bytes, bytes] = {}

    def _check_eof(self) -> None:
        st = self._state
        if st is _State.HEAD:
            if not self._buf.lstrip(b"\r\n"):
                return
            self._state = _State.FAILED
            action = "request headers" if self._line_done else "request line"
            raise IncompleteRequest(
                400, f"client prematurely closed connection while reading client {action}"
            )
        if st is _State.BODY:
            self._state = _State.FAILED
            raise IncompleteRequest(400, "client prematurely closed connection")

    def _run(self) -> list[RequestEvent]:
        events: list[RequestEvent] = []
        try:
            while True:
                st = self._state
                if st is _State.HEAD:
                    head = self._parse_head()
                    if head is None:
                        break
                    events.append(head)
                    if head.chunked or head.content_length:
                        self._body = BodyReader(head.content_length or 0, head.chunked)
                        self._state = _State.BODY
                    else:
                        events.append(EndOfMessage())
                        self._state = _State.PAUSED
                        break
                elif st is _State.BODY:
                    body = self._body
                    assert body is not None
                    try:
                        data = body.read(self._buf)
                    except InvalidChunk as exc:
                        raise HttpError(400, "client sent invalid chunked body") from exc
                    if data:
                        events.append(Body(data))
                    if body.done:
                        self._body = None
                        events.append(EndOfMessage())
                        self._state = _State.PAUSED
                    break
                else:
                    break
        except HttpError as exc:
            self._state = _State.FAILED
            if not events:
                raise
            # A body that goes bad in the bytes that completed its head: the head (and the
            # body before the bad byte) is handed out first, so the error is answered in
            # the request's context, as nginx reads the body after the head.
            self._deferred = exc
        return events

    def _parse_head(self) -> RequestHead | None:
        buf = self._buf
        lim = self.limits
        if _heads is not None and not self._line_done and self._scan == 0:
            head = self._common_head()
            if head is not None:
                return head
        if not self._line_done and self._scan == 0:
            # nginx (sw_start) and RFC 9112 §2.2 skip empty lines before the request line.
            skip = len(buf) - len(buf.lstrip(b"\r\n"))
            if skip:
                del buf[:skip]
        while True:
            start = self._scan
            nl = buf.find(b"\n", start)
            if nl < 0:
                pending = len(buf) - start
                if pending >= lim.max_line:
                    self._too_long(bytes(buf[start : start + 64]))
                if len(buf) >= lim.max_head:
                    raise HttpError(494, "client sent too large request")
                if not self._line_done and pending:
                    self._check_partial_line(bytes(buf[start:]))
                return None
            if nl + 1 - start > lim.max_line:
                self._too_long(bytes(buf[start : start + 64]))
            if nl + 1 > lim.max_head:
                raise HttpError(494, "client sent too large request")
            line = bytes(buf[start:nl])
            if line.endswith(b"\r"):
                line = line[:-1]
            self._scan = nl + 1
            if not self._line_done:
                self._line_done = True
                if self._request_line_(line):
                    return self._finish_head()  # HTTP/0.9: no headers
                continue
            if not line:
                return self._finish_head()
            self._header_line(line)

    def _common_head(self) -> RequestHead | None:
        """A whole head of the common kind parsed at once: a request line of
        :data:`_COMMON_LINE`, header lines ``_heads.split_fields`` takes, each watched field
        once, no more fields than ``max_headers``, within the limits.  The result, or the
        error, is the line-by-line parser's for such a head (a differential test holds them to
        it); None (nothing consumed) for any other head, which that parser then reads."""
        assert _heads is not None
        buf = self._buf
        lim = self.limits
        end = buf.find(b"\r\n\r\n")
        if end < 0 or end + 4 > lim.max_head:
            return None
        nl = buf.find(b"\r\n")
        if nl + 2 > lim.max_line:
            return None
        line = bytes(buf[:nl])
        m = _COMMON_LINE.fullmatch(line)
        if m is None or m.group(1) == b"CONNECT":  # CONNECT's target is an authority
            return None
        fields = _heads.split_fields(buf, nl + 2, end + 2, lim.max_line) if end > nl else []
        if fields is None or len(fields) > lim.max_headers:
            return None
        watched: dict[str, bytes] = {}
        for name, value in fields:
            lname = name.lower()
            if lname in _WATCHED:
                if lname in watched:
                    return None  # the line-by-line parser words the duplicate
                watched[lname] = value.encode("latin-1")
        host_raw = watched.get("host")
        self._request_line = line
        self._method = m.group(1).decode("ascii")
        self._target = m.group(2)
        self._abs_host = None
        self._version = (1, 1) if m.group(3) == b"1" else (1, 0)
        self._line_done = True
        if host_raw is not None and normalize_host(host_raw) is None:
            raise HttpError(400, "client sent invalid host header")
        self._headers = fields
        self._host_raw = host_raw
        self._cl_raw = watched.get("content-length")
        self._te_raw = watched.get("transfer-encoding")
        self._scan = end + 4
        return self._finish_head()

    def _too_long(self, start: bytes) -> None:
        if not self._line_done:
            raise HttpError(414, "client sent too long URI")
        raise HttpError(494, f'client sent too long header line: "{_printable(start, 32)}..."')

    def _request_line_(self, line: bytes) -> bool:
        """Parse the request line (nginx rules); returns True for an HTTP/0.9 request."""
        self._request_line = line
        if b"\r" in line:
            raise HttpError(400, "client sent invalid request")
        method, sep, rest = line.partition(b" ")
        if not method or not sep or method.translate(None, _METHOD_CHARS):
            raise HttpError(400, "client sent invalid method")
        self._method = method.decode("ascii")
        parts = [p for p in rest.split(b" ") if p]
        if not parts or len(parts) > 2:
            raise HttpError(400, "client sent invalid request")
        target = parts[0]
        self._target = target
        self._abs_host = _check_target(target, complete=True, connect=self._method == "CONNECT")
        if len(parts) == 1:
            if self._method != "GET":
                raise HttpError(400, "client sent invalid method in HTTP/0.9 request")
            self._version = (0, 9)
            return True
        version = _scan_version(parts[1])
        if version is None:  # "HTTP/1." and the like: cut short by the line end
            raise HttpError(400, "client sent invalid request")
        self._version = version
        self._llhttp = httptools.HttpRequestParser(None)
        self._llhttp.feed_data(_SYNTHETIC_LINE)
        return False

    def _check_partial_line(self, partial: bytes) -> None:
        """A request line still waiting for its LF: refuse it now if a byte already cannot
        belong to a valid one, as nginx's ``ngx_http_parse_request_line`` does byte by byte
        (not after ``client_header_timeout``)."""
        method, sep, rest = partial.partition(b" ")
        if method.translate(None, _METHOD_CHARS) or (sep and not method):
            raise HttpError(400, "client sent invalid method")
        if not sep:
            return
        if partial.endswith(b"\r"):  # only the LF is missing: the line is what it will be
            self._request_line_(partial[:-1])
            self._reset_head()  # parsed again, with its headers, once the LF comes
            return
        if b"\r" in partial:
            raise HttpError(400, "client sent invalid request")
        parts = [p for p in rest.split(b" ") if p]
        if not parts:
            return
        if len(parts) > 2:
            raise HttpError(400, "client sent invalid request")
        _check_target(
            parts[0],
            complete=len(parts) > 1 or rest.endswith(b" "),
            connect=method == b"CONNECT",
        )
        if len(parts) == 2:
            _scan_version(parts[1])

    def _header_line(self, line: bytes) -> None:
        colon = line.find(b":")
        if colon <= 0 or b"\r" in line:
            raise HttpError(400, f'client sent invalid header line: "{_printable(line)}"')
        name = line[:colon]
        lim = self.limits
        invalid = bool(
            name.translate(None, _NAME_CHARS_UNDERSCORE if lim.underscores else _NAME_CHARS)
        )
        if invalid:  # ngx_http_parse_header_line's r->invalid_header
            if has_ctl_or_space(name):
                raise HttpError(400, f'client sent invalid header line: "{_printable(line)}"')
            if lim.ignore_invalid:
                # ngx_http_process_request_headers: skipped, logged at INFO, not counted.
                self._ignored.append(line.rstrip(b" \t").decode("latin-1"))
                return
        lname = name.lower()
        renamed = _RENAMED.get(lname)
        shown = _KEPT_INVALID if invalid else renamed
        assert self._llhttp is not None
        try:
            self._llhttp.feed_data((shown + line[colon:] if shown else line) + b"\r\n")
        except httptools.HttpParserError as exc:
            raise HttpError(400, f'client sent invalid header line: "{_printable(line)}"') from exc
        if len(self._headers) >= self.limits.max_headers:
            raise HttpError(494, "client sent too many header lines")
        value = line[colon + 1 :].strip(b" \t")
        if lname == b"host":
            if self._host_raw is not None:
                raise HttpError(
                    400,
                    f'client sent duplicate host header: "{_printable(line)}", previous value: '
                    f'"Host: {_printable(self._host_raw)}"',
                )
            self._host_raw = value
            if normalize_host(value) is None:
                raise HttpError(400, "client sent invalid host header")
        elif renamed is not None:
            prev = self._cl_raw if lname == b"content-length" else self._te_raw
            if prev is not None:
                raise HttpError(
                    400,
                    f'client sent duplicate header line: "{_printable(line)}", previous value: '
                    f'"{name.decode("latin-1")}: {_printable(prev)}"',
                )
            if lname == b"content-length":
                self._cl_raw = value
            else:
                self._te_raw = value
        elif lname in _UNIQUE:
            prev_line = self._unique.get(lname)
            if prev_line is not None:
                raise HttpError(
                    400,
                    f'client sent duplicate header line: "{_printable(line)}", previous value: '
                    f'"{_printable(prev_line)}"',
                )
            self._unique[lname] = name + b": " + value
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def _finish_head(self) -> RequestHead:
        if self._llhttp is not None:
            try:
                self._llhttp.feed_data(b"\r\n")
            except httptools.HttpParserUpgrade:
                pass  # llhttp's Connection: upgrade handling; the proxy decides on the 101
            except httptools.HttpParserError as exc:
                raise HttpError(400, "client sent invalid request") from exc
        version = self._version
        http11 = version > (1, 0)
        host = self._abs_host
        if self._host_raw is not None:
            if host is None:
                host = normalize_host(self._host_raw)
        elif http11:
            raise HttpError(400, 'client sent HTTP/1.1 request without "Host" header')

        content_length: int | None = None
        if self._cl_raw is not None:
            raw = self._cl_raw
            if not raw or not raw.isdigit() or not raw.isascii() or int(raw) > _MAX_OFF_T:
                raise HttpError(400, 'client sent invalid "Content-Length" header')
            content_length = int(raw)
        chunked = False
        if self._te_raw is not None:
            if not http11:
                raise HttpError(400, 'client sent HTTP/1.0 request with "Transfer-Encoding" header')
            if self._te_raw.lower() != b"chunked":
                raise HttpError(
                    501, f'client sent unknown "Transfer-Encoding": "{_printable(self._te_raw)}"'
                )
            if content_length is not None:
                raise HttpError(
                    400,
                    'client sent "Content-Length" and "Transfer-Encoding" headers at the same time',
                )
            chunked = True

        # ngx_http_process_connection / ngx_http_handler: substring match, last line wins.
        conn_type = 0
        upgrade: str | None = None
        expect: str | None = None
        for n, v in self._headers:
            ln = n.lower()
            if ln == "connection":
                lv = v.lower()
                if "close" in lv:
                    conn_type = 1
                elif "keep-alive" in lv:
                    conn_type = 2
            elif ln == "upgrade" and upgrade is None:
                upgrade = v
            elif ln == "expect" and expect is None:
                expect = v
        keep_alive = http11 if conn_type == 0 else conn_type == 2
        if version < (1, 0):
            keep_alive = False

        if self._method == "CONNECT":
            raise HttpError(405, "client sent CONNECT method")
        if self._method == "TRACE":
            raise HttpError(405, "client sent TRACE method")

        head = RequestHead(
            method=self._method,
            target=self._target.decode("latin-1"),
            version=f"{version[0]}.{version[1]}",
            headers=self._headers,
            keep_alive=keep_alive,
            content_length=content_length,
            chunked=chunked,
            upgrade=upgrade,
            host=host,
            request_line=self._request_line.decode("latin-1"),
            head_size=self._scan,
            expect_continue=http11 and expect is not None and expect.lower() == "100-continue",
            ignored_headers=self._ignored,
        )
        del self._buf[: self._scan]
        self._llhttp = None
        return head
