"""How a relayed response is framed for the client (:mod:`wsgate.http.framing`)."""

from __future__ import annotations

from wsgate.http.body import BodyFraming
from wsgate.http.framing import ClientFraming, client_framing


def test_content_length_is_kept() -> None:
    assert client_framing("GET", "1.1", 200, 5, True) == ClientFraming(
        BodyFraming.content_length(5), chunked=False, no_body=False, keep_alive=True
    )
    assert client_framing("GET", "1.0", 200, 5, False).keep_alive is False


def test_unknown_length_chunked_for_http11() -> None:
    plan = client_framing("GET", "1.1", 200, None, True)
    assert plan.framing == BodyFraming.chunked() and plan.chunked and plan.keep_alive


def test_unknown_length_close_delimited_for_http10() -> None:
    """HTTP/1.0 has no chunked coding: the body ends with the connection."""
    plan = client_framing("GET", "1.0", 200, None, True)
    assert plan.framing == BodyFraming.none() and not plan.chunked and not plan.keep_alive


def test_no_body() -> None:
    head = client_framing("HEAD", "1.1", 200, 42, True)
    assert head.no_body and head.framing == BodyFraming.content_length(42) and head.keep_alive
    assert client_framing("HEAD", "1.1", 200, None, True).framing == BodyFraming.none()
    assert client_framing("GET", "1.1", 304, 42, True).framing == BodyFraming.content_length(42)
    no_content = client_framing("GET", "1.1", 204, 42, True)
    assert no_content.no_body and no_content.framing == BodyFraming.none()
    assert client_framing("GET", "1.0", 204, None, True).keep_alive  # no body, no close
