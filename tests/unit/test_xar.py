"""X-Accel-Redirect's pure half (:mod:`wsgate.http.xar`): the field's value parsed as
``ngx_http_parse_unsafe_uri`` does, the fields kept, and the redirect the phases make."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_phases import Worker, conf, request
from wsgate.errors import HttpError
from wsgate.http import phases
from wsgate.http.errorpages import ERROR_HANDLERS
from wsgate.http.phases import Content, Plain
from wsgate.http.xar import (
    AccelRedirect,
    Target,
    carried_fields,
    parse_unsafe_uri,
    target,
    with_kept,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/index.html", ("/index.html", "")),
        ("/foo?bar", ("/foo", "bar")),
        ("/foo?a=/../b", ("/foo", "a=/../b")),  # the arguments are not checked
        ("/foo%20bar", ("/foo bar", "")),
        ("/a/..b/c", ("/a/..b/c", "")),
        ("/a/.b", ("/a/.b", "")),
        ("/%zz", ("/%zz", "")),  # not an escape: kept
        ("", None),
        ("?x", None),
        ("..", None),
        ("../foo", None),
        ("/foo/..", None),
        ("/foo/../bar", None),
        ("/foo/.%2e", None),  # unsafe once unescaped
        ("/foo/%2e%2e/x", None),
        ("/a\0b", None),
        ("/a%00b", None),
    ],
)
def test_parse_unsafe_uri(value: str, expected: tuple[str, str] | None) -> None:
    assert parse_unsafe_uri(value) == expected


def test_target() -> None:
    assert target("@named") == Target("@named", name="@named")
    assert target("/x?y=1") == Target("/x?y=1", uri="/x", args="y=1")
    assert target("/../x") == Target("/../x")


def test_carried_fields() -> None:
    headers = [
        ("Content-Type", "text/blah"),
        ("Set-Cookie", "a=b"),
        ("Something", "other"),
        ("X-Accel-Redirect", "/x"),
        ("content-disposition", "attachment"),
        ("Cache-Control", "no-cache"),
        ("Expires", "fake"),
        ("Accept-Ranges", "parrots"),
        ("Set-Cookie", "c=d"),
        ("Content-Length", "0"),
    ]
    assert carried_fields(headers) == (
        ("Content-Type", "text/blah"),
        ("Set-Cookie", "a=b"),
        ("content-disposition", "attachment"),
        ("Cache-Control", "no-cache"),
        ("Expires", "fake"),
        ("Accept-Ranges", "parrots"),
        ("Set-Cookie", "c=d"),
    )


CONF = """
server {
    listen 8080;
    location / { proxy_pass http://127.0.0.1:9; }
    location /files/ { return 200 "file $uri $args $request_method"; }
    location @named { return 200 "named $uri"; }
}
"""


def _redirected(tmp_path: Path, value: str, method: str = "GET") -> Plain:
    r = request(conf(tmp_path, CONF), Worker(), "/app?q=1", method)
    decision, index = phases.run(r, errors=ERROR_HANDLERS)
    assert decision is Content.PROXY
    decision, _ = phases.run(r, index, error=AccelRedirect(target(value)), errors=ERROR_HANDLERS)
    assert isinstance(decision, Plain)
    assert r.internal
    return decision


def test_redirect_to_uri_becomes_get(tmp_path: Path) -> None:
    page = _redirected(tmp_path, "/files/a%20b?x=2", "POST")
    assert page.body == b"file /files/a b x=2 GET"


def test_redirect_keeps_head(tmp_path: Path) -> None:
    page = _redirected(tmp_path, "/files/a", "HEAD")
    assert page.body == b"file /files/a  HEAD"


def test_redirect_to_named_location_keeps_uri(tmp_path: Path) -> None:
    assert _redirected(tmp_path, "@named").body == b"named /app"


def test_unsafe_is_404(tmp_path: Path) -> None:
    r = request(conf(tmp_path, CONF), Worker(), "/app")
    _, index = phases.run(r, errors=ERROR_HANDLERS)
    with pytest.raises(HttpError) as info:
        phases.run(r, index, error=AccelRedirect(target("/a/../b")), errors=ERROR_HANDLERS)
    assert info.value.status == 404


def test_with_kept_replaces_content_type_and_accept_ranges() -> None:
    kept = (("Content-Type", "text/blah"), ("Set-Cookie", "a=b"), ("Accept-Ranges", "parrots"))
    own = [("Content-Type", "text/plain"), ("Accept-Ranges", "bytes"), ("ETag", '"1"')]
    assert with_kept(kept, own) == [*kept, ("ETag", '"1"')]
    assert with_kept((("Set-Cookie", "a=b"),), own) == [("Set-Cookie", "a=b"), *own]
