"""Configuration loading: good files, nginx's inheritance, and errors with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsgate.config.loader import load
from wsgate.config.model import Config
from wsgate.config.script import Return
from wsgate.config.template import compile_template
from wsgate.config.units import parse_size, parse_time
from wsgate.config.variables import RequestContext
from wsgate.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def conf(tmp_path: Path, text: str, name: str = "nginx.conf") -> Config:
    (tmp_path / name).write_text(text)
    return load(name, prefix=str(tmp_path))


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        conf(tmp_path, text)
    return str(info.value)


def test_walkthrough_example_loads() -> None:
    config = load("examples/websocket.conf", prefix=str(ROOT))
    (server,) = config.http.servers
    assert [(lst.host, lst.port) for lst in server.listens] == [("0.0.0.0", 8020)]
    (loc,) = server.locations
    pp = loc.settings.proxy_pass
    assert pp is not None and pp.upstream == "websocket" and pp.uri is None
    assert pp.proxy_host == "websocket"
    assert [h.name for h in loc.settings.proxy_set_headers] == ["Upgrade", "Connection"]
    assert config.http.upstreams["websocket"].servers[0].port == 8010
    assert config.pid == str(ROOT / "run" / "wsgate.pid")


def test_wsapp_example_loads() -> None:
    config = load("examples/wsapp.conf", prefix=str(ROOT))
    (loc,) = config.http.servers[0].locations
    assert loc.name == "/wsapp/"
    assert loc.settings.proxy_set_headers[1].value.raw == "Upgrade"


def test_include_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "up.conf").write_text("upstream b { server 127.0.0.1:9 weight=3; }\n")
    config = conf(
        tmp_path,
        "pid run/x.pid;\nevents {}\nhttp {\n include up.conf;\n"
        " server { listen 127.0.0.1:0; location / { proxy_pass http://b; } }\n}\n",
    )
    assert config.http.upstreams["b"].servers[0].weight == 3
    assert config.pid == str(tmp_path / "run" / "x.pid")
    assert [f for f, _ in config.files] == [str(tmp_path / "nginx.conf"), str(tmp_path / "up.conf")]


def test_proxy_set_header_inheritance_is_all_or_nothing(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        """
http {
  proxy_set_header X-A a;
  proxy_set_header X-B b;
  proxy_read_timeout 5s;
  server {
    listen 127.0.0.1:0;
    location /inherit { proxy_pass http://127.0.0.1:1; }
    location /own { proxy_set_header X-C c; proxy_pass http://127.0.0.1:1;
                    proxy_read_timeout 1m30s; }
  }
}
""",
    )
    inherit, own = config.http.servers[0].locations
    assert [h.name for h in inherit.settings.proxy_set_headers] == ["X-A", "X-B"]
    assert [h.name for h in own.settings.proxy_set_headers] == ["X-C"]
    assert inherit.settings.proxy_read_timeout == 5.0
    assert own.settings.proxy_read_timeout == 90.0


def test_defaults_follow_current_nginx(tmp_path: Path) -> None:
    config = conf(tmp_path, "http { server { location / { proxy_pass http://127.0.0.1:1; } } }")
    s = config.http.servers[0].locations[0].settings
    assert s.proxy_http_version == "1.1"
    assert (s.proxy_read_timeout, s.proxy_send_timeout, s.send_timeout) == (60.0, 60.0, 60.0)
    assert s.keepalive_timeout == 75.0
    assert config.http.servers[0].listens[0].port == 80


def test_max_headers(tmp_path: Path) -> None:
    """nginx 1.29.8+: ``max_headers`` in http or server, 1000 by default, 0 allowed."""
    servers = conf(
        tmp_path,
        "http { max_headers 50; server { } server { max_headers 0; } }",
    ).http.servers
    assert [s.max_headers for s in servers] == [50, 0]
    assert conf(tmp_path, "http { server { } }").http.servers[0].max_headers == 1000
    assert "max_headers" in error(tmp_path, "http { server { location / { max_headers 1; } } }")


def test_nested_locations_and_modifiers(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        """
http { server {
  location = /exact { return 204; }
  location ^~ /static/ { return 200 s; }
  location ~* \\.(png|jpg)$ { return 200 img; }
  location /a/ { location /a/b/ { return 200 ab; } location ~ ^/a/c { return 200 ac; } }
} }
""",
    )
    exact, static, rx, a = config.http.servers[0].locations
    assert exact.is_exact and static.is_noregex and rx.is_regex and rx.regex is not None
    assert rx.regex.search("/X.PNG")
    assert [loc.name for loc in a.locations] == ["/a/b/", "^/a/c"]


def test_server_names_are_classified(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        "http { server { server_name Example.org *.example.org "
        ".example.net mail.* ~^(?<user>.+)\\.example\\.com$; } }",
    )
    kinds = [(n.kind, n.value) for n in config.http.servers[0].names]
    assert kinds[:4] == [
        ("exact", "example.org"),
        ("prefix_wildcard", ".example.org"),
        ("prefix_wildcard", ".example.net"),
        ("suffix_wildcard", "mail."),
    ]
    regex = config.http.servers[0].names[4].regex
    assert regex is not None and regex.search("bob.example.com").group("user") == "bob"


def test_map_exact_regex_default_hostnames(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        """
http {
  map $http_upgrade $connection_upgrade { default upgrade; '' close; }
  map $uri $m { ~^/u/(?<id>\\d+)$ user-$id; ~*^/CASE/(.*)$ c-$1; /x exact; default d; }
  map $http_host $h { hostnames; *.example.org wild; www.* front; example.com ex; }
  server { location / { return 200 $m; } }
}
""",
    )
    maps = config.http.maps

    def value(var: str, **kw: object) -> str:
        ctx = RequestContext(maps=maps)
        for k, v in kw.items():
            setattr(ctx, k, v)
        return ctx.lookup(var)

    assert value("connection_upgrade", headers=[("Upgrade", "websocket")]) == "upgrade"
    assert value("connection_upgrade", headers=[]) == "close"
    assert value("m", uri="/u/42") == "user-42"
    assert value("m", uri="/case/Zed") == "c-Zed"
    assert value("m", uri="/X") == "exact"  # exact keys are case-insensitive (ngx_hash_strlow)
    assert value("m", uri="/other") == "d"
    assert value("h", headers=[("Host", "a.b.example.org")]) == "wild"
    assert value("h", headers=[("Host", "www.foo.net")]) == "front"
    assert value("h", headers=[("Host", "EXAMPLE.com.")]) == "ex"
    assert value("h", headers=[("Host", "nothing")]) == ""


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ("http {\n server {\n  foo bar;\n }\n}\n", 'unknown directive "foo"', 3),
        (
            "http {\n  ssl_crl crl.pem;\n}\n",
            '"ssl_crl" directive is not supported by wsgate',
            2,
        ),
        (
            "http {\n server {\n  fastcgi_pass 127.0.0.1:9000;\n }\n}\n",
            '"fastcgi_pass" directive is not supported by wsgate',
            3,
        ),
        (
            "http {\n limit_conn nope 1;\n}\n",
            'zero size shared memory zone "nope"',
            2,
        ),
        (
            "http {\n server {\n  listen 127.0.0.1:0 ssl;\n }\n}\n",
            'no "ssl_certificate" is defined for the "listen ... ssl" directive',
            3,
        ),
        (
            "http {\n server {\n  location ~ ^/x { proxy_pass http://127.0.0.1:1/y; }\n }\n}\n",
            '"proxy_pass" cannot have URI part in location given by regular expression',
            3,
        ),
        (
            "http {\n server {\n  location / { proxy_pass http://127.0.0.1:1; }\n"
            "  return 200 $nope;\n }\n}\n",
            'unknown "nope" variable',
            4,
        ),
        ("http {\n proxy_read_timeout 5x;\n}\n", '"proxy_read_timeout" directive invalid value', 2),
        # ngx_conf_set_num_slot's and ngx_conf_set_bufs_slot's words
        (
            "http {\n keepalive_requests 1x;\n}\n",
            '"keepalive_requests" directive invalid number',
            2,
        ),
        (
            "http {\n large_client_header_buffers x 8k;\n}\n",
            '"large_client_header_buffers" directive invalid value',
            2,
        ),
        (
            "events {\n worker_connections 1;\n worker_connections 2;\n}\n",
            '"worker_connections" directive is duplicate',
            3,
        ),
        # http's server is NGX_CONF_BLOCK|NGX_CONF_NOARGS, upstream's server NGX_CONF_1MORE
        ("http {\n server x { }\n}\n", 'invalid number of arguments in "server" directive', 2),
        ("events {}\nevents {}\n", '"events" directive is duplicate', 2),
        (
            "http {\n server {\n  location / {\n   listen 80;\n  }\n }\n}\n",
            '"listen" directive is not allowed here',
            4,
        ),
        (
            "http {\n upstream u {\n  server 127.0.0.1:1 slow_start=3s;\n }\n}\n",
            'invalid parameter "slow_start=3s"',
            3,
        ),
        ("http {\n server {\n", 'unexpected end of file, expecting "}"', 2),
        ("http {\n server {\n  location / { return 200 }\n }\n}\n", 'unexpected "}"', 3),
        ('http {\n server {\n  location / { return 200 "x"\n}\n }\n}\n', 'unexpected "}"', 4),
        (
            "http {\n proxy_redirect default;\n}\n",
            '"proxy_redirect default" should be placed after the "proxy_pass" directive',
            2,
        ),
    ],
)
def test_errors_name_directive_file_and_line(
    tmp_path: Path, text: str, message: str, line: int
) -> None:
    msg = error(tmp_path, text)
    assert message in msg
    assert msg.endswith(f"in {tmp_path / 'nginx.conf'}:{line}")


def test_no_op_directives_warn(tmp_path: Path) -> None:
    config = conf(tmp_path, "http {\n aio on;\n tcp_nopush on;\n server { } \n}\n")
    assert config.warnings == (
        f'"aio" directive has no effect in wsgate and is ignored in {tmp_path}/nginx.conf:2',
        f'"tcp_nopush" directive has no effect in wsgate and is ignored in {tmp_path}/nginx.conf:3',
    )


def test_missing_file_is_an_open_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load("absent.conf", prefix=str(tmp_path))
    assert (
        str(info.value) == f'open() "{tmp_path}/absent.conf" failed (2: No such file or directory)'
    )


def test_globals_come_first_and_duplicates_are_errors(tmp_path: Path) -> None:
    (tmp_path / "nginx.conf").write_text("worker_processes 2;\n")
    with pytest.raises(ConfigError) as info:
        load("nginx.conf", prefix=str(tmp_path), globals_="worker_processes 1;")
    assert (
        str(info.value) == f'"worker_processes" directive is duplicate in {tmp_path}/nginx.conf:1'
    )
    with pytest.raises(ConfigError) as info:
        load("nginx.conf", prefix=str(tmp_path), globals_="bogus 1;")
    assert str(info.value) == 'unknown directive "bogus" in command line'
    config = load("nginx.conf", prefix=str(tmp_path), globals_="daemon off;")
    assert config.daemon is False and config.worker_processes == 2


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("60", 60.0),
        ("60s", 60.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
    ],
)
def test_parse_time(text: str, seconds: float) -> None:
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["", "x", "1x", "30s1m", "1.5s"])
def test_parse_time_rejects(text: str) -> None:
    assert parse_time(text) is None


def test_parse_size() -> None:
    assert (parse_size("8k"), parse_size("1M"), parse_size("10"), parse_size("1g")) == (
        8192,
        1048576,
        10,
        1024**3,
    )
    assert parse_size("1t") is None


def test_templates() -> None:
    t = compile_template("$scheme://${host}x$1$http_x_y")
    assert t.variables == ("scheme", "host", "1", "http_x_y")
    assert t.render(lambda n: f"<{n}>") == "<scheme>://<host>x<1><http_x_y>"
    assert compile_template("plain").is_static


def test_variables_from_request() -> None:
    ctx = RequestContext(remote_addr="10.0.0.9", remote_port=5555, server_port=8020)
    ctx.headers = [("Host", "h.test"), ("X-Forwarded-For", "1.1.1.1"), ("Cookie", "a=1; b=2")]
    ctx.args = "x=1&Y=2"
    ctx.request_uri = "/p?x=1&Y=2"
    assert ctx.lookup("proxy_add_x_forwarded_for") == "1.1.1.1, 10.0.0.9"
    assert ctx.lookup("arg_y") == "2"
    assert ctx.lookup("cookie_b") == "2"
    assert ctx.lookup("http_x_forwarded_for") == "1.1.1.1"
    assert ctx.lookup("is_args") == "?"
    assert ctx.lookup("remote_port") == "5555"
    ctx.host = "h.test"
    assert ctx.lookup("host") == "h.test"


def test_upstream_block_methods_parameters_and_health_check(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        """
http {
  upstream a {
    least_conn;
    server 127.0.0.1:1 weight=3 max_fails=2 fail_timeout=30s max_conns=10;
    server 127.0.0.1:2 backup;
    server 127.0.0.1:3 down;
    server unix:/tmp/wsgate-test.sock;
    keepalive 16; keepalive_requests 100; keepalive_timeout 30s; keepalive_time 10m;
    health_check interval=2s timeout=1s fails=3 passes=2 uri=/health type=websocket status=101;
  }
  upstream b { hash $remote_addr consistent; server 127.0.0.1:1; }
  upstream c { random two least_conn; server 127.0.0.1:1; }
  upstream d { ip_hash; server 127.0.0.1:1; }
  server { location / { proxy_pass http://a; }
           location /u { proxy_pass http://unix:/tmp/s.sock:/x; } }
}
""",
    )
    a = config.http.upstreams["a"]
    s1, s2, s3, s4 = a.servers
    assert (a.method, s1.weight, s1.max_fails, s1.fail_timeout, s1.max_conns) == (
        "least_conn",
        3,
        2,
        30.0,
        10,
    )
    assert s2.backup and s3.down and s4.is_unix and s4.host == "/tmp/wsgate-test.sock"
    assert (a.keepalive, a.keepalive_requests, a.keepalive_timeout, a.keepalive_time) == (
        16,
        100,
        30.0,
        600.0,
    )
    hc = a.health_check
    assert hc is not None and (
        hc.interval,
        hc.timeout,
        hc.fails,
        hc.passes,
        hc.uri,
        hc.kind,
        hc.status,
    ) == (2.0, 1.0, 3, 2, "/health", "websocket", (101,))
    b = config.http.upstreams["b"]
    assert b.method == "hash" and b.consistent and b.hash_key is not None
    assert b.hash_key.raw == "$remote_addr"
    c = config.http.upstreams["c"]
    assert c.method == "random" and c.random_two and c.random_method == "least_conn"
    assert config.http.upstreams["d"].method == "ip_hash"
    unix_loc = config.http.servers[0].locations[1].settings.proxy_pass
    assert unix_loc is not None and unix_loc.uri == "/x" and unix_loc.proxy_host == "localhost"
    assert unix_loc.servers[0].host == "/tmp/s.sock"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            "ip_hash; server 127.0.0.1:1 backup;",
            'balancing method "ip_hash" does not support parameter "backup"',
        ),
        ("least_conn; ip_hash; server 127.0.0.1:1;", "load balancing method redefined"),
        ("hash $uri nonsense; server 127.0.0.1:1;", 'invalid parameter "nonsense"'),
        ("server 127.0.0.1:1 weight=0;", 'invalid parameter "weight=0"'),
        ("server 127.0.0.1:1 fail_timeout=x;", 'invalid parameter "fail_timeout=x"'),
        ("server 127.0.0.1:1; health_check interval=0s;", 'invalid parameter "interval=0s"'),
        ("server 127.0.0.1:1; health_check type=tcp;", 'invalid parameter "type=tcp"'),
        ("server 127.0.0.1:1; sticky cookie srv_id;", '"sticky" directive is not supported'),
    ],
)
def test_upstream_errors(tmp_path: Path, block: str, message: str) -> None:
    assert message in error(tmp_path, f"http {{\n upstream u {{\n {block}\n }}\n}}\n")


def test_escapes_in_tokens_follow_nginx(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        'http { server { return 200 "a\\nb\\tc\\\\d\\"e"; location ~ \\.php$ { return 204; } } }',
    )
    (ret,) = config.http.servers[0].settings.rewrite
    assert isinstance(ret, Return) and ret.text is not None
    assert ret.text.raw == 'a\nb\tc\\d"e'
    regex = config.http.servers[0].locations[0].regex
    assert regex is not None and regex.pattern == "\\.php$"


def test_map_result_is_cached_unless_volatile(tmp_path: Path) -> None:
    """nginx caches a map's value for the request (an internal redirect keeps it:
    map_volatile.t "map"); ``volatile`` evaluates it at each use ("map volatile")."""
    config = conf(
        tmp_path,
        """
http {
  map $uri $kept { /1/ /1/redirect; default other; }
  map $uri $fresh { volatile; /2/ /2/redirect; default other; }
  server { location / { return 200 $kept$fresh; } }
}
""",
    )
    assert config.http.maps["fresh"].volatile and not config.http.maps["kept"].volatile
    ctx = RequestContext(maps=config.http.maps)
    ctx.uri = "/1/"
    assert ctx.lookup("kept") == "/1/redirect"
    ctx.uri = "/2/"
    assert ctx.lookup("fresh") == "/2/redirect"
    ctx.uri = "/1/redirect"  # as an internal redirect sets it
    assert (ctx.lookup("kept"), ctx.lookup("fresh")) == ("/1/redirect", "other")


def test_map_keys_are_unescaped_like_every_token(tmp_path: Path) -> None:
    """nginx's ``ngx_conf_read_token`` unescapes every token, a map key too: ``"~\\\\x00"``
    is the regex ``\\x00`` (proxy_protocol2_tlv.t's SSL_BINARY)."""
    config = conf(
        tmp_path,
        'http { map $arg_a $bin { "~\\\\x00" "true"; } server { location / { return 200; } } }',
    )
    ((compiled, _),) = config.http.maps["bin"].regexes
    assert compiled.pattern == "\\x00" and compiled.search("a\x00b") is not None


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("http://[::1]:8080", "[::1]:8080"),
        ("http://[::1]", "[::1]"),
        ("http://[::1]:80/x", "[::1]"),
        ("http://127.0.0.1:8081", "127.0.0.1:8081"),
    ],
)
def test_proxy_host_keeps_the_brackets_of_an_ipv6_address(
    tmp_path: Path, url: str, want: str
) -> None:
    """nginx's ``$proxy_host`` (the ``Host`` sent) is the URL's ``u->host``, brackets included:
    ``::1:8080`` would be an invalid Host (upstream_ip_hash_ipv6.t "ip_hash realip via ipv6")."""
    c = conf(tmp_path, f"http {{ server {{ location / {{ proxy_pass {url}; }} }} }}")
    pp = c.http.servers[0].locations[0].settings.proxy_pass
    assert pp is not None and pp.proxy_host == want


def test_a_braced_variable_ends_its_word(tmp_path: Path) -> None:
    """``${name}`` followed by whitespace ends the token, as in nginx's ngx_conf_read_token
    (crossplane 0.5.8 glued the next word on); quoted whitespace and ``\\ `` stay."""
    from wsgate.config.parse import parse_file

    (tmp_path / "n.conf").write_text('a x${b} c;\nd "x${b} c";\ne ${f}\n  g;\nh x\\ ${i} j;\n')
    stmts, _ = parse_file(str(tmp_path / "n.conf"))
    assert [(s.name, s.args) for s in stmts] == [
        ("a", ["x${b}", "c"]),
        ("d", ["x${b} c"]),
        ("e", ["${f}", "g"]),
        ("h", ["x\\ ${i}", "j"]),
    ]


def test_server_tokens_on_off_build(tmp_path: Path) -> None:
    """ngx_http_core_server_tokens, an enum (any case): ``build`` shows what ``on`` shows,
    wsgate having no ``--build=`` name (as nginx configured without one)."""
    cfg = conf(
        tmp_path,
        "events {} http { server_tokens off; server { listen 8080;"
        " location /b { server_tokens build; } location /B { server_tokens BUILD; }"
        " location /on { server_tokens on; } location /inherited { } } }",
    )
    (server,) = cfg.http.servers
    got = {loc.name: loc.settings.server_tokens for loc in server.locations}
    assert got == {"/b": True, "/B": True, "/on": True, "/inherited": False}
    words = error(tmp_path, "events {} http { server_tokens full; }")
    assert 'invalid value "full"' in words and "nginx.conf:1" in words
