"""The rewrite module (:mod:`wsgate.http.rewrite` run by the phases of
:mod:`wsgate.http.phases`): ``rewrite``, ``return``, ``break``, ``if``, ``set``, the internal
redirect at ``POST_REWRITE`` and its limit, without a socket or a loop.  Expected values are
nginx's (``ngx_http_script.c``, and nginx 1.22 run by hand on the same configurations)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.test_phases import Worker, conf, decide, request
from wsgate.config.model import Config, ProxyPass
from wsgate.config.script import If, Return
from wsgate.errors import ConfigError, HttpError
from wsgate.http.phases import (
    MAX_URI_CHANGES,
    Close,
    Content,
    Plain,
    Redirect,
    Request,
    UninitializedWarning,
    uninitialized_warning,
)
from wsgate.http.rewrite import escape_args, unescape_redirect
from wsgate.routing import proxy_uri


def plain(text: str, status: int = 200) -> Plain:
    return Plain(status, text.encode(), "text/plain")


def server(tmp_path: Path, body: str) -> Config:
    return conf(tmp_path, f"server {{\n listen 8080;\n{body}\n}}")


def answer(config: Config, target: str, worker: Worker | None = None) -> object:
    return decide(request(config, worker or Worker(), target))


# -- escaping ------------------------------------------------------------------------------------
def test_escape_args_is_nginx_table() -> None:
    assert escape_args("/a b%&+;?=x") == "/a%20b%25%26%2B%3B%3F=x"
    assert escape_args("é") == "%C3%A9"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # rewrite_unescape.t
        ("http%3A%2F%2Fexample.com%2F%3Ffrom", "http://example.com/?from"),
        ("http%3A%2F%2Fexample.com%0D%0Asplit", "http://example.com%0D%0Asplit"),
        ("http%3A%2F%2Fexample.com%2F%3Ffrom%3Dblah", "http://example.com/?from%3Dblah"),
        ("/t2/blah%20%3Fblah", "/t2/blah%20?blah"),
        ("/a?b=%41", "/a?b=%41"),  # nothing after "?" is touched
        ("/%41%7e%25", "/A~%25"),  # only printable characters above "%"
        ("/%zz", "/zz"),  # "%" dropped before a non-hex character
        ("/%4z", "/"),  # both dropped
        ("/end%", "/end"),
    ],
)
def test_unescape_redirect(text: str, expected: str) -> None:
    assert unescape_redirect(text) == expected


# -- rewrite -------------------------------------------------------------------------------------
REWRITES = """
    location /loc/ { return 200 "uri=$uri args=$args 1=$1"; }
    location /last { rewrite ^/last/(.*)$ /loc/$1 last; return 200 "not reached"; }
    location /noflag { rewrite ^/noflag/(.*)$ /loc/$1; rewrite ^/loc/(.*)$ /loc/x$1; }
    location /nomatch { rewrite ^/zzz /yyy; return 200 "nm $uri"; }
    location /brk { rewrite ^/brk/(.*)$ /b/$1 break; return 200 "brk $uri"; }
    location /red { rewrite ^/red/(.*)$ /target/$1?a=$1 redirect; }
    location /perm { rewrite ^/perm(.*)$ https://example.com$1 permanent; }
    location /scheme { rewrite ^ $scheme://$host/s; }
    location /add { rewrite ^ http://example.com/?c=d redirect; }
    location /no { rewrite ^ http://example.com/?c=d? redirect; }
    location /drop { rewrite ^ /loc/a? last; }
    location /capture { rewrite ^(.*) $1?c=d; return 200 "uri:$uri args:$args"; }
    location /capturedup { rewrite ^(.*) $1?c=$1; return 200 "uri:$uri args:$args"; }
    location /empty { rewrite ^.*$ $arg_zz; }
    location /after { rewrite ^ /loc/after last; }
"""


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/last/abc?x=1", plain("uri=/loc/abc args=x=1 1=abc")),
        # no flag: the script goes on, then the location is searched again
        ("/noflag/zz?k=v", plain("uri=/loc/xzz args=k=v 1=zz")),
        ("/nomatch", plain("nm /nomatch")),
        ("/drop?x=1", plain("uri=/loc/a args= 1=")),
        # rewrite.t: escaping of captures put into arguments (ticket #162)
        ("/capture/%25?a=b", plain("uri:/capture/% args:c=d&a=b")),
        ("/capturedup/%25?a=b", plain("uri:/capturedup/% args:c=/capturedup/%25&a=b")),
        ("/capturedup/a?a=b", plain("uri:/capturedup/a args:c=/capturedup/a&a=b")),
    ],
)
def test_rewrite(tmp_path: Path, target: str, expected: object) -> None:
    assert answer(server(tmp_path, REWRITES), target) == expected


def test_rewrite_break_stops_the_script(tmp_path: Path) -> None:
    """``break``: the location stays, and no rewrite directive after it runs (the
    ``return`` neither): the location's content handler answers (here none: 404)."""
    r = request(server(tmp_path, REWRITES), Worker(), "/brk/1")
    with pytest.raises(HttpError) as info:
        decide(r)
    assert info.value.status == 404
    assert (r.ctx.uri, r.valid_location, r.uri_changed) == ("/b/1", False, False)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        # a Location starting with "/" is made absolute when it is sent (absolute_redirect)
        ("/red/a%2Fb%20?z=1", Redirect(302, "/target/a/b%20?a=a/b%20&z=1")),
        ("/perm/p?x=y", Redirect(301, "https://example.com/p?x=y")),
        ("/scheme", Redirect(302, "http://example.org/s")),
        # rewrite.t
        ("/add", Redirect(302, "http://example.com/?c=d")),
        ("/add?a=b", Redirect(302, "http://example.com/?c=d&a=b")),
        ("/no?a=b", Redirect(302, "http://example.com/?c=d")),
    ],
)
def test_rewrite_redirects(tmp_path: Path, target: str, expected: object) -> None:
    assert answer(server(tmp_path, REWRITES), target) == expected


def test_rewrite_flags_for_proxy_pass(tmp_path: Path) -> None:
    """``break`` keeps the location, and ``proxy_pass`` then sends the whole new URI
    (rewrite.t's "valid_location reset"); a rewrite makes the request internal."""
    config = server(
        tmp_path,
        """
        location /break { rewrite ^ /return200; break; proxy_pass http://127.0.0.1:9/return204; }
        location /p/ { rewrite ^/p/(.*)$ /p/x/$1 break; proxy_pass http://127.0.0.1:9/up/; }
        location /keep/ { proxy_pass http://127.0.0.1:9/up/; }
        """,
    )
    for target, sent in (
        ("/break?a=1", "/return200?a=1"),
        ("/p/a%20b", "/p/x/a%20b"),
        ("/keep/a?b", "/up/a?b"),
    ):
        r = request(config, Worker(), target)
        assert decide(r) is Content.PROXY
        pp = r.settings.proxy_pass
        assert pp is not None
        uri = proxy_uri(
            pp,
            r.location,
            target,
            r.ctx.uri,
            r.ctx.args,
            "%" in target or r.internal,
            valid_unparsed_uri=r.valid_unparsed_uri,
            valid_location=r.valid_location,
        )
        assert uri == sent


def test_proxy_uri_after_rewrite_without_uri_part() -> None:
    pp = ProxyPass("http://u", "http", "u", 80, None)
    assert proxy_uri(pp, None, "/a%41?x", "/aA", "x", True) == "/a%41?x"
    changed = proxy_uri(pp, None, "/a%41?x", "/n m", "x", True, valid_unparsed_uri=False)
    assert changed == "/n%20m?x"


def test_zero_length_uri_is_500(tmp_path: Path) -> None:
    with pytest.raises(HttpError) as info:
        answer(server(tmp_path, REWRITES), "/empty")
    assert info.value.status == 500
    assert info.value.log == "the rewritten URI has a zero length"


def _chain(n: int) -> str:
    """Locations /c0 → /c1 → ... → /c{n}, each rewriting to the next with ``last``."""
    lines = [f"location = /c{i} {{ rewrite ^ /c{i + 1} last; }}" for i in range(n)]
    return "\n".join([*lines, f'location = /c{n} {{ return 200 "done"; }}'])


def test_ten_uri_changes_are_allowed(tmp_path: Path) -> None:
    config = server(tmp_path, _chain(MAX_URI_CHANGES))
    assert answer(config, "/c0") == plain("done")


def test_eleventh_uri_change_is_500(tmp_path: Path) -> None:
    """nginx: "the loop is repeated if a request URI was rewritten, but not more than 10
    times"; then 500 and "rewrite or internal redirection cycle while processing"."""
    config = server(tmp_path, _chain(MAX_URI_CHANGES + 1))
    with pytest.raises(HttpError) as info:
        answer(config, "/c0")
    assert info.value.status == 500
    assert info.value.log == 'rewrite or internal redirection cycle while processing "/c11"'


def test_rewrite_loop_is_500(tmp_path: Path) -> None:
    config = server(
        tmp_path,
        """
        location /loop { rewrite ^ /loop2 last; }
        location /loop2 { rewrite ^ /loop last; }
        """,
    )
    with pytest.raises(HttpError) as info:
        answer(config, "/loop")
    assert info.value.status == 500 and "cycle" in info.value.log


def test_server_level_script_runs_before_the_location_search(tmp_path: Path) -> None:
    config = server(
        tmp_path,
        """
        rewrite ^/srv/(.*)$ /loc/$1;
        if ($arg_srv) { return 418 "server-if"; }
        location /loc/ { return 200 "uri=$uri 1=$1"; }
        """,
    )
    assert answer(config, "/srv/abc") == plain("uri=/loc/abc 1=abc")
    assert answer(config, "/x?srv=1") == plain("server-if", 418)


def test_rewrite_log_lines(tmp_path: Path) -> None:
    config = server(
        tmp_path,
        """
        rewrite_log on;
        location /loc/ { return 200 ok; }
        location /a { rewrite ^/zzz /y; rewrite ^/a(.*)$ /loc/$1?q=1; }
        location /r { rewrite ^ http://example.com/x redirect; }
        location /i { if ($arg_x ~ ^\\d+$) { return 204; } return 200; }
        """,
    )
    worker = Worker()
    answer(config, "/ab?z=2", worker)
    answer(config, "/r", worker)
    answer(config, "/i?x=a", worker)
    assert worker.error_log.lines == [
        ("notice", '"^/zzz" does not match "/ab"'),
        ("notice", '"^/a(.*)$" matches "/ab"'),
        ("notice", 'rewritten data: "/loc/b", args: "q=1&z=2"'),
        ("notice", '"^" matches "/r"'),
        ("notice", 'rewritten redirect: "http://example.com/x"'),
        ("notice", '"^\\d+$" does not match "a"'),
    ]
    quiet = Worker()
    answer(server(tmp_path, "location /a { rewrite ^/a /b; return 200; }"), "/a", quiet)
    assert quiet.error_log.lines == []


# -- return --------------------------------------------------------------------------------------
def test_return_forms(tmp_path: Path) -> None:
    config = server(
        tmp_path,
        """
        location /r200 { return 200; }
        location /r204 { return 204; }
        location /r301 { return 301; }
        location /r404e { return 404 ""; }
        location /r404t { return 404 "text"; }
        location /r306 { return 306; }
        location /rel { return 302 /x/y; }
        location /url { return https://example.com/$arg_a; }
        location /two { return 200 first; return 200 second; }
        location /gone { return 444; }
        """,
    )
    assert answer(config, "/r200") == Plain(200, b"", "text/plain")
    assert answer(config, "/r204") == Plain(204, b"", None)
    assert answer(config, "/r301") == Redirect(301, "")
    assert answer(config, "/r404t") == plain("text", 404)
    assert answer(config, "/r306") == Plain(306, b"", "text/plain")
    assert answer(config, "/rel") == Redirect(302, "/x/y")
    assert answer(config, "/url?a=b") == Redirect(302, "https://example.com/b")
    assert answer(config, "/two") == plain("first")
    assert answer(config, "/gone") == Close(444)
    with pytest.raises(HttpError) as info:
        answer(config, "/r404e")
    assert info.value.status == 404


# -- if ------------------------------------------------------------------------------------------
IFS = """
    location /var { if ($arg_c) { return 204; } return 200; }
    location /eq { if ($arg_c = 1) { return 204; } return 200; }
    location /ne { if ($arg_c != "a b") { return 204; } return 200; }
    location /pos { if ($arg_c ~ foo) { return 204; } return 200; }
    location /cpos { if ($arg_c ~* foo) { return 204; } return 200; }
    location /neg { if ($arg_c !~ foo) { return 204; } return 200; }
    location /cneg { if ($arg_c !~* foo) { return 204; } return 200; }
    location /cap {
        if ($uri ~ ^/cap/(?<num>\\d+)) { return 200 "n=$1 num=$num"; }
        return 200 "none $1";
    }
    location ~ ^/keep/(\\d+) { if ($arg_x ~ zzz) { } return 200 "1=$1"; }
"""


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/var?c=1", 204),
        ("/var?c=0", 200),
        ("/var", 200),
        ("/eq?c=1", 204),
        ("/eq?c=2", 200),
        ("/ne?c=x", 204),
        ("/ne?c=a%20b", 204),  # $arg_ is not decoded
        ("/pos?c=food", 204),
        ("/pos?c=FooD", 200),
        ("/cpos?c=FooD", 204),
        ("/cpos?c=bar", 200),
        ("/neg?c=FooD", 204),
        ("/neg?c=food", 200),
        ("/cneg?c=bar", 204),
        ("/cneg?c=FooD", 200),
    ],
)
def test_if_conditions(tmp_path: Path, target: str, status: int) -> None:
    got = answer(server(tmp_path, IFS), target)
    assert isinstance(got, Plain) and got.status == status


