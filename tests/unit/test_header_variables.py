"""Variables of repeated header fields, as nginx 1.23+ makes them (http_headers_multi.t,
proxy_upstream_cookie.t)."""

from __future__ import annotations

import pytest

from wsgate.config.variables import RequestContext, request_headers_read

REQUEST = [
    ("Foo", "foo"),
    ("X-Other", "x"),
    ("foo", "bar"),
    ("Cookie", "a=1"),
    ("Cookie", "b=2"),
    ("Content-Type", "foo"),
    ("Content-Type", "bar"),
]
UPSTREAM = [
    ("Bar", "foo"),
    ("Set-Cookie", "foo=1"),
    ("bar", "bar"),
    ("Set-Cookie", "bar = 2; Path=/"),
]


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("http_foo", "foo, bar"),
        ("http_cookie", "a=1; b=2"),
        ("content_type", "foo, bar"),
        ("http_x_other", "x"),
        ("http_missing", ""),
        ("upstream_http_bar", "foo, bar"),
        ("upstream_http_set_cookie", "foo=1, bar = 2; Path=/"),
        ("upstream_cookie_foo", "1"),
        ("upstream_cookie_bar", "2"),
        ("upstream_cookie_bazz", ""),
    ],
)
def test_repeated_fields_are_joined(name: str, want: str) -> None:
    c = RequestContext()
    c.headers, c.upstream_headers = REQUEST, UPSTREAM
    assert c.lookup(name) == want


def test_upstream_cookie_keeps_set_cookie_for_the_variable() -> None:
    names = request_headers_read(["upstream_cookie_foo"])
    assert names is not None and "upstream:set-cookie" in names
