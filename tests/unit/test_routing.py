"""wsgate.routing: request target, server_name and location selection, proxy_pass URI."""

from __future__ import annotations

import re

import pytest

from wsgate.config.model import (
    Listen,
    Location,
    LocationSettings,
    ProxyPass,
    Server,
    ServerName,
)
from wsgate.errors import HttpError
from wsgate.routing import (
    candidates_for,
    escape_uri,
    find_location,
    needs_slash_redirect,
    normalize_uri,
    proxy_uri,
    request_uri,
    select_server,
    select_server_match,
    split_target,
    target_host,
)

# ---------------------------------------------------------------------------------------------
# factories


def name(text: str) -> ServerName:
    """Classify a server_name entry the way the loader does."""
    if text.startswith("~"):
        return ServerName(text, "regex", text[1:], re.compile(text[1:], re.IGNORECASE))
    low = text.lower()
    if low.startswith("*."):
        return ServerName(text, "prefix_wildcard", low[1:])
    if low.startswith("."):
        return ServerName(text, "prefix_wildcard", low, also_bare=True)
    if low.endswith(".*"):
        return ServerName(text, "suffix_wildcard", low[:-1])
    return ServerName(text, "exact", low)


def server(
    *names: str,
    listens: tuple[Listen, ...] = (Listen("0.0.0.0", 80),),
    locations: tuple[Location, ...] = (),
) -> Server:
    return Server(
        listens=listens,
        names=tuple(name(n) for n in names),
        settings=LocationSettings(),
        locations=locations,
    )


def pp(url: str = "http://backend", uri: str | None = None) -> ProxyPass:
    return ProxyPass(url=url, scheme="http", host="backend", port=80, uri=uri)


def loc(
    spec: str,
    *nested: Location,
    proxy: ProxyPass | None = None,
) -> Location:
    """``loc("~* \\.jpg$")``, ``loc("= /")``, ``loc("/a/")``."""
    modifier, _, rest = spec.partition(" ")
    if not rest:
        modifier, rest = "", spec
    regex = None
    if modifier in ("~", "~*"):
        regex = re.compile(rest, re.IGNORECASE if modifier == "~*" else 0)
    return Location(
        modifier=modifier,
        name=rest,
        settings=LocationSettings(proxy_pass=proxy),
        regex=regex,
        locations=nested,
    )


def where(srv: Server, uri: str) -> str | None:
    found, _ = find_location(srv, uri)
    return None if found is None else f"{found.modifier} {found.name}".strip()


# ---------------------------------------------------------------------------------------------
# normalize_uri / split_target


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a//b", "/a/b"),
        ("//a///b//", "/a/b/"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/a/b/../../c", "/c"),
        ("/a/..", "/"),
        ("/a/.", "/a/"),
        ("/a/b/..", "/a/"),
        ("/a%2Fb/c", "/a/b/c"),
        ("/a/%2e%2E/b", "/b"),
        ("/a/%2e", "/a/"),
        ("/a%20b", "/a b"),
        ("/p/a%20b/../c", "/p/c"),
        ("/caf%C3%A9", "/café"),
        ("/caf%c3%a9", "/café"),
        ("/%25", "/%"),
        ("/%252F", "/%2F"),
        ("/%3F", "/?"),
        ("/%23x", "/#x"),
        ("/a.b/..c", "/a.b/..c"),
        ("/..a/.b", "/..a/.b"),
        ("/a/.../b", "/a/.../b"),
        ("/a+b", "/a+b"),
        ("/a#frag", "/a"),
        ("/a/..#frag", "/"),
        ("/a/.#frag", "/a/"),
    ],
)
def test_normalize_uri(path: str, expected: str) -> None:
    assert normalize_uri(path) == expected


