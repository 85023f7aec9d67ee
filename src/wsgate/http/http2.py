"""HTTP/2 requests and responses as the HTTP/1.1 pipeline sees them (pure: no sockets).

The asyncio side (:mod:`wsgate.proxy.http2`) hands each stream's header list to
:func:`request_head`, which makes the :class:`~wsgate.http.request.RequestHead` the phases
already know, with nginx's rules for HTTP/2 (``ngx_http_v2_state_process_header``,
``ngx_http_v2_run_request``, ``ngx_http_v2_construct_request_line``,
``ngx_http_v2_construct_cookie_header``, nginx 1.31):

- ``:authority`` is the host (``Host`` too, when it is absent: "compatibility for
  $http_host"); both with different values is 400;
- the ``cookie`` crumbs (RFC 9113 §8.2.3) are joined with ``"; "``;
- ``Connection``, ``Keep-Alive``, ``Transfer-Encoding``, ``Upgrade`` and a ``TE`` other than
  ``trailers`` are 400 ("client sent \\"Upgrade\\" header": since nginx 1.31 an HTTP/1.1
  upgrade is refused on HTTP/2 too); CONNECT and TRACE are 405;
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

from collections.abc import Iterable

from wsgate.errors import HttpError
from wsgate.http.request import RequestHead, normalize_host

__all__ = ["HOP_BY_HOP", "H2Refused", "request_head", "response_fields"]

#: Response fields HTTP/2 forbids (RFC 9113 §8.2.2): connection-specific ones.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)
#: Request fields nginx refuses on a stream (``ngx_http_v2_run_request``).
_REFUSED = ("connection", "keep-alive", "transfer-encoding", "upgrade")
_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})


class H2Refused(HttpError):
    """A stream's request nginx refuses: the error answers it, the head is still usable for
    the error page (its server, its variables)."""

    def __init__(self, status: int, log: str, head: RequestHead) -> None:
        super().__init__(status, log)
        self.head = head


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")


def request_head(fields: Iterable[tuple[bytes, bytes]], end_stream: bool) -> RequestHead:
    """The request of one stream's HEADERS (h2 has checked the pseudo-header rules of RFC 9113
    §8.3: each once, before the regular fields, ``:method``, ``:scheme`` and ``:path``
    present).  Raises :class:`H2Refused` with nginx's status and log line, or a bare
    :class:`~wsgate.errors.HttpError` 400 when not even a head can be made."""
    method = path = authority = None
    headers: list[tuple[str, str]] = []
    cookies: list[str] = []
    size = 0
    for name, value in fields:
        size += len(name) + len(value)
        if name in _PSEUDO:
            if name == b":method":
                method = _text(value)
            elif name == b":path":
                path = _text(value)
            elif name == b":authority":
                authority = _text(value)
            continue
        if name.startswith(b":"):
            raise HttpError(400, f'client sent unknown pseudo-header "{_text(name)}"')
        if name == b"cookie":
            cookies.append(_text(value))
            continue
        # RFC 9113 §8.2.1: names are lowercase on the wire; nginx keeps them as sent.
        headers.append((_text(name), _text(value)))
    if cookies:
        headers.append(("cookie", "; ".join(cookies)))
    if not method or path is None:
        raise HttpError(400, "client sent no :method or :path")
    if not path or (path[0] != "/" and not (path == "*" and method == "OPTIONS")):
        raise HttpError(400, f'client sent invalid :path header: "{path}"')
    host_field = next((v for k, v in headers if k.lower() == "host"), None)
    raw_host = authority if authority is not None else host_field
    host = normalize_host(raw_host) if raw_host else None
    if authority is not None and host_field is None:
        headers.insert(0, ("host", authority))
    length_text = next((v for k, v in headers if k.lower() == "content-length"), None)
    content_length: int | None = None
    if length_text is not None and length_text.isascii() and length_text.isdigit():
        content_length = int(length_text)
    head = RequestHead(
        method=method,
        target=path,
        version="1.1",
        headers=headers,
        keep_alive=True,
        content_length=content_length,
        chunked=content_length is None and not end_stream,
        upgrade=None,
        host=host,
        request_line=f"{method} {path} HTTP/2.0",
        head_size=size,
    )
    names = {k.lower(): v for k, v in headers}
    for refused in _REFUSED:
        if refused in names:
            shown = "Keep-Alive" if refused == "keep-alive" else refused.title()
            raise H2Refused(400, f'client sent "{shown}" header', head)
    te = [v for k, v in headers if k.lower() == "te"]
    if te and (len(te) > 1 or te[0].lower() != "trailers"):
        raise H2Refused(400, 'client sent invalid "TE" header', head)
    if raw_host is None:
        raise H2Refused(400, 'client sent neither ":authority" nor "Host" header', head)
    if host is None:
        raise H2Refused(400, "client sent invalid host header", head)
    if authority is not None and host_field is not None and host_field != authority:
        raise H2Refused(
            400, 'client sent ":authority" and "Host" headers with different values', head
        )
    if length_text is not None and content_length is None:
        raise H2Refused(400, 'client sent invalid "Content-Length" header', head)
    if content_length and end_stream:
        raise H2Refused(400, "client prematurely closed stream", head)
    if method in ("CONNECT", "TRACE"):
        raise H2Refused(405, f"client sent {method} method", head)
    return head


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
