"""``error_page``, ``recursive_error_pages``, ``internal`` and named locations: how they
load (nginx's words for bad lines, the all-or-nothing inheritance) and what the phases do
with them (:func:`wsgate.http.phases.error_page`, :func:`internal_redirect`,
:func:`named_location`), without a socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_phases import Worker, conf, request
from wsgate.config.model import ErrorPage
from wsgate.errors import ConfigError, HttpError
from wsgate.http import phases
from wsgate.http.errorpages import ERROR_HANDLERS
from wsgate.http.phases import (
    MAX_URI_CHANGES,
    Content,
    Decision,
    Phase,
    Plain,
    Redirect,
    Request,
    Restart,
    internal_redirect,
    named_location,
    on_error,
)
from wsgate.routing import find_location, find_named_location


def run(
    r: Request, start: int = 0, error: HttpError | None = None, errors: tuple[()] | None = None
) -> tuple[Decision, int]:
    """The walk as the exchange makes it: with ``error_page`` (unless ``errors=()``)."""
    handlers = ERROR_HANDLERS if errors is None else errors
    return phases.run(r, start, error=error, errors=handlers)


def _load_error(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as info:
        conf(tmp_path, body)
    return str(info.value)


# -- loading -----------------------------------------------------------------------------------
def test_error_page_forms(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        """
        server {
            listen 8080;
            error_page 404 /404.html?from=$uri;
            error_page 500 502 =200 /oops?a=1;
            error_page 403 = @fallback;
            error_page 497 https://$host$request_uri;
            error_page 410 =301 http://example.com/gone;
            location / { }
        }
        """,
    )
    pages = {p.status: p for p in config.http.servers[0].settings.error_pages}
    assert pages[404].overwrite == -1 and pages[404].uri.raw == "/404.html?from=$uri"
    assert pages[404].args == ""  # with variables, split when rendered
    assert (pages[500].overwrite, pages[500].uri.raw, pages[500].args) == (200, "/oops", "a=1")
    assert pages[502] == ErrorPage(502, 200, pages[500].uri, "a=1", pages[500].source)
    assert (pages[403].overwrite, pages[403].uri.raw) == (0, "@fallback")
    assert pages[497].overwrite == 400  # nginx sends 497 as 400, error page or not
    assert pages[410].overwrite == 301


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("error_page 200 /x;", 'value "200" must be between 300 and 599'),
        ("error_page 600 /x;", 'value "600" must be between 300 and 599'),
        ("error_page 499 /x;", 'invalid value "499"'),
        ("error_page abc /x;", 'invalid value "abc"'),
        ("error_page =200 /x;", 'invalid value "=200"'),
        ("error_page 404 =2x /x;", 'invalid value "=2x"'),
        ("error_page 404;", 'invalid number of arguments in "error_page" directive'),
        ("recursive_error_pages maybe;", 'it must be "on" or "off"'),
    ],
)
def test_error_page_bad_lines(tmp_path: Path, line: str, words: str) -> None:
    assert words in _load_error(tmp_path, f"server {{ listen 8080; {line} }}")


def test_error_page_all_or_nothing(tmp_path: Path) -> None:
    """A level with any ``error_page`` replaces the outer level's whole list."""
    config = conf(
        tmp_path,
        """
        error_page 404 /a;
        error_page 500 /b;
        server {
            listen 8080;
            location /in { }
            location /own { error_page 502 /c; location /own/deeper { } }
        }
        """,
    )
    server = config.http.servers[0]
    assert [p.status for p in server.settings.error_pages] == [404, 500]
    inherit, own = server.locations
    assert [p.status for p in inherit.settings.error_pages] == [404, 500]
    assert [p.status for p in own.settings.error_pages] == [502]
    assert [p.status for p in own.locations[0].settings.error_pages] == [502]


def test_named_locations_load(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        """
        server {
            listen 8080;
            location @back { return 200 back; }
            location = @exact { return 200 exact; }
            location / { internal; location /x { } }
            location @back { return 200 second; }
        }
        """,
    )
    server = config.http.servers[0]
    assert [loc.name for loc in server.named_locations] == ["@back", "@back"]
    assert [loc.name for loc in server.locations] == ["@exact", "/"]
    named = find_named_location(server, "@back")
    assert named is not None and named.is_named and named.source is not None
    assert named is server.named_locations[0]  # the first of a name wins
    assert find_named_location(server, "@exact") is None
    assert find_named_location(server, "back") is None
    # No request URI finds a named location.
    assert find_location(server, "/@back")[0] is server.locations[1]
    # internal is inherited by the nested location.
    assert server.locations[1].locations[0].settings.internal


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (
            "location / { location @n { } }",
            'named location "@n" can be on the server level only',
        ),
        (
            "location @n { location /x { } }",
            'location "/x" cannot be inside the named location "@n"',
        ),
        (
            "location @n { proxy_pass http://127.0.0.1:1/uri; }",
            '"proxy_pass" cannot have URI part in location given by regular expression, or '
            "inside named location",
        ),
        ("internal;", '"internal" directive is not allowed here'),
        ("location / { internal; internal; }", '"internal" directive is duplicate'),
        ("location / { internal on; }", 'invalid number of arguments in "internal" directive'),
    ],
)
def test_named_and_internal_bad_lines(tmp_path: Path, body: str, words: str) -> None:
    assert words in _load_error(tmp_path, f"server {{ listen 8080; {body} }}")