@pytest.mark.parametrize(
    "path",
    ["/..", "/../a", "/a/../..", "/a/../../b", "/%2e%2e/", "/.%2E", "//..", "/%zz", "/a%",
     "/a%2", "/%00", "/a%0", "*", "", "a/b"],
)  # fmt: skip
def test_normalize_uri_invalid(path: str) -> None:
    with pytest.raises(HttpError) as err:
        normalize_uri(path)
    assert err.value.status == 400
    assert err.value.log == "client sent invalid request"


def test_normalize_uri_keeps_invalid_utf8() -> None:
    uri = normalize_uri("/%FF%C3")
    assert uri == "/\udcff\udcc3"
    assert escape_uri(uri) == "/%FF%C3"


def test_normalize_uri_without_merge_slashes() -> None:
    assert normalize_uri("/a//b/", merge_slashes=False) == "/a//b/"
    assert normalize_uri("/a//../b", merge_slashes=False) == "/a/b"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/", ("/", "")),
        ("/a?x=1&y", ("/a", "x=1&y")),
        ("/a?x=1?z", ("/a", "x=1?z")),
        ("/a?", ("/a", "")),
        ("/a#f?x", ("/a", "")),
        ("/a?x#f", ("/a", "x")),
        ("http://h.test:8080/p/q?x=1", ("/p/q", "x=1")),
        ("HTTPS://h.test/p", ("/p", "")),
        ("http://h.test", ("/", "")),
        ("http://h.test?x=1", ("/", "x=1")),
        ("*", ("*", "")),
    ],
)
def test_split_target(target: str, expected: tuple[str, str]) -> None:
    assert split_target(target) == expected


def test_split_target_garbage() -> None:
    with pytest.raises(HttpError) as err:
        split_target("a/b")
    assert err.value.status == 400


def test_target_host_and_request_uri() -> None:
    assert target_host("http://Main.Test:8080/p?x") == "Main.Test:8080"
    assert target_host("http://user@h.test/") == "h.test"
    assert target_host("/p") is None
    assert request_uri("http://h.test/p%20q?x=1") == "/p%20q?x=1"
    assert request_uri("/p/a%20b/../c?x=1") == "/p/a%20b/../c?x=1"


# ---------------------------------------------------------------------------------------------
# server selection


def test_exact_beats_wildcards_and_regex() -> None:
    regex = server("~^www\\.example\\.org$")
    prefix = server("*.example.org")
    suffix = server("www.*")
    exact = server("www.example.org")
    servers = [regex, prefix, suffix, exact]
    assert select_server(servers, "www.example.org", regex) is exact


def test_longest_leading_wildcard() -> None:
    short = server("*.example.org")
    long = server("*.a.example.org")
    servers = [short, long]
    assert select_server(servers, "x.a.example.org", short) is long
    assert select_server(servers, "x.b.example.org", long) is short
    # "*.example.org" does not match "example.org" itself
    assert select_server(servers, "example.org", long) is long


def test_dot_wildcard_also_matches_bare_name() -> None:
    dot = server(".example.org")
    other = server("other.test")
    servers = [other, dot]
    assert select_server(servers, "example.org", other) is dot
    assert select_server(servers, "a.b.example.org", other) is dot
    assert select_server(servers, "xexample.org", other) is other


def test_leading_beats_trailing_and_longest_trailing() -> None:
    trailing = server("www.*")
    longer = server("www.example.*")
    leading = server("*.example.org")
    assert select_server([trailing, leading], "www.example.org", trailing) is leading
    assert select_server([trailing, longer], "www.example.net", trailing) is longer
    assert select_server([trailing, longer], "www.other.net", longer) is trailing
    assert select_server([trailing], "www.", longer) is longer


def test_first_regex_in_config_order_with_captures() -> None:
    first = server("a.test", "~^(?P<sub>\\w+)\\.example\\.(net|org)$")
    second = server("~^.*\\.example\\.org$")
    default = server("default.test")
    servers = [default, first, second]
    srv, captures = select_server_match(servers, "api.example.org", default)
    assert srv is first
    assert captures == ("api", "org")
    assert select_server(servers, "a.b.example.org", default) is second
    assert select_server(servers, "nothing.test", default) is default


