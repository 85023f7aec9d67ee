"""How an upstream's response is framed for the client (pure: values in, a decision out).

nginx re-frames what it relays rather than copying the upstream's framing: a known
``Content-Length`` is kept; otherwise an HTTP/1.1 client gets ``Transfer-Encoding: chunked``
(``ngx_http_chunked_header_filter``) and an HTTP/1.0 one a body delimited by the close of its
connection, which then cannot be kept alive.  No body is sent for ``HEAD``, 204 and 304
(RFC 9110 §6.4.1, https://www.rfc-editor.org/rfc/rfc9110#section-6.4.1), though a
``Content-Length`` the upstream sent for them is passed on (not for 204, which has none).
"""

from __future__ import annotations

from dataclasses import dataclass

from wsgate.http.body import BodyFraming

__all__ = ["ClientFraming", "client_framing"]


@dataclass(frozen=True, slots=True)
class ClientFraming:
    """The client response's framing, whether body bytes are chunk-encoded on the way
    (``chunked``), dropped (``no_body``), and whether the connection may stay open."""

    framing: BodyFraming
    chunked: bool
    no_body: bool
    keep_alive: bool


def client_framing(
    method: str,
    version: str,
    status: int,
    content_length: int | None,
    keep_alive: bool,
    trailers: bool = False,
    chunked: bool = True,
) -> ClientFraming:
    """The framing of a response with ``status`` and the upstream's ``content_length`` to a
    ``method`` request of HTTP ``version``; ``keep_alive`` is what the request allows.
    ``trailers`` (``add_trailer`` applies: nginx's ``r->expect_trailers``) makes an HTTP/1.1
    body chunked even with a known length ("if (r->expect_trailers)
    ngx_http_clear_content_length(r)"), so its trailer can follow.  ``chunked`` is
    ``chunked_transfer_encoding``: off, an HTTP/1.1 body of unknown length is delimited by
    the close of the connection, as for HTTP/1.0."""
    if method == "HEAD" or status in (204, 304):
        framing = (
            BodyFraming.content_length(content_length)
            if content_length is not None and status != 204
            else BodyFraming.none()
        )
        return ClientFraming(framing, False, True, keep_alive)
    http11 = version == "1.1" and chunked
    if content_length is not None and not (trailers and http11):
        return ClientFraming(BodyFraming.content_length(content_length), False, False, keep_alive)
    if http11:
        return ClientFraming(BodyFraming.chunked(), True, False, keep_alive)
    return ClientFraming(BodyFraming.none(), False, False, False)