# -- the phases --------------------------------------------------------------------------------
PAGES = """
server {
    listen 8080;
    error_page 497 https://example.org/;
    location /missing { error_page 404 /page?from=1; }
    location /vars { error_page 404 /page?u=$uri&$args; }
    location /ok { error_page 404 =200 /page; }
    location /same { error_page 404 = /page; }
    location /named { error_page 404 @back; }
    location /nowhere { error_page 404 @nowhere; }
    location /away { error_page 404 http://example.com/away; }
    location /moved { error_page 404 =301 http://example.com/moved; }
    location /onlyone { error_page 404 /missing; }
    location /first { return 302 first; error_page 302 /second; }
    location /second { return 302 http://example.com/; }
    location /closed { deny all; error_page 403 /page; }
    location /crash { return 500; error_page 500 /page; }
    location = /page { return 200 "page $uri $args $request_method $status"; }
    location = /secret { internal; return 200 secret; }
    location /tosecret { error_page 404 /secret; }
    location @back { return 200 "back $uri $args"; }
}
"""


def test_error_page_uri_is_an_internal_redirect(tmp_path: Path) -> None:
    """The URI and its own args replace ``$uri`` and ``$args``; POST becomes GET; the
    response gets the error's status (``r->err_status``), which ``$status`` shows."""
    config = conf(tmp_path, PAGES)
    r = request(config, Worker(), "/missing?x=1", method="POST")
    decision, _ = run(r)
    assert decision == Plain(200, b"page /page from=1 GET 404", "text/plain")
    assert (r.err_status, r.internal, r.head.method) == (404, True, "GET")
    assert not r.valid_unparsed_uri
    assert r.uri_changes == MAX_URI_CHANGES
    r = request(config, Worker(), "/missing", method="HEAD")
    assert run(r)[0] == Plain(200, b"page /page from=1 HEAD 404", "text/plain")


def test_error_page_uri_with_variables_splits_its_args(tmp_path: Path) -> None:
    r = request(conf(tmp_path, PAGES), Worker(), "/vars?a=2")
    assert run(r)[0] == Plain(200, b"page /page u=/vars&a=2 GET 404", "text/plain")


def test_error_page_response_codes(tmp_path: Path) -> None:
    config = conf(tmp_path, PAGES)
    r = request(config, Worker(), "/ok")
    run(r)
    assert r.err_status == 200
    r = request(config, Worker(), "/same")
    assert run(r)[0] == Plain(200, b"page /page  GET 000", "text/plain")
    assert r.err_status == 0  # "=": the response's own status


def test_error_page_named_location_keeps_uri_and_args(tmp_path: Path) -> None:
    config = conf(tmp_path, PAGES)
    r = request(config, Worker(), "/named/x?q=1")
    assert run(r)[0] == Plain(200, b"back /named/x q=1", "text/plain")
    assert r.location is not None and r.location.name == "@back"
    assert (r.internal, r.valid_unparsed_uri, r.err_status) == (True, True, 404)
    r = request(config, Worker(), "/nowhere")
    with pytest.raises(HttpError) as info:
        run(r)
    assert (info.value.status, info.value.log) == (500, 'could not find named location "@nowhere"')


def test_error_page_redirects(tmp_path: Path) -> None:
    config = conf(tmp_path, PAGES)
    assert run(request(config, Worker(), "/away"))[0] == Redirect(302, "http://example.com/away")
    assert run(request(config, Worker(), "/moved"))[0] == Redirect(301, "http://example.com/moved")


def test_error_page_at_server_level_answers_497(tmp_path: Path) -> None:
    """``error_page 497`` is the server's: nginx finds no location for a plain request on
    a TLS port; the URL form makes it a 302."""
    config = conf(tmp_path, PAGES)
    r = request(config, Worker(), "/missing")
    r.plain_on_tls = True
    assert run(r)[0] == Redirect(302, "https://example.org/")