def test_host_is_compared_lowercased() -> None:
    exact = server("Example.ORG")
    default = server()
    assert select_server([default, exact], "EXAMPLE.org", default) is exact


def test_conflicting_names_first_wins() -> None:
    one = server("dup.test")
    two = server("dup.test")
    assert select_server([one, two], "dup.test", two) is one


def test_no_host_prefers_server_with_empty_name() -> None:
    default = server("main.test")
    named = server("other.test")
    empty = server()  # no server_name: the empty name
    explicit = server("x.test", "")
    assert select_server([default, named, empty], None, default) is empty
    assert select_server([default, named, explicit, empty], None, default) is explicit
    assert select_server([default, named], None, named) is named
    assert select_server([default, empty], "", default) is empty


def test_no_host_never_tries_regexes() -> None:
    default = server("main.test")
    anything = server("~.*")
    assert select_server([default, anything], None, default) is default
    assert select_server([default, anything], "z.test", default) is anything


# ---------------------------------------------------------------------------------------------
# listen address candidates


def test_specific_address_hides_wildcard_servers() -> None:
    wild = server("wild.test", listens=(Listen("0.0.0.0", 80, default_server=True),))
    local = server("local.test", listens=(Listen("127.0.0.1", 80),))
    local2 = server("local2.test", listens=(Listen("127.0.0.1", 80, default_server=True),))
    other_port = server("p.test", listens=(Listen("127.0.0.1", 81),))
    servers = [wild, local, local2, other_port]
    assert candidates_for(servers, "127.0.0.1", 80) == ([local, local2], local2)
    assert candidates_for(servers, "127.0.0.2", 80) == ([wild], wild)
    assert candidates_for(servers, "127.0.0.1", 81) == ([other_port], other_port)


def test_default_is_first_without_default_server() -> None:
    a = server("a.test")
    b = server("b.test", listens=(Listen("0.0.0.0", 80), Listen("0.0.0.0", 8080)))
    assert candidates_for([a, b], "10.0.0.1", 80) == ([a, b], a)
    assert candidates_for([a, b], "10.0.0.1", 8080) == ([b], b)


def test_server_with_several_matching_listens_listed_once() -> None:
    a = server(listens=(Listen("0.0.0.0", 80), Listen("0.0.0.0", 80, default_server=True)))
    assert candidates_for([a], "1.2.3.4", 80) == ([a], a)


def test_ipv6_listens() -> None:
    v6 = server("v6.test", listens=(Listen("::", 80),))
    v4 = server("v4.test", listens=(Listen("0.0.0.0", 80),))
    loop6 = server("l6.test", listens=(Listen("::1", 80),))
    dual = server("dual.test", listens=(Listen("::", 81, ipv6only=False),))
    servers = [v6, v4, loop6, dual]
    assert candidates_for(servers, "::1", 80) == ([loop6], loop6)
    assert candidates_for(servers, "0:0::1", 80) == ([loop6], loop6)
    assert candidates_for(servers, "2001:db8::5", 80) == ([v6], v6)
    assert candidates_for(servers, "10.1.1.1", 80) == ([v4], v4)
    assert candidates_for(servers, "10.1.1.1", 81) == ([dual], dual)


def test_port_zero_listens_use_bound_ports() -> None:
    a = server("a.test", listens=(Listen("127.0.0.1", 0),))
    b = server("b.test", listens=(Listen("127.0.0.1", 0, default_server=True),))
    c = server("c.test", listens=(Listen("0.0.0.0", 0),))
    servers = [a, b, c]
    bound = {("127.0.0.1", 0): 41234, ("0.0.0.0", 0): 41235}
    assert candidates_for(servers, "127.0.0.1", 41234, bound) == ([a, b], b)
    assert candidates_for(servers, "127.0.0.1", 41235, bound) == ([c], c)
    with pytest.raises(LookupError):
        candidates_for(servers, "127.0.0.1", 41234)


