"""``proxy_redirect`` rules, nginx's merge and default, and the absolute ``Location``
(pure: :mod:`wsgate.http.redirects`, :mod:`wsgate.config.directives.redirects`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wsgate.config.loader import load
from wsgate.config.model import Location, LocationSettings, RewriteRule
from wsgate.config.template import compile_template
from wsgate.http.framing import client_framing
from wsgate.http.headers import last_chunk
from wsgate.http.headers_filter import chunked_trailer, upstream_fields
from wsgate.http.redirects import absolute_location, rewrite_redirects, rewrite_value

VARS = {"v": "var", "1": "outer1"}


def lookup(name: str) -> str:
    return VARS.get(name, "")


def text(pattern: str, replacement: str) -> RewriteRule:
    return RewriteRule(compile_template(replacement), pattern=compile_template(pattern))


def rx(pattern: str, replacement: str, flags: int = 0) -> RewriteRule:
    return RewriteRule(compile_template(replacement), regex=re.compile(pattern, flags))


def test_text_rule_replaces_a_prefix_case_sensitively() -> None:
    rules = (text("http://a/$v/", "/x/"),)
    assert rewrite_value("http://a/var/p?q", 0, rules, lookup) == "/x/p?q"
    assert rewrite_value("http://A/var/p", 0, rules, lookup) is None
    assert rewrite_value("http://a/va", 0, rules, lookup) is None  # shorter than the text
    # The first rule that matches decides.
    two = (text("http://a/", "/1/"), text("http://a/var/", "/2/"))
    assert rewrite_value("http://a/var/p", 0, two, lookup) == "/1/var/p"


def test_regex_rule_replaces_the_whole_value_with_captures() -> None:
    rules = (rx(r"^(.+)/regex_w_([^/]+)", "$1/$2/t"),)
    assert rewrite_value("http://h/regex_w_c/x", 0, rules, lookup) == "http://h/c/t"
    caseless = (rx("re+gexp?", "/r", re.IGNORECASE),)
    assert rewrite_value("/ReeegEX/x", 0, caseless, lookup) == "/r"
    # A regex without captures leaves the request's $1 as it was.
    assert rewrite_value("/abc", 0, (rx("b", "/$1"),), lookup) == "/outer1"
    # A capture beyond the regex's groups is empty.
    assert rewrite_value("/abc", 0, (rx("(b)", "/$1$2"),), lookup) == "/b"


def test_domain_rule() -> None:
    rule = RewriteRule(compile_template("b.org"), pattern=compile_template("a.com"), domain=True)
    assert rewrite_value("A.Com", 0, (rule,), lookup) == "b.org"
    assert rewrite_value(".a.com", 0, (rule,), lookup) == ".b.org"
    assert rewrite_value("x.a.com", 0, (rule,), lookup) is None
    assert rewrite_value("", 0, (rule,), lookup) is None


def test_location_and_refresh() -> None:
    rules = (text("http://u/", "/"),)
    headers = [
        ("X", "http://u/no"),
        ("Refresh", "5; URL=http://u/r"),
        ("Refresh", "5"),
        ("location", "http://u/a"),
        ("Location", "http://u/b"),
    ]
    out, at = rewrite_redirects(headers, rules, lookup)
    assert out == [
        ("X", "http://u/no"),
        ("Refresh", "5; URL=/r"),
        ("Refresh", "5"),
        ("location", "/a"),
        ("Location", "/b"),
    ]
    assert at == 3 and headers[3] == ("location", "http://u/a")  # not changed in place
    assert rewrite_redirects(headers, (), lookup) == (headers, None)
    # Nothing rewritten: the list itself, and no Location of the response's own.
    same, at = rewrite_redirects([("Location", "/rel")], rules, lookup)
    assert same == [("Location", "/rel")] and at is None


def test_upstream_fields_takes_out_the_location_to_make_absolute() -> None:
    settings = LocationSettings(proxy_redirects=(text("http://u/", "/"),))
    headers = [("A", "1"), ("Location", "http://u/x"), ("B", "2")]
    assert upstream_fields(headers, settings, lookup) == ([("A", "1"), ("B", "2")], "/x")
    off = LocationSettings(proxy_redirects=settings.proxy_redirects, absolute_redirect=False)
    assert upstream_fields(headers, off, lookup) == (
        [("A", "1"), ("Location", "/x"), ("B", "2")],
        None,
    )
    # A rewritten absolute URL stays where it is.
    other = LocationSettings(proxy_redirects=(text("http://u/", "https://v/"),))
    got, location = upstream_fields(headers, other, lookup)
    assert got[1] == ("Location", "https://v/x") and location is None


def absolute(location: str, host: str | None = "h", **kw: object) -> str:
    settings = LocationSettings(**kw)  # type: ignore[arg-type]
    scheme = "https" if kw.pop("tls", False) else "http"
    return absolute_location(
        location,
        settings,
        server_name="name",
        host=host,
        scheme=scheme,
        local_addr="10.0.0.1",
        local_port=8080,
    )


def test_absolute_location() -> None:
    assert absolute("/p?q") == "http://h:8080/p?q"
    assert absolute("/p", host=None) == "http://10.0.0.1:8080/p"
    assert absolute("/p", host="") == "http://10.0.0.1:8080/p"
    assert absolute("/p", server_name_in_redirect=True) == "http://name:8080/p"
    assert absolute("/p", port_in_redirect=False) == "http://h/p"
    assert absolute("/p", absolute_redirect=False) == "/p"
    assert absolute("http://x/p") == "http://x/p"
    assert absolute("p") == "p"
    base = LocationSettings()
    kw = {"server_name": "n", "host": "h", "local_addr": "a"}
    assert absolute_location("/", base, scheme="http", local_port=80, **kw) == "http://h/"
    assert absolute_location("/", base, scheme="https", local_port=443, **kw) == "https://h/"
    # The other scheme's default port is not left out.
    assert absolute_location("/", base, scheme="https", local_port=80, **kw) == "https://h:80/"
    assert absolute_location("/", base, scheme="http", local_port=443, **kw) == "http://h:443/"


def settings_at(tmp_path: Path, conf: str) -> dict[str, LocationSettings]:
    """Each location's settings (by name, nested ones too) in ``conf``'s only server."""
    (tmp_path / "nginx.conf").write_text(f"events {{}}\nhttp {{\n{conf}\n}}\n")
    (server,) = load("nginx.conf", prefix=str(tmp_path)).http.servers
    out = {"": server.settings}

    def walk(locations: tuple[Location, ...]) -> None:
        for loc in locations:
            out[loc.name] = loc.settings
            walk(loc.locations)

    walk(server.locations)
    return out


def rules_of(s: LocationSettings) -> list[tuple[str, str]]:
    return [(r.pattern.raw if r.pattern else "~", r.replacement.raw) for r in s.proxy_redirects]


def test_default_and_merge(tmp_path: Path) -> None:
    got = settings_at(
        tmp_path,
        """
  server {
    listen 127.0.0.1:0;
    location /one/ {
      proxy_pass http://127.0.0.1:81/two/;
      location /one/in/ { proxy_pass http://127.0.0.1:81/three/; }
    }
    location /bare/ { proxy_pass http://127.0.0.1; }
    location /noproxy/ { }
    location /off/ {
      proxy_pass http://127.0.0.1/;
      proxy_redirect off;
      location /off/in/ { proxy_pass http://127.0.0.1/x/; }
      location /off/on/ { proxy_pass http://127.0.0.1/x/; proxy_redirect http://a/ /b/; }
    }
  }""",
    )
    assert rules_of(got["/one/"]) == [("http://127.0.0.1:81/two/", "/one/")]
    # The nested location inherits its parent's merged list, the parent's default.
    assert rules_of(got["/one/in/"]) == [("http://127.0.0.1:81/two/", "/one/")]
    assert rules_of(got["/bare/"]) == [("http://127.0.0.1/", "/")]
    assert rules_of(got["/noproxy/"]) == [] and rules_of(got[""]) == []
    assert rules_of(got["/off/"]) == [] and rules_of(got["/off/in/"]) == []
    assert rules_of(got["/off/on/"]) == [("http://a/", "/b/")]


def test_server_rules_are_inherited_instead_of_the_default(tmp_path: Path) -> None:
    got = settings_at(
        tmp_path,
        """
  proxy_redirect ~^http://x/(.*) /$1;
  server {
    listen 127.0.0.1:0;
    location /a/ { proxy_pass http://127.0.0.1/z/; }
    location /b/ { proxy_pass http://127.0.0.1/z/; proxy_redirect default; proxy_redirect / /q/; }
  }""",
    )
    assert rules_of(got["/a/"]) == [("~", "/$1")]
    assert rules_of(got["/b/"]) == [("http://127.0.0.1/z/", "/b/"), ("/", "/q/")]


def test_default_with_variables_in_proxy_pass_is_refused(tmp_path: Path) -> None:
    from wsgate.config.directives import TABLE
    from wsgate.config.level import Level
    from wsgate.config.loader import Loader
    from wsgate.config.model import ProxyPass, Source
    from wsgate.config.parse import Stmt
    from wsgate.errors import ConfigError

    ld = Loader(prefix=str(tmp_path), conf_file=str(tmp_path / "nginx.conf"))
    level = Level(ld, None)
    src = Source("t.conf", 3)
    level.own["LocationSettings.proxy_pass"] = (ProxyPass("http://$h", "http", "", 80, None), src)
    (d,) = TABLE["proxy_redirect"]
    with pytest.raises(ConfigError, match='"proxy_redirect default" cannot be used with'):
        level.set(Stmt("proxy_redirect", ["default"], src, None), d)
    # And it makes no default of its own.
    assert level.value(d) == ()


def test_trailers_and_framing() -> None:
    from wsgate.config.model import AddHeader

    t = (AddHeader("X-A", compile_template("$v")), AddHeader("X-B", compile_template("b"), True))
    s = LocationSettings(add_trailers=t)
    assert chunked_trailer(200, "GET", "1.1", s, lookup) == [("X-A", "var"), ("X-B", "b")]
    assert chunked_trailer(404, "GET", "1.1", s, lookup) == [("X-B", "b")]
    one = LocationSettings(add_trailers=t[:1])
    assert chunked_trailer(404, "GET", "1.1", one, lookup) is None
    no_chunks = LocationSettings(add_trailers=t, chunked_transfer_encoding=False)
    assert chunked_trailer(200, "GET", "1.1", no_chunks, lookup) is None
    for status, method, version in ((200, "HEAD", "1.1"), (200, "GET", "1.0"), (204, "GET", "1.1")):
        assert chunked_trailer(status, method, version, s, lookup) is None
    assert last_chunk() == b"0\r\n\r\n"
    assert last_chunk([("X", "1")]) == b"0\r\nX: 1\r\n\r\n"
    assert client_framing("GET", "1.1", 200, 8, True, trailers=True).chunked
    assert not client_framing("GET", "1.0", 200, 8, True, trailers=True).chunked
    assert not client_framing("GET", "1.1", 200, 8, True).chunked
    # chunked_transfer_encoding off: no chunks, a body of unknown length ends the connection.
    plan = client_framing("GET", "1.1", 200, None, True, trailers=True, chunked=False)
    assert not plan.chunked and not plan.keep_alive
    assert client_framing("GET", "1.1", 200, 8, True, trailers=True, chunked=False).keep_alive


def test_proxy_ignore_headers_values(tmp_path: Path) -> None:
    """``ngx_conf_set_bitmask_slot``: any case, names kept as nginx spells them, a repeated
    one a ``[warn]``; directives of one level add up."""
    (tmp_path / "nginx.conf").write_text(
        "events {}\nhttp {\n proxy_ignore_headers x-accel-expires Vary;\n"
        " proxy_ignore_headers VARY set-cookie;\n server { listen 127.0.0.1:0; }\n}\n"
    )
    config = load("nginx.conf", prefix=str(tmp_path))
    (server,) = config.http.servers
    assert server.settings.proxy_ignore_headers == ("X-Accel-Expires", "Vary", "Set-Cookie")
    assert any('duplicate value "VARY"' in w and ":4" in w for w in config.warnings)


def test_repeated_single_fields_are_dropped() -> None:
    """nginx 1.23+: a second Location (Expires, Content-Type...) from an upstream is ignored
    with a [warn]; fields that may repeat stay."""
    from wsgate.http.headers import single_fields

    headers = [
        ("Location", "/a"),
        ("Set-Cookie", "a=1"),
        ("location", "/b"),
        ("Set-Cookie", "b=2"),
        ("Expires", "foo"),
        ("Expires", "bar"),
    ]
    out, warnings = single_fields(headers)
    assert out == [
        ("Location", "/a"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Expires", "foo"),
    ]
    assert warnings == [
        'upstream sent duplicate header line: "location: /b", previous value: "Location: /a", '
        "ignored while reading response header from upstream",
        'upstream sent duplicate header line: "Expires: bar", previous value: "Expires: foo", '
        "ignored while reading response header from upstream",
    ]
    same = [("Location", "/a"), ("X", "1"), ("X", "2")]
    assert single_fields(same) == (same, []) and single_fields(same)[0] is same


def test_add_header_inherit(tmp_path: Path) -> None:
    """``add_header_inherit``/``add_trailer_inherit`` (nginx 1.29.3): ``on`` is
    all-or-nothing, ``off`` inherits nothing, ``merge`` appends the outer level's; the mode
    itself is inherited."""
    got = settings_at(
        tmp_path,
        """
  add_header X-Http 1;
  add_trailer T-Http 1;
  server {
    listen 127.0.0.1:0;
    add_header X-Srv 1;
    location /on/ { add_header X-On 1; }
    location /none/ { }
    location /off/ { add_header_inherit off; }
    location /merge/ {
      add_header_inherit merge;
      add_trailer_inherit merge;
      add_header X-M 1;
      add_trailer T-M 1;
      location /merge/in/ { add_header X-In 1; }
      location /merge/none/ { }
    }
  }""",
    )

    def names(s: LocationSettings, trailers: bool = False) -> list[str]:
        return [h.name for h in (s.add_trailers if trailers else s.add_headers)]

    assert names(got[""]) == ["X-Srv"]
    assert names(got["/on/"]) == ["X-On"]
    assert names(got["/none/"]) == ["X-Srv"]
    assert names(got["/off/"]) == []
    assert names(got["/merge/"]) == ["X-M", "X-Srv"]
    assert names(got["/merge/in/"]) == ["X-In", "X-M", "X-Srv"]
    assert names(got["/merge/none/"]) == ["X-M", "X-Srv"]
    assert names(got["/merge/"], True) == ["T-M", "T-Http"]
    assert names(got["/off/"], True) == ["T-Http"]