def test_redirects_a_handler_makes_go_through_error_page(tmp_path: Path) -> None:
    """``return 302 first`` with ``error_page 302 /second``: the first Location is gone."""
    r = request(conf(tmp_path, PAGES), Worker(), "/first")
    assert run(r)[0] == Redirect(302, "http://example.com/")


def test_a_redirect_taken_over_keeps_its_location(tmp_path: Path) -> None:
    """``return 302 first`` with ``error_page 302 /page``: nginx keeps ``Location: first``
    in ``headers_out`` for the page's response; a redirect the page makes replaces it."""
    config = conf(tmp_path, PAGES.replace("error_page 302 /second", "error_page 302 /page"))
    r = request(config, Worker(), "/first")
    assert run(r)[0] == Plain(200, b"page /page  GET 302", "text/plain")
    assert phases.response_fields(r) == (("Location", "first"),)
    assert phases.response_fields(r, redirect=True) == ()


def test_one_error_page_per_request(tmp_path: Path) -> None:
    """Without ``recursive_error_pages`` the second error gets nginx's page."""
    r = request(conf(tmp_path, PAGES), Worker(), "/onlyone")
    with pytest.raises(HttpError) as info:
        run(r)
    assert info.value.status == 404 and r.ctx.uri == "/missing"


def test_errors_keep_their_log_line_and_close(tmp_path: Path) -> None:
    """The 403's line is logged when it happens, though an error page answers; a 500 turns
    keep-alive off even when its error page answers (``ngx_http_special_response_handler``)."""
    config = conf(tmp_path, PAGES)
    worker = Worker()
    r = request(config, worker, "/closed")
    assert run(r)[0] == Plain(200, b"page /page  GET 403", "text/plain")
    assert worker.error_log.lines == [("error", "access forbidden by rule")]
    assert r.head.keep_alive
    r = request(config, worker, "/crash")
    assert run(r)[0] == Plain(200, b"page /page  GET 500", "text/plain")
    assert not r.head.keep_alive


def test_internal_locations(tmp_path: Path) -> None:
    """A request URI reaching an ``internal`` location is 404; an error page may."""
    config = conf(tmp_path, PAGES)
    with pytest.raises(HttpError) as info:
        run(request(config, Worker(), "/secret"))
    assert info.value.status == 404
    assert run(request(config, Worker(), "/tosecret"))[0] == Plain(200, b"secret", "text/plain")


RECURSIVE = """
server {
    listen 8080;
    recursive_error_pages on;
    error_page 404 /404.html;
    location = /404.html { internal; }
    location /a { error_page 404 /b; }
    location /b { error_page 404 /c; }
    location /c { error_page 404 = @n; }
    location @n { return 200 "named $uri"; }
}
"""


def test_recursive_error_pages(tmp_path: Path) -> None:
    config = conf(tmp_path, RECURSIVE)
    r = request(config, Worker(), "/a")
    assert run(r)[0] == Plain(200, b"named /c", "text/plain")
    assert r.uri_changes == MAX_URI_CHANGES + 1 - 3 and r.err_status == 0


def test_internal_error_page_loop_ends_in_500(tmp_path: Path) -> None:
    """``error_page 404 /404.html`` where ``/404.html`` is itself 404: with
    ``recursive_error_pages`` it loops until the eleventh redirect, a 500 with nginx's line,
    and that 500 gets nginx's page (no error page once out of redirects)."""
    worker = Worker()
    r = request(conf(tmp_path, RECURSIVE), worker, "/x")
    with pytest.raises(HttpError) as info:
        run(r)
    assert info.value.status == 500 and r.uri_changes == 0
    # Each pass looks for the file first (nginx's "open() ... failed" lines), then the cycle.
    assert worker.error_log.lines[-1] == (
        "error",
        'rewrite or internal redirection cycle while internally redirecting to "/404.html"',
    )
    assert sum("open()" in line for _, line in worker.error_log.lines) == MAX_URI_CHANGES + 1


def test_errors_from_the_content_phase(tmp_path: Path) -> None:
    """An error the I/O layer meets (a 502 from the upstream) goes back to :func:`run`."""
    config = conf(
        tmp_path,
        """
        server {
            listen 8080;
            location / { proxy_pass http://127.0.0.1:9; error_page 502 504 /down; }
            location = /down { return 200 down; }
        }
        """,
    )
    r = request(config, Worker(), "/x")
    decision, index = run(r)
    assert decision is Content.PROXY
    assert run(r, index, error=HttpError(502))[0] == Plain(200, b"down", "text/plain")
    assert r.err_status == 502
    with pytest.raises(HttpError) as info:  # one error page per request
        run(r, index, error=HttpError(504))
    assert info.value.status == 504
    # 499 (the client left) never gets an error page.
    r = request(config, Worker(), "/x")
    decision, index = run(r)
    assert on_error(r, HttpError(499), ERROR_HANDLERS) is None