def test_no_candidates_is_lookup_error() -> None:
    with pytest.raises(LookupError):
        candidates_for([server()], "127.0.0.1", 8080)


# ---------------------------------------------------------------------------------------------
# location selection


def test_nginx_documentation_example() -> None:
    # https://nginx.org/en/docs/http/ngx_http_core_module.html#location (configurations A..E)
    srv = server(
        locations=(
            loc("= /"),
            loc("/"),
            loc("/documents/"),
            loc("^~ /images/"),
            loc("~* \\.(gif|jpg|jpeg)$"),
        )
    )
    assert where(srv, "/") == "= /"
    assert where(srv, "/index.html") == "/"
    assert where(srv, "/documents/document.html") == "/documents/"
    assert where(srv, "/images/1.gif") == "^~ /images/"
    assert where(srv, "/documents/1.jpg") == "~* \\.(gif|jpg|jpeg)$"
    assert where(srv, "/documents/1.JPG") == "~* \\.(gif|jpg|jpeg)$"


def test_no_location_matches() -> None:
    srv = server(locations=(loc("/a/"), loc("= /b"), loc("~ ^/c")))
    assert find_location(srv, "/b/") == (None, ())
    assert find_location(server(), "/") == (None, ())


def test_exact_only_matches_exactly() -> None:
    srv = server(locations=(loc("= /api"), loc("/")))
    assert where(srv, "/api") == "= /api"
    assert where(srv, "/api/x") == "/"
    assert where(srv, "/apix") == "/"


def test_exact_and_prefix_with_same_name() -> None:
    srv = server(locations=(loc("/x"), loc("= /x"), loc("~ x")))
    assert where(srv, "/x") == "= /x"
    assert where(srv, "/xy") == "~ x"


def test_longest_prefix_regardless_of_order() -> None:
    srv = server(locations=(loc("/"), loc("/a/b/"), loc("/a/")))
    assert where(srv, "/a/b/c") == "/a/b/"
    assert where(srv, "/a/c") == "/a/"
    assert where(srv, "/z") == "/"


def test_prefix_is_case_sensitive_regex_flags_respected() -> None:
    srv = server(locations=(loc("/Foo/"), loc("~ \\.PHP$"), loc("~* \\.css$")))
    assert where(srv, "/foo/x") is None
    assert where(srv, "/Foo/x") == "/Foo/"
    assert where(srv, "/x.php") is None
    assert where(srv, "/x.PHP") == "~ \\.PHP$"
    assert where(srv, "/x.CsS") == "~* \\.css$"


def test_first_regex_in_config_order_wins() -> None:
    srv = server(locations=(loc("/"), loc("~ ^/a"), loc("~ ^/a/b")))
    assert where(srv, "/a/b") == "~ ^/a"


def test_uri_equal_to_prefix_name_skips_regexes() -> None:
    # ngx_http_core_find_static_location returns NGX_OK when the URI equals the name.
    srv = server(locations=(loc("/x.php", loc("~ x")), loc("~ \\.php$")))
    assert where(srv, "/x.php") == "/x.php"
    assert where(srv, "/x.php/y.php") == "~ x"


def test_nested_regex_tried_before_outer_regex() -> None:
    srv = server(
        locations=(
            loc("/a/", loc("~ \\.php$"), loc("/a/b/")),
            loc("~ \\.php$"),
        )
    )
    found, _ = find_location(srv, "/a/x.php")
    assert found is srv.locations[0].locations[0]
    found, _ = find_location(srv, "/a/b/x.php")
    assert found is srv.locations[0].locations[0]
    assert where(srv, "/a/b/c") == "/a/b/"
    found, _ = find_location(srv, "/x.php")
    assert found is srv.locations[1]


def test_nested_prefix_loses_to_outer_regex() -> None:
    srv = server(locations=(loc("/a/", loc("/a/b/")), loc("~ ^/a/b/c")))
    assert where(srv, "/a/b/c") == "~ ^/a/b/c"
    assert where(srv, "/a/b/d") == "/a/b/"