def test_if_captures(tmp_path: Path) -> None:
    config = server(tmp_path, IFS)
    assert answer(config, "/cap/12") == plain("n=12 num=12")
    assert answer(config, "/cap/x") == plain("none ")
    # A regex that does not match empties $1..$9 (ngx_http_script_regex_start_code).
    assert answer(config, "/keep/7") == plain("1=")


def test_if_file_tests(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "exe").write_text("")
    os.chmod(tmp_path / "exe", 0o700)
    (tmp_path / "dir").mkdir()
    tests = "\n".join(
        f"location /{name} {{ if ({op} {tmp_path}/$arg_c) {{ return 204; }} return 200; }}"
        for name, op in (
            ("f", "-f"),
            ("d", "-d"),
            ("e", "-e"),
            ("x", "-x"),
            ("nf", "!-f"),
            ("nd", "!-d"),
            ("ne", "!-e"),
            ("nx", "!-x"),
        )
    )
    config = server(tmp_path, tests)
    expected = {
        "file": {"f", "e", "nd", "nx"},
        "exe": {"f", "e", "x", "nd"},
        "dir": {"d", "e", "x", "nf"},
        "nx": {"nf", "nd", "ne", "nx"},
    }
    for c, true in expected.items():
        for name in ("f", "d", "e", "x", "nf", "nd", "ne", "nx"):
            got = answer(config, f"/{name}?c={c}")
            assert isinstance(got, Plain)
            assert (got.status == 204) == (name in true), (c, name)