def test_limits_apply_once_per_request(tmp_path: Path) -> None:
    """``limit_req_status 503; error_page 503 /busy``: the error page is not limited again
    (``if (r->main->limit_req_status) return NGX_DECLINED``)."""
    config = conf(
        tmp_path,
        """
        limit_req_zone $remote_addr zone=one:1m rate=1r/m;
        server {
            listen 8080;
            limit_req zone=one;
            error_page 503 /busy;
            location / { }
            location = /busy { return 200 busy; }
        }
        """,
    )
    worker = Worker()
    with pytest.raises(HttpError) as info:  # limit_req lets it pass; there is no content
        run(request(config, worker, "/"))
    assert info.value.status == 404
    r = request(config, worker, "/")
    assert run(r)[0] == Plain(200, b"busy", "text/plain")
    assert r.err_status == 503 and r.limit_req_done


def test_redirect_helpers(tmp_path: Path) -> None:
    """:func:`internal_redirect` and :func:`named_location`, as ``try_files`` will call them:
    each counts one URI change; the eleventh is nginx's 500."""
    config = conf(tmp_path, PAGES)
    r = request(config, Worker(), "/missing")
    with pytest.raises(HttpError):
        run(r, errors=())  # FIND_CONFIG chose /missing, which has no content
    assert r.location is not None and r.location.name == "/missing"
    assert internal_redirect(r, "/page", "z=1") == Restart(Phase.SERVER_REWRITE)
    assert (r.ctx.uri, r.ctx.args, r.location, r.settings) == (
        "/page",
        "z=1",
        None,
        r.server.settings,
    )
    assert named_location(r, "@back") == Restart(Phase.REWRITE)
    assert r.location is not None and r.location.name == "@back"
    r.uri_changes = 1
    with pytest.raises(HttpError) as info:
        named_location(r, "@back")
    assert info.value.log == (
        'rewrite or internal redirection cycle while redirect to named location "@back"'
    )
    r = request(config, Worker(), "/missing")
    r.ctx.uri = ""
    with pytest.raises(HttpError, match='empty URI in redirect to named location "@back"'):
        named_location(r, "@back")


def test_413_error_page_is_not_refused_again(tmp_path: Path) -> None:
    """nginx discards the body before its 413, so the error page's location (with the same
    ``client_max_body_size``) neither refuses the request again nor sends the body."""
    config = conf(
        tmp_path,
        """
        server {
            listen 8080;
            client_max_body_size 10;
            error_page 413 /big;
            location / { proxy_pass http://127.0.0.1:9; }
        }
        """,
    )
    r = request(config, Worker(), "/up", method="POST", extra="Content-Length: 100\r\n")
    assert run(r)[0] is Content.PROXY
    assert (r.ctx.uri, r.err_status, r.discard_body, r.head.keep_alive) == (
        "/big",
        413,
        True,
        False,
    )


def test_walks_over_the_configuration_see_named_locations(tmp_path: Path) -> None:
    """A named location's own access log is opened, its ``prometheus`` counts, and its
    metrics label is its name."""
    from wsgate.observability.logs import access_log_paths
    from wsgate.observability.metrics import location_label, prometheus_enabled

    config = conf(
        tmp_path,
        """
        server {
            listen 8080;
            access_log off;
            location @metrics { access_log logs/named.log; prometheus; }
        }
        """,
    )
    assert access_log_paths(config) == [str(tmp_path / "logs" / "named.log")]
    assert prometheus_enabled(config)
    (named,) = config.http.servers[0].every_location
    assert location_label(named) == "@metrics"


def test_try_files_falls_back_to_a_named_location(tmp_path: Path) -> None:
    """``try_files $uri @back``: "(void) ngx_http_named_location(r, &path)", with ``$uri`` and
    ``$args`` as they were; a URI fallback is an internal redirect with its own args."""
    (tmp_path / "html").mkdir()
    (tmp_path / "html" / "here").write_text("here")
    config = conf(
        tmp_path,
        f"""
        server {{
            listen 8080;
            root {tmp_path}/html;
            location / {{ try_files $uri @back; }}
            location /u/ {{ try_files $uri /page?from=u; }}
            location = /page {{ return 200 "page $args"; }}
            location @back {{ return 200 "back $uri $args"; }}
        }}
        """,
    )
    r = request(config, Worker(), "/missing?x=1")
    assert run(r)[0] == Plain(200, b"back /missing x=1", "text/plain")
    assert r.internal and r.location is not None and r.location.name == "@back"
    r = request(config, Worker(), "/u/missing?x=1")
    assert run(r)[0] == Plain(200, b"page from=u", "text/plain")
    assert not r.valid_unparsed_uri