def test_nested_exact_is_final() -> None:
    srv = server(locations=(loc("/a/", loc("= /a/e")), loc("~ e$")))
    assert where(srv, "/a/e") == "= /a/e"
    assert where(srv, "/a/ee") == "~ e$"


def test_noregex_mutes_only_its_own_level() -> None:
    srv = server(
        locations=(
            loc("^~ /n/", loc("~ \\.js$")),
            loc("^~ /m/"),
            loc("/a/", loc("^~ /a/s/"), loc("~ \\.css$")),
            loc("~ \\.(js|css)$"),
        )
    )
    found, _ = find_location(srv, "/n/x.js")
    assert found is srv.locations[0].locations[0]  # the nested regex still runs
    assert where(srv, "/m/x.js") == "^~ /m/"
    # ^~ /a/s/ mutes /a/'s regexes, but not the outer level's
    assert where(srv, "/a/s/x.css") == "~ \\.(js|css)$"
    found, _ = find_location(srv, "/a/t/x.css")
    assert found is srv.locations[2].locations[1]


def test_regex_location_searches_its_nested_locations() -> None:
    inner_prefix = loc("/img/big/")
    inner_regex = loc("~ \\.png$")
    outer = loc("~ ^/img/", inner_prefix, inner_regex)
    srv = server(locations=(outer,))
    assert find_location(srv, "/img/big/x")[0] is inner_prefix
    assert find_location(srv, "/img/big/x.png")[0] is inner_regex
    assert find_location(srv, "/img/x")[0] is outer


def test_regex_captures() -> None:
    srv = server(locations=(loc("~ ^/u/(\\d+)/(\\w+)?$"), loc("~ ^/plain")))
    assert find_location(srv, "/u/12/") == (srv.locations[0], ("12", ""))
    assert find_location(srv, "/u/12/ab") == (srv.locations[0], ("12", "ab"))
    assert find_location(srv, "/plain") == (srv.locations[1], ())


def test_location_matches_decoded_uri() -> None:
    srv = server(locations=(loc("/a/b/"),))
    assert where(srv, normalize_uri("/a%2Fb/c")) == "/a/b/"


# --- slash redirect


def test_slash_redirect_for_proxied_prefix() -> None:
    ws = loc("/ws/", proxy=pp())
    srv = server(locations=(loc("/"), ws, loc("~ ^/ws")))
    found, _ = find_location(srv, "/ws")
    assert found is ws
    assert needs_slash_redirect(found, "/ws")
    found, _ = find_location(srv, "/ws/")
    assert found is ws
    assert not needs_slash_redirect(found, "/ws/")
    assert where(srv, "/ws/x") == "~ ^/ws"


def test_exact_location_avoids_slash_redirect() -> None:
    exact = loc("= /ws", proxy=pp())
    srv = server(locations=(loc("/ws/", proxy=pp()), exact))
    found, _ = find_location(srv, "/ws")
    assert found is exact
    assert not needs_slash_redirect(found, "/ws")


def test_no_slash_redirect_without_proxy_pass() -> None:
    srv = server(locations=(loc("/"), loc("/ws/"), loc("~ ^/ws$")))
    found, _ = find_location(srv, "/ws")
    assert where(srv, "/ws") == "~ ^/ws$"
    assert not needs_slash_redirect(found, "/ws")


def test_slash_redirect_in_nested_location() -> None:
    inner = loc("/app/ws/", proxy=pp())
    srv = server(locations=(loc("/app/", inner), loc("~ ws")))
    found, _ = find_location(srv, "/app/ws")
    assert found is inner
    assert needs_slash_redirect(found, "/app/ws")


def test_needs_slash_redirect_ignores_regex_and_none() -> None:
    assert not needs_slash_redirect(None, "/ws")
    assert not needs_slash_redirect(loc("~ /ws/", proxy=pp()), "/ws")


# ---------------------------------------------------------------------------------------------
# proxy_pass URI


