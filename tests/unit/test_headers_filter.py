"""``add_header`` (nginx's headers filter) as a pure function: statuses, ``always``, empty
values, variables, and the names nginx replaces instead of adding."""

from __future__ import annotations

import pytest

from wsgate.config.model import AddHeader
from wsgate.config.template import compile_template
from wsgate.http.body import BodyFraming
from wsgate.http.headers import build_client_response_head, hidden_fields, visible_fields
from wsgate.http.headers_filter import SAFE_STATUSES, add_headers
from wsgate.http.pages import error_response


def h(name: str, value: str, always: bool = False) -> AddHeader:
    return AddHeader(name, compile_template(value), always)


def lookup(name: str) -> str:
    return {"uri": "/x", "empty": ""}.get(name, "")


def test_nginx_status_list() -> None:
    assert SAFE_STATUSES == {200, 201, 204, 206, 301, 302, 303, 304, 307, 308}


@pytest.mark.parametrize("status", [101, 400, 404, 500, 502, 205, 300])
def test_other_statuses_get_only_always(status: int) -> None:
    entries = (h("X-URI", "$uri"), h("X-Always", "$uri", always=True))
    assert add_headers(status, [], entries, lookup) == ([], [("X-Always", "/x")])


@pytest.mark.parametrize("status", sorted(SAFE_STATUSES))
def test_safe_statuses_get_all(status: int) -> None:
    entries = (h("X-URI", "$uri"), h("X-Always", "a", always=True))
    assert add_headers(status, [], entries, lookup)[1] == [("X-URI", "/x"), ("X-Always", "a")]


def test_empty_value_adds_nothing() -> None:
    entries = (h("X-Empty", ""), h("X-Var", "$empty"), h("X-A", "1"))
    assert add_headers(200, [], entries, lookup)[1] == [("X-A", "1")]


def test_a_name_the_response_has_is_added_again() -> None:
    ups = [("X-A", "0"), ("Cache-Control", "private")]
    entries = (h("X-A", "1"), h("Cache-Control", "no-store"), h("Link", "</a>"))
    got, added = add_headers(200, ups, entries, lookup)
    assert got is ups
    assert added == [("X-A", "1"), ("Cache-Control", "no-store"), ("Link", "</a>")]


def test_etag_and_last_modified_replace_in_place() -> None:
    ups = [("ETag", '"a"'), ("X-B", "b"), ("Last-Modified", "x")]
    entries = (h("etag", "foo"), h("Last-Modified", "Mon, 28 Sep 1970 06:00:00 GMT"))
    got, added = add_headers(200, ups, entries, lookup)
    assert got == [
        ("etag", "foo"),
        ("X-B", "b"),
        ("Last-Modified", "Mon, 28 Sep 1970 06:00:00 GMT"),
    ]
    assert added == [] and ups[0] == ("ETag", '"a"')  # the response's list is not changed


def test_empty_etag_removes_it() -> None:
    # nginx-tests headers.t: "add_header ETag foo always; add_header ETag '' always;"
    entries = (h("ETag", "foo", always=True), h("ETag", "", always=True))
    assert add_headers(404, [], entries, lookup) == ([], [])
    got, added = add_headers(200, [("ETag", "x"), ("X", "y")], (h("ETag", ""),), lookup)
    assert got == [("X", "y")] and added == []


def test_added_fields_come_last() -> None:
    out = build_client_response_head(
        200,
        "OK",
        [("X-Up", "1"), ("Content-Type", "text/plain")],
        server_tokens=True,
        date="D",
        framing=BodyFraming.content_length(0),
        keep_alive=True,
        added=[("Content-Type", "x/y")],
    ).decode()
    lines = out.split("\r\n")
    assert lines[3] == "Content-Type: text/plain"
    assert lines[-4:] == ["X-Up: 1", "Content-Type: x/y", "", ""]
    page = error_response(404, keep_alive=False, date="D", added=[("X-A", "1")]).decode()
    assert "Connection: close\r\nX-A: 1\r\n\r\n<html>" in page


def test_hidden_fields_default_hide_and_pass() -> None:
    default = hidden_fields((), ())
    assert {"date", "server", "x-pad", "x-accel-redirect", "x-accel-charset"} <= default
    assert "x-accel-other" not in default  # nginx's five X-Accel-* names, not the prefix
    got = hidden_fields(("X-Secret",), ("Server", "connection", "X-Pad"))
    assert "x-secret" in got and "server" not in got and "x-pad" not in got
    assert "connection" in got  # hop-by-hop fields are never passed


def test_passed_server_and_date_replace_wsgates_own() -> None:
    ups = [("X-A", "1"), ("Server", "up"), ("Date", "D0")]
    hidden = hidden_fields((), ("Server",))
    out = build_client_response_head(
        200,
        "OK",
        visible_fields(ups, hidden),
        server_tokens=True,
        date="D",
        framing=BodyFraming.content_length(0),
        keep_alive=True,
        hidden=hidden,
    ).decode()
    lines = out.split("\r\n")
    assert lines[1] == "Date: D" and "Server: up" in lines and "Date: D0" not in lines
    assert not any(x.startswith("Server: wsgate") for x in lines)


def test_sent_http_sees_the_fields_added_before_it() -> None:
    """nginx evaluates add_header lines in order into headers_out (http_headers_multi.t
    "multi $sent_http_foo"): a later ``$sent_http_*`` sees the response's fields and the
    earlier lines; ``$sent_http_connection`` stays the request context's."""
    entries = (
        h("Cache-Control", "foo"),
        h("Foo", "a"),
        h("Foo", "b"),
        h("X-Sent-Foo", "$sent_http_foo"),
        h("X-Sent-Type", "$sent_http_content_type"),
        h("X-Conn", "[$sent_http_connection]"),
    )
    _, added = add_headers(200, [("Content-Type", "text/plain")], entries, lookup)
    assert added[3:] == [
        ("X-Sent-Foo", "a, b"),
        ("X-Sent-Type", "text/plain"),
        ("X-Conn", "[]"),
    ]
