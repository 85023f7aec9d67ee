"""Static files, the file-system side (:mod:`wsgate.content.files`) on a temporary
directory, through configurations the loader reads: try_files, index, autoindex, the static
handler's statuses and log lines, disable_symlinks, and ``include mime.types``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wsgate.config.loader import load
from wsgate.config.model import LocationSettings
from wsgate.config.parse import SHIPPED_MIME_TYPES
from wsgate.config.variables import RequestContext
from wsgate.content import files
from wsgate.errors import ConfigError, HttpError
from wsgate.http.static import FileResponse
from wsgate.routing import find_location


@pytest.fixture
def site(tmp_path: Path) -> Path:
    html = tmp_path / "html"
    (html / "dir").mkdir(parents=True)
    (html / "index.html").write_text("index")
    (html / "a.txt").write_text("0123456789")
    (html / "dir" / "x.css").write_text("x")
    (tmp_path / "outside.txt").write_text("secret")
    return tmp_path


def settings_for(prefix: Path, body: str, uri: str) -> tuple[LocationSettings, RequestContext]:
    (prefix / "nginx.conf").write_text(f"events {{}}\nhttp {{\n{body}\n}}\n")
    config = load("nginx.conf", prefix=str(prefix))
    server = config.http.servers[0]
    location, captures = find_location(server, uri)
    settings = location.settings if location is not None else server.settings
    ctx = RequestContext()
    ctx.uri, ctx.root, ctx.method = uri, settings.root, "GET"
    ctx.captures = ("", *captures) if captures else ()  # as find_config sets them
    return settings, ctx


def serve(prefix: Path, body: str, uri: str, method: str = "GET", **headers: str) -> object:
    settings, ctx = settings_for(prefix, body, uri)
    ctx.headers = [(k.replace("_", "-"), v) for k, v in headers.items()]
    logs: list[str] = []
    serve.logs = logs  # type: ignore[attr-defined]
    got = files.serve(settings, ctx, method, lambda level, msg: logs.append(f"[{level}] {msg}"))
    if isinstance(got, FileResponse):
        os.close(got.fd)
    return got


def status(prefix: Path, body: str, uri: str, method: str = "GET") -> int:
    with pytest.raises(HttpError) as info:
        serve(prefix, body, uri, method)
    return info.value.status


SERVER = "server { listen 127.0.0.1:1; %s }"


def test_directory_redirect_escapes_its_uri(site: Path) -> None:
    """ngx_http_static_handler escapes the URI (NGX_ESCAPE_URI) in the 301's Location
    (http_absolute_redirect.t "directory escaped")."""
    (site / "html" / "dir sp?#").mkdir()
    conf = SERVER % "location / { }"
    assert serve(site, conf, "/dir sp?#") == files.Moved("/dir%20sp%3F%23/")
    (site / "html" / "d\u00e9").mkdir()
    assert serve(site, conf, "/d\u00e9") == files.Moved("/d%C3%A9/")


def test_file_index_directory_and_errors(site: Path) -> None:
    conf = SERVER % "location / { }"
    got = serve(site, conf, "/a.txt")
    assert isinstance(got, FileResponse) and got.status == 200 and got.length == 10
    assert dict(got.headers)["Content-Type"] == "text/plain"
    assert dict(got.headers)["Accept-Ranges"] == "bytes"
    assert serve(site, conf, "/") == files.Internal("/index.html")
    assert serve(site, conf, "/dir") == files.Moved("/dir/")
    assert status(site, conf, "/dir/") == 403  # no index, no autoindex
    assert status(site, conf, "/missing") == 404
    assert serve.logs == [  # type: ignore[attr-defined]
        f'[error] open() "{site}/html/missing" failed (2: No such file or directory)'
    ]
    assert status(site, conf, "/a.txt", "POST") == 405
    assert status(site, conf, "/a.txt", "DELETE") == 405
    assert status(site, conf, "/a.txt/") == 404  # not a directory
    assert status(site, conf, "/nodir/") == 404


def test_log_not_found_off(site: Path) -> None:
    assert status(site, SERVER % "location / { log_not_found off; }", "/missing") == 404
    assert serve.logs == []  # type: ignore[attr-defined]


def test_index_names_variables_and_absolute(site: Path) -> None:
    conf = SERVER % (
        "location / { index none.html a.txt; }"
        "location /abs/ { alias html/; index none.html /index.html; }"
        "location /var/ { alias html/; index $arg_f; }"
    )
    assert serve(site, conf, "/") == files.Internal("/a.txt")
    assert serve(site, conf, "/abs/") == files.Internal("/index.html")
    settings, ctx = settings_for(site, conf, "/var/")
    ctx.args = "f=index.html"
    assert files.serve(settings, ctx, "GET", lambda *a: None) == files.Internal("/var/index.html")


def test_try_files(site: Path) -> None:
    conf = SERVER % (
        "location / { try_files $uri $uri/ /fallback?x=1; }"
        "location /code/ { try_files /nothing =418; }"
        "location ~ ^/re/(.*)$ { alias html/dir/$1; try_files $uri =404; }"
    )
    settings, ctx = settings_for(site, conf, "/a.txt")
    assert files.try_files(settings, ctx) is None and ctx.uri == "/a.txt"
    settings, ctx = settings_for(site, conf, "/dir")
    assert files.try_files(settings, ctx) is None and ctx.uri == "/dir"
    settings, ctx = settings_for(site, conf, "/nothing")
    assert files.try_files(settings, ctx) == files.Internal("/fallback") and ctx.args == "x=1"
    settings, ctx = settings_for(site, conf, "/code/x")
    assert files.try_files(settings, ctx) == 418


def test_alias_in_regex_location(site: Path) -> None:
    conf = SERVER % "location ~ ^/img/(.+)$ { alias html/dir/$1; }"
    got = serve(site, conf, "/img/x.css")
    assert isinstance(got, FileResponse) and got.path == f"{site}/html/dir/x.css"


def test_a_name_never_climbs_out_of_its_alias(site: Path) -> None:
    """A ``..`` that the URI or a capture glues onto an alias (the alias without its
    trailing slash; a capture after a partial segment) is 403, where nginx opens it; a
    ``..`` that stays inside, a ``try_files`` candidate and an index are held the same."""
    conf = SERVER % (
        "location /al { alias html/; }"
        "location ~ ^/rx(.*)$ { alias html/dir/$1; }"
        "location /tf { alias html/; try_files $uri =404; }"
        "location /ix { alias html/; index ../outside.txt; }"
    )
    for uri in ("/al../outside.txt", "/rx../a.txt"):
        assert status(site, conf, uri) == 403, uri
        assert serve.logs == []  # type: ignore[attr-defined]
    with pytest.raises(HttpError) as info:
        serve(site, conf, "/al../outside.txt")
    assert info.value.log == (
        f'open() "{site}/html/../outside.txt" failed (13: the name leaves "{site}/html")'
    )
    got = serve(site, conf, "/rxx.css")
    assert isinstance(got, FileResponse) and got.path == f"{site}/html/dir/x.css"
    got = serve(site, conf, "/al/dir/x.css")
    assert isinstance(got, FileResponse)
    settings, ctx = settings_for(site, conf, "/tf../outside.txt")
    assert files.try_files(settings, ctx) == 404  # not found, never tried outside
    assert status(site, conf, "/ix/") == 403


def test_autoindex_lists_without_dot_files(site: Path) -> None:
    (site / "html" / "dir" / ".hidden").write_text("")
    conf = SERVER % "location / { autoindex on; autoindex_format json; }"
    got = serve(site, conf, "/dir/")
    assert isinstance(got, files.Listing) and got.content_type == "application/json"
    assert b'"name":"x.css"' in got.body and b"hidden" not in got.body


def test_ranges_and_conditions(site: Path) -> None:
    conf = SERVER % "location / { }"
    got = serve(site, conf, "/a.txt", Range="bytes=2-4")
    assert isinstance(got, FileResponse) and got.status == 206 and got.parts == [(2, 3)]
    assert dict(got.headers)["Content-Range"] == "bytes 2-4/10"
    with pytest.raises(HttpError) as info:
        serve(site, conf, "/a.txt", Range="bytes=20-")
    assert info.value.status == 416 and info.value.headers == (("Content-Range", "bytes */10"),)
    first = serve(site, conf, "/a.txt")
    assert isinstance(first, FileResponse)
    etag = dict(first.headers)["ETag"]
    again = serve(site, conf, "/a.txt", If_None_Match=etag)
    assert isinstance(again, FileResponse) and again.status == 304 and again.parts == []
    with pytest.raises(HttpError) as info:
        serve(site, conf, "/a.txt", If_Match='"nope"')
    assert info.value.status == 412


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_disable_symlinks(site: Path) -> None:
    os.symlink(site / "outside.txt", site / "html" / "link.txt")
    os.symlink(site / "html" / "dir", site / "html" / "dirlink")
    conf = SERVER % (
        "location / { disable_symlinks on; }"
        "location /off/ { alias html/; }"
        "location /owner/ { alias html/; disable_symlinks if_not_owner; }"
        "location /from/ { alias html/; disable_symlinks on from=$document_root; }"
    )
    assert status(site, conf, "/link.txt") == 403
    assert status(site, conf, "/dirlink/x.css") == 403
    listing = SERVER % "location / { disable_symlinks on; autoindex on; }"
    assert status(site, listing, "/dirlink/") == 403
    assert isinstance(serve(site, conf, "/off/link.txt"), FileResponse)
    assert isinstance(serve(site, conf, "/owner/link.txt"), FileResponse)  # one owner
    os.lchown(site / "html" / "link.txt", 12345, 12345)
    assert status(site, conf, "/owner/link.txt") == 403
    assert status(site, conf, "/from/link.txt") == 403
    # from=: the part of the path before it may be a link.
    os.symlink(site / "html", site / "htmllink")
    conf2 = SERVER % "location / { root htmllink; disable_symlinks on from=$document_root; }"
    assert isinstance(serve(site, conf2, "/a.txt"), FileResponse)
    conf3 = SERVER % "location / { root htmllink; disable_symlinks on; }"
    assert status(site, conf3, "/a.txt") == 403


def test_include_mime_types_falls_back_to_the_shipped_copy(tmp_path: Path) -> None:
    settings, _ = settings_for(tmp_path, "include mime.types; " + SERVER % "", "/")
    assert settings.types is not None and settings.types.by_ext["css"] == "text/css"
    assert settings.types.by_ext["js"] == "application/javascript"
    assert os.path.exists(SHIPPED_MIME_TYPES)
    (tmp_path / "mime.types").write_text("types { text/x-own css; }\n")
    settings, _ = settings_for(tmp_path, "include mime.types; " + SERVER % "", "/")
    assert settings.types is not None and settings.types.by_ext == {"css": "text/x-own"}


def test_missing_include_is_nginx_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'open\(\) ".*/other.types" failed \(2: No such file'):
        settings_for(tmp_path, "include other.types; " + SERVER % "", "/")


def test_variables(site: Path) -> None:
    conf = SERVER % "location /x/ { alias html/dir/; }"
    _, ctx = settings_for(site, conf, "/x/x.css")
    assert ctx.lookup("document_root") == f"{site}/html/dir/"
    assert ctx.lookup("request_filename") == f"{site}/html/dir/x.css"
    assert ctx.lookup("realpath_root") == f"{site}/html/dir"


def test_root_directive_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='"alias" directive is duplicate'):
        settings_for(tmp_path, SERVER % "location / { root /a; alias /b; }", "/")
    with pytest.raises(ConfigError, match=r'"alias" directive cannot be used inside the named'):
        settings_for(tmp_path, SERVER % "location @x { alias /b; }", "/")