def _send(location: Location, target: str, pass_: ProxyPass | None = None) -> str:
    path, args = split_target(target)
    uri = normalize_uri(path)
    pass_ = pass_ or location.settings.proxy_pass
    assert pass_ is not None
    return proxy_uri(pass_, location, target, uri, args, "%" in path)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        # [obs] NGINX-SEMANTICS.md §2, location /uri/ { proxy_pass http://h/x/; }
        ("/uri/a%20b/../c?x=1", "/x/c?x=1"),
        ("/uri//p%2Fq", "/x/p/q"),
        ("/uri/caf%C3%A9", "/x/caf%C3%A9"),
        ("/uri/", "/x/"),
        ("/uri/a%20b", "/x/a%20b"),
        ("/uri/a%3Fb?q", "/x/a%3Fb?q"),
        ("/uri/%7Bx%7D%22", "/x/%7Bx%7D%22"),
        ("/uri/%7e%2B", "/x/~+"),
        ("/uri/plain?x=1", "/x/plain?x=1"),
        ("http://h.test/uri/a?b", "/x/a?b"),
    ],
)
def test_proxy_pass_with_uri_part(target: str, expected: str) -> None:
    location = loc("/uri/", proxy=pp("http://h/x/", uri="/x/"))
    assert _send(location, target) == expected


def test_proxy_pass_without_uri_part_sends_raw_request_uri() -> None:
    location = loc("/p/", proxy=pp("http://h"))
    # [obs] NGINX-SEMANTICS.md §2: sent verbatim
    assert _send(location, "/p/a%20b/../c?x=1") == "/p/a%20b/../c?x=1"
    assert _send(location, "/p//x") == "/p//x"
    assert _send(location, "http://h.test/p/a?b") == "/p/a?b"
    assert _send(location, "http://h.test?b=1") == "/?b=1"


def test_proxy_pass_uri_part_edge_cases() -> None:
    root = loc("/api/", proxy=pp("http://h/", uri="/"))
    assert _send(root, "/api/v1/x") == "/v1/x"
    exact = loc("= /old", proxy=pp("http://h/new", uri="/new"))
    assert _send(exact, "/old?a=b") == "/new?a=b"
    no_slash = loc("/a", proxy=pp("http://h/b", uri="/b"))
    assert _send(no_slash, "/a/c") == "/b/c"
    assert _send(no_slash, "/abc") == "/bbc"


def test_proxy_pass_regex_location_or_none_behaves_as_no_uri_part() -> None:
    with_uri = pp("http://h/x/", uri="/x/")
    regex = loc("~ ^/r/")
    assert _send(regex, "/r/a%20b/../c", with_uri) == "/r/a%20b/../c"
    assert proxy_uri(with_uri, None, "/q/./z?a", "/q/z", "a", False) == "/q/./z?a"


def test_proxy_pass_raw_uri_with_space_sends_escaped_uri() -> None:
    location = loc("/", proxy=pp("http://h"))
    assert proxy_uri(pp("http://h"), location, "/a b/%41?x", "/a b/A", "x", True) == ("/a%20b/A?x")


def test_escape_uri_set() -> None:
    assert escape_uri(' "#%<>?\\^`{|}') == "%20%22%23%25%3C%3E%3F%5C%5E%60%7B%7C%7D"
    assert escape_uri("\x00\x1f\x7f") == "%00%1F%7F"
    assert escape_uri("/a-z_A.Z~0!$&'()*+,;=:@[]") == "/a-z_A.Z~0!$&'()*+,;=:@[]"
    assert escape_uri("é") == "%C3%A9"


def test_proxy_pass_with_variables_is_left_to_the_caller() -> None:
    from wsgate.config.template import compile_template

    templated = ProxyPass(
        url="http://$h/x/",
        scheme="http",
        host="",
        port=80,
        uri="/x/",
        template=compile_template("http://$h/x/"),
    )
    location = loc("/uri/", proxy=templated)
    assert _send(location, "/uri/a%20b?x=1") == "/uri/a%20b?x=1"