def test_if_in_location_is_an_implicit_location(tmp_path: Path) -> None:
    """The block's settings apply when the condition holds; the rest is inherited from the
    location, its proxy_pass included."""
    config = server(
        tmp_path,
        """
        location /p {
            add_header X-Loc 1;
            proxy_read_timeout 5s;
            proxy_pass http://127.0.0.1:9;
            if ($arg_a) { add_header X-If 1; }
            if ($arg_b) { proxy_pass http://127.0.0.1:10; }
        }
        """,
    )
    plain_r = request(config, Worker(), "/p")
    assert decide(plain_r) is Content.PROXY
    assert [h.name for h in plain_r.settings.add_headers] == ["X-Loc"]
    r = request(config, Worker(), "/p?a=1")
    assert decide(r) is Content.PROXY
    assert [h.name for h in r.settings.add_headers] == ["X-If"]
    assert r.settings.proxy_read_timeout == 5
    pp = r.settings.proxy_pass
    assert pp is not None and pp.port == 9
    other = request(config, Worker(), "/p?b=1")
    assert decide(other) is Content.PROXY
    assert other.settings.proxy_pass is not None and other.settings.proxy_pass.port == 10
    step = config.http.servers[0].locations[0].settings.rewrite[0]
    assert isinstance(step, If) and step.settings is not None and step.settings.rewrite == ()


