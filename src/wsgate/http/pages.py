"""Byte-exact nginx error responses (``src/http/ngx_http_special_response.c``, nginx 1.22.1).

The body is nginx's built-in page with ``wsgate/0.1.0`` (or ``wsgate`` with ``server_tokens off``)
where nginx writes ``nginx/1.22.1``; status lines come from ``ngx_http_status_lines[]`` in
``src/http/ngx_http_header_filter_module.c``.  Code 494 ("request header too large") is logged as
494 but sent as ``400 Bad Request`` with its own title and an extra line, like 495-497.  Clients
whose User-Agent looks like MSIE or Chrome get six padding comment lines on pages >= 400, so the
browser shows the page instead of its own "friendly" one (nginx ``msie_padding on``,
https://nginx.org/en/docs/http/ngx_http_core_module.html#msie_padding).
"""

from __future__ import annotations

from collections.abc import Iterable

from wsgate import NAME, SERVER_TOKEN
from wsgate.http.headers import encode_chunk, last_chunk

__all__ = [
    "CLOSING_STATUSES",
    "STATUS_LINES",
    "closes_connection",
    "error_page_body",
    "error_response",
    "status_line",
    "wants_padding",
]

#: ``ngx_http_status_lines[]`` (1.22.1): the reason nginx writes for statuses it generates.
STATUS_LINES: dict[int, str] = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    206: "Partial Content",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    303: "See Other",
    304: "Not Modified",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Not Allowed",
    406: "Not Acceptable",
    408: "Request Time-out",
    409: "Conflict",
    410: "Gone",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Large",
    415: "Unsupported Media Type",
    416: "Requested Range Not Satisfiable",
    421: "Misdirected Request",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
    505: "HTTP Version Not Supported",
    507: "Insufficient Storage",
}

# Page titles where they differ from the status line (``ngx_http_error_*_page``).
_PAGE_TITLES: dict[int, str] = {
    302: "302 Found",
    401: "401 Authorization Required",
    494: "400 Request Header Or Cookie Too Large",
    495: "400 The SSL certificate error",
    496: "400 No required SSL certificate was sent",
    497: "400 The plain HTTP request was sent to HTTPS port",
}
_PAGES = frozenset(
    {301, 302, 303, 307, 308}
    | {400, 401, 402, 403, 404, 405, 406, 408, 409, 410, 411, 412, 413, 414, 415, 416, 421, 429}
    | {494, 495, 496, 497, 498}
    | {500, 501, 502, 503, 504, 505, 507}
)
_SENT_AS = {494: 400, 495: 400, 496: 400, 497: 400, 498: 404}

#: ``ngx_http_special_response_handler`` turns keep-alive off after these (494 happens only while
#: the head is read, when keep-alive is not on yet, so it closes too).
CLOSING_STATUSES = frozenset({400, 413, 414, 494, 495, 496, 497, 500, 501})

_PADDING = b"<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n" * 6


def closes_connection(status: int) -> bool:
    """True if nginx closes the client connection after sending this error page.

    Errors raised while the request head is still being read (everything
    :class:`~wsgate.http.request.RequestParser` raises, e.g. 505) close the connection as well,
    because keep-alive is not decided yet; pass ``keep_alive=False`` for those.
    """
    return status in CLOSING_STATUSES


def status_line(status: int) -> str:
    """``"404 Not Found"``; statuses nginx has no text for give ``"NNN "`` (nginx's ``%03ui ``)."""
    sent = _SENT_AS.get(status, status)
    text = STATUS_LINES.get(sent)
    return f"{sent} {text}" if text else f"{sent:03d} "


def wants_padding(user_agent: str | None) -> bool:
    """nginx ``ngx_http_user_agent``: MSIE (not Opera), or Chrome (not Gecko/)."""
    if not user_agent:
        return False
    msie = user_agent.find("MSIE ")
    is_msie = msie >= 0 and msie + 7 < len(user_agent)
    if "Opera" in user_agent:
        return False
    if is_msie:
        return True
    return "Gecko/" not in user_agent and "Chrome/" in user_agent


def error_page_body(status: int, *, token: str = SERVER_TOKEN, padding: bool = False) -> bytes:
    """The HTML page for ``status`` with ``token`` in the footer; b"" if nginx has none."""
    if status not in _PAGES:
        return b""
    if status == 498:  # nginx serves its 404 page for 498
        status = 404
    sent = _SENT_AS.get(status, status)
    title = _PAGE_TITLES.get(status, f"{sent} {STATUS_LINES[sent]}")
    heading = f"{sent} {STATUS_LINES[sent]}" if status in _SENT_AS else title
    parts = [
        "<html>\r\n",
        f"<head><title>{title}</title></head>\r\n",
        "<body>\r\n",
        f"<center><h1>{heading}</h1></center>\r\n",
    ]
    if status in _SENT_AS:
        parts.append(f"<center>{title[4:]}</center>\r\n")
    parts.append(f"<hr><center>{token}</center>\r\n</body>\r\n</html>\r\n")
    body = "".join(parts).encode("latin-1")
    if padding and sent >= 400:
        body += _PADDING
    return body


def error_response(
    status: int,
    *,
    server_tokens: bool = True,
    user_agent: str | None = None,
    keep_alive: bool,
    date: str,
    location: str | None = None,
    keepalive_header: float | None = None,
    head_only: bool = False,
    added: Iterable[tuple[str, str]] = (),
    trailer: Iterable[tuple[str, str]] | None = None,
    msie_padding: bool = True,
) -> bytes:
    """The whole response (head and body) nginx sends for an error or redirect ``status``.

    ``keep_alive`` is the caller's decision: the client allows it and
    ``not closes_connection(status)``.  ``location`` (absolute URL) is written where nginx writes
    its own redirects, after Content-Length.  ``head_only`` for HEAD requests: same head, no body.
    ``added`` (``add_header``'s) come last, after Connection, as nginx's header filter writes
    the fields of ``headers_out.headers`` after its own.  With a ``trailer`` (``add_trailer``,
    for an HTTP/1.1 client) the body is one chunk and the trailer follows it, as nginx's
    chunked filter sends it (no ``Content-Length``).  ``msie_padding`` off: no padding.
    """
    token = SERVER_TOKEN if server_tokens else NAME
    padding = msie_padding and wants_padding(user_agent)
    body = error_page_body(status, token=token, padding=padding)
    lines = [
        f"HTTP/1.1 {status_line(status)}\r\n",
        f"Server: {token}\r\n",
        f"Date: {date}\r\n",
    ]
    if body:
        lines.append("Content-Type: text/html\r\n")
    if status >= 200 and status not in (204, 304) and trailer is None:
        lines.append(f"Content-Length: {len(body)}\r\n")
    if location is not None and status in (301, 302, 303, 307, 308):
        lines.append(f"Location: {location}\r\n")
    if trailer is not None:
        lines.append("Transfer-Encoding: chunked\r\n")
        body = encode_chunk(body) + last_chunk(trailer)
    if keep_alive:
        lines.append("Connection: keep-alive\r\n")
        if keepalive_header is not None:
            lines.append(f"Keep-Alive: timeout={int(keepalive_header)}\r\n")
    else:
        lines.append("Connection: close\r\n")
    for name, value in added:
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    head = "".join(lines).encode("latin-1")
    return head if head_only else head + body