# -- set -----------------------------------------------------------------------------------------
SETS = """
    map $foo $mapped { yes matched; default no; }
    server {
        listen 8080;
        location /set {
            set $foo "a-$arg_x";
            set $args "q=1";
            return 200 "foo=$foo args=$args q=$arg_q";
        }
        location /map { set $foo yes; return 200 "$mapped"; }
        location /unset { return 200 "bar=[$bar]"; }
        location /quiet { uninitialized_variable_warn off; return 200 "bar=[$bar]"; }
        location /other { set $bar 1; set $http_x set; }
        location /hdr { return 200 "[$http_x]"; }
        location ~ ^/named/(?<first>[^/]+)/(.*)$ { return 200 "first=$first 2=$2"; }
    }
"""


def _request(config: Config, worker: Worker, target: str, extra: str = "") -> Request:
    r = request(config, worker, target, extra=extra)
    if config.http.user_variables:
        r.ctx.uninitialized = uninitialized_warning(r, config.http.user_variables)
    return r


def test_set_and_variables(tmp_path: Path) -> None:
    config, worker = conf(tmp_path, SETS), Worker()
    assert config.http.user_variables == frozenset({"foo", "bar"})
    assert decide(_request(config, worker, "/set?x=7")) == plain("foo=a-7 args=q=1 q=1")
    assert decide(_request(config, worker, "/map")) == plain("matched")
    assert decide(_request(config, worker, "/named/aa/bb")) == plain("first=aa 2=bb")
    # $http_x where no set runs is the header (rewrite_set.t)
    assert decide(_request(config, worker, "/hdr", "X: h\r\n")) == plain("[h]")
    assert worker.error_log.lines == []
    assert decide(_request(config, worker, "/unset")) == plain("bar=[]")
    assert worker.error_log.lines == [("warn", 'using uninitialized "bar" variable')]
    assert decide(_request(config, worker, "/quiet")) == plain("bar=[]")
    assert len(worker.error_log.lines) == 1
    # In the log phase, nginx's action follows.
    r = _request(config, worker, "/unset")
    decide(r)
    hook = r.ctx.uninitialized
    assert isinstance(hook, UninitializedWarning)
    hook.logging()
    r.ctx.lookup("bar")
    assert worker.error_log.lines[-1] == (
        "warn",
        'using uninitialized "bar" variable while logging request',
    )


def test_dollar_one_is_the_first_group(tmp_path: Path) -> None:
    config = server(tmp_path, 'location ~ ^/u/(\\d+)/(\\w+)$ { return 200 "$1 $2"; }')
    assert answer(config, "/u/12/ab") == plain("12 ab")


# -- configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("location / { rewrite ^ /x sometimes; }", 'invalid parameter "sometimes"'),
        ('location / { rewrite ^ ""; }', "empty replacement"),
        ("location / { rewrite ^(x /x; }", "pcre2_compile() failed"),
        ("location / { return 1000; }", 'invalid return code "1000"'),
        ("location / { return /x; }", 'invalid return code "/x"'),
        ("location / { if ($a ~) { } }", 'invalid condition "$a"'),
        ("location / { if ($a >= 1) { } }", 'unexpected ">=" in condition'),
        ("location / { if (-z /x) { } }", 'invalid condition "-z"'),
        ("location / { if (x) { } }", 'invalid condition "x"'),
        ("location / { if ($uri) { if ($uri) { } } }", '"if" directive is not allowed here'),
        ("location / { if ($uri) { location /a { } } }", '"location" directive is not allowed'),
        ("location / { if ($uri) { proxy_pass http://127.0.0.1:9/x; } }", "cannot have URI"),
        ("if ($uri) { add_header X 1; }", '"add_header" directive is not allowed here'),
        ("location / { set uri 1; }", 'invalid variable name "uri"'),
        ("location / { set $uri 1; }", 'the duplicate "uri" variable'),
        ("location / { return 200 $nope; }", 'unknown "nope" variable'),
        ("location / { return 200 $0; }", 'unknown "0" variable'),
    ],
)
def test_configuration_errors(tmp_path: Path, body: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        server(tmp_path, body)
    assert words in str(info.value)
    assert str(info.value).endswith(f"{tmp_path / 'nginx.conf'}:5")


def test_return_compiles_to_a_step(tmp_path: Path) -> None:
    config = server(tmp_path, "return 200 a; return 301 https://x/;")
    steps = config.http.servers[0].settings.rewrite
    assert [type(s) for s in steps] == [Return, Return]


def test_set_variable_is_known_before_it_is_set(tmp_path: Path) -> None:
    config = server(tmp_path, 'location /a { return 200 "$later"; } location /b { set $later 1; }')
    assert config.http.user_variables == frozenset({"later"})


@pytest.mark.parametrize(
    ("pattern", "subject", "groups"),
    [
        ("^/(?<a>x)\\k<a>\\z", "/xx", ("x",)),
        ("^[[:alpha:]_]+$", "ab_c", ()),
        ("^[]a]+$", "]a]", ()),
        ("^\\w+$", "é", None),  # ASCII, as PCRE without UTF
        ("a\\Z", "a\n", ()),
    ],
)
def test_pcre_translation(tmp_path: Path, pattern: str, subject: str, groups: object) -> None:
    from wsgate.config.model import Source
    from wsgate.config.values import regex

    compiled = regex(pattern, 0, Source("t", 1))
    m = compiled.search(subject)
    assert (m is None) if groups is None else (m is not None and m.groups() == groups)


def test_uninitialized_warning_settles_for_a_tunnel(tmp_path: Path) -> None:
    """An open tunnel keeps the request's variables, not the request: the warning it keeps
    holds the log and the names only, and none when the settings turn it off."""
    config, worker = conf(tmp_path, SETS), Worker()
    r = _request(config, worker, "/unset")
    hook = r.ctx.uninitialized
    assert isinstance(hook, UninitializedWarning)
    settled = hook.settle(r.settings)
    assert settled is not None and settled.__closure__ is not None
    assert all(cell.cell_contents is not r for cell in settled.__closure__)
    settled("bar")
    settled("http_x")  # not a variable only set makes: no line
    assert worker.error_log.lines == [
        ("warn", 'using uninitialized "bar" variable while logging request')
    ]
    quiet = _request(config, worker, "/quiet")
    decide(quiet)
    assert hook.settle(quiet.settings) is None


def test_set_limit_rate(tmp_path: Path) -> None:
    """``$limit_rate`` has nginx's set handler: a size, or ``[error] invalid $limit_rate``
    (http_variables.t's "limit_rate handlers" and "limit_rate invalid")."""
    config = server(tmp_path, 'location /l { set $limit_rate $arg_l; return 200 "$limit_rate"; }')
    worker = Worker()
    assert answer(config, "/l?l=40k", worker) == plain("40960")
    assert answer(config, "/l", worker) == plain("0")
    assert worker.error_log.lines == [("error", 'invalid $limit_rate ""')]
