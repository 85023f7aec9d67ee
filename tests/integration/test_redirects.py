"""``proxy_redirect``, ``proxy_cookie_*``, ``absolute_redirect``/``server_name_in_redirect``/
``port_in_redirect`` and ``add_trailer`` through a real wsgate, with upstreams on loopback.

The cases follow nginx-tests ``proxy_redirect.t``, ``proxy_cookie.t``,
``proxy_cookie_flags.t``, ``http_absolute_redirect.t`` and ``trailers.t``.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import WsgateProcess
from tests.integration.loopback import (
    HOST,
    Backend,
    Loop,
    Request,
    fixed,
    loop_fixture,
    ws_handshake,
)
from wsgate.config.loader import load
from wsgate.errors import ConfigError

bg = pytest.fixture(loop_fixture)


def exchange(port: int, request: str) -> str:
    """The whole response to ``request`` (sent as is) on a new connection, read to its close."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(request.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode("latin-1")


def get(port: int, path: str, host: str = "t", version: str = "1.1", method: str = "GET") -> str:
    return exchange(
        port, f"{method} {path} HTTP/{version}\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )


def field(response: str, name: str) -> list[str]:
    head = response.split("\r\n\r\n", 1)[0]
    return [
        x.split(": ", 1)[1]
        for x in head.split("\r\n")[1:]
        if x.lower().startswith(name.lower() + ":")
    ]


def redirecting(base: str) -> Callable[[Backend, Request], bytes]:
    """302 to ``base`` + the request's path, with a Refresh saying the same."""

    def respond(backend: Backend, request: Request) -> bytes:
        url = base + request.path
        return (
            f"HTTP/1.1 302 Found\r\nLocation: {url}\r\nRefresh: 7; URL={url}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    return respond


def test_proxy_redirect(wsgate: Callable[..., WsgateProcess], bg: Loop) -> None:
    up = bg.backend("up", redirecting("http://upstream.test:81"))
    u = f"127.0.0.1:{up.port}"
    gw = wsgate(f"""
events {{}}
http {{
  map $uri $some_var {{ default var_here; }}
  server {{
    listen 127.0.0.1:0;
    server_name localhost;
    location / {{
      proxy_pass http://{u};
      proxy_redirect http://upstream.test:81/var_in_second/ /$some_var/;
      proxy_redirect http://upstream.test:81/$some_var/ /replaced/;
      proxy_redirect ~^(.+)/regex_w_([^/]+) $1/$2/test.html;
      proxy_redirect ~*re+gexp? /replaced/test.html;
    }}
    location /impl_default/ {{ proxy_pass http://{u}/replace_this/; }}
    location /expl_default/ {{
      proxy_pass http://{u}/replace_this/;
      proxy_redirect wrong wrong;
      proxy_redirect default;
    }}
    location /off/ {{
      proxy_pass http://{u}/;
      proxy_redirect off;
      location /off/on/ {{
        proxy_pass http://{u};
        proxy_redirect http://upstream.test:81/off/ /;
        location /off/on/on/ {{ proxy_pass http://{u}; }}
      }}
    }}
    location /noabs/ {{
      proxy_pass http://{u};
      proxy_redirect http://upstream.test:81/ /;
      absolute_redirect off;
    }}
  }}
}}
""")
    p = gw.port

    def loc(path: str) -> str:
        return field(get(p, path), "Location")[0]

    def refresh(path: str) -> str:
        return field(get(p, path), "Refresh")[0]

    # No rule matches: the Location passes as it is (and is not made absolute).
    assert loc("/elsewhere/a") == "http://upstream.test:81/elsewhere/a"
    assert loc("/var_in_second/test.html") == f"http://t:{p}/var_here/test.html"
    assert refresh("/var_in_second/test.html") == "7; URL=/var_here/test.html"
    assert loc("/var_here/test.html") == f"http://t:{p}/replaced/test.html"
    assert loc("/ReeegEX/test.html") == f"http://t:{p}/replaced/test.html"
    assert refresh("/ReeegEX/test.html") == "7; URL=/replaced/test.html"
    # A regex's result that is absolute stays as it is.
    assert loc("/regex_w_captures/test.html") == "http://upstream.test:81/captures/test.html"
    assert loc("/off/test.html") == "http://upstream.test:81/test.html"
    assert loc("/off/on/test.html") == f"http://t:{p}/on/test.html"
    assert loc("/off/on/on/test.html") == f"http://t:{p}/on/on/test.html"
    assert loc("/noabs/x") == "/noabs/x"


def test_a_repeated_location_is_ignored(wsgate: Callable[..., WsgateProcess], bg: Loop) -> None:
    up = bg.backend(
        "up",
        fixed(
            b"HTTP/1.1 302 Found\r\nLocation: http://u/first\r\nLocation: http://u/second\r\n"
            b"Content-Length: 0\r\n\r\n"
        ),
    )
    gw = wsgate(f"""
events {{}}
http {{
  server {{
    listen 127.0.0.1:0;
    location / {{ proxy_pass http://127.0.0.1:{up.port}; proxy_redirect http://u/ /; }}
  }}
}}
""")
    assert field(get(gw.port, "/"), "Location") == [f"http://t:{gw.port}/first"]
    gw.wait_log(
        r'\[warn\] .*upstream sent duplicate header line: "Location: http://u/second", '
        r'previous value: "Location: http://u/first", ignored while reading response header '
        r"from upstream, client: .*upstream: \"http://127\.0\.0\.1:\d+/\""
    )


def test_proxy_redirect_default_and_refresh(wsgate: Callable[..., WsgateProcess], bg: Loop) -> None:
    """proxy_redirect.t's defaults: the upstream redirects to itself."""
    holder: dict[str, int] = {}

    def respond(backend: Backend, request: Request) -> bytes:
        url = f"http://127.0.0.1:{holder['port']}{request.path}"
        return (
            f"HTTP/1.1 301 Moved\r\nLocation: {url}\r\nRefresh: 7; url={url}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    up = bg.backend("up", respond)
    holder["port"] = up.port
    u = f"127.0.0.1:{up.port}"
    gw = wsgate(f"""
events {{}}
http {{
  server {{
    listen 127.0.0.1:0;
    location /impl_default/ {{ proxy_pass http://{u}/replace_this/; }}
    location /expl_default/ {{
      proxy_pass http://{u}/replace_this/;
      proxy_redirect wrong wrong;
      proxy_redirect default;
    }}
    location /nouri/ {{ proxy_pass http://{u}; }}
    location /inner/ {{
      proxy_pass http://{u}/outer/;
      location /inner/deeper/ {{ proxy_pass http://{u}/deeper/; }}
    }}
  }}
}}
""")
    p = gw.port
    r = get(p, "/impl_default/test.html", host="on")
    assert field(r, "Location") == [f"http://on:{p}/impl_default/test.html"]
    assert field(r, "Refresh") == ["7; url=/impl_default/test.html"]
    r = get(p, "/expl_default/test.html", host="on")
    assert field(r, "Location") == [f"http://on:{p}/expl_default/test.html"]
    assert field(r, "Refresh") == ["7; url=/expl_default/test.html"]
    assert field(get(p, "/nouri/x", host="on"), "Location") == [f"http://on:{p}/nouri/x"]
    # A nested location without rules of its own inherits its parent's default, made from
    # the parent's proxy_pass, not its own (ngx_http_proxy_merge_loc_conf).
    r = get(p, "/inner/deeper/x", host="on")
    assert field(r, "Location") == [f"http://127.0.0.1:{up.port}/deeper/x"]


def test_rewrite_directive_errors(tmp_path: Path) -> None:
    """nginx's words: "is duplicate" around ``off``, ``default`` before ``proxy_pass``,
    ``false`` (accepted with a warning before nginx 1.19.3)."""
    cases = {
        "location / { proxy_redirect default; proxy_pass http://127.0.0.1:1; }": (
            '"proxy_redirect default" should be placed after the "proxy_pass" directive'
        ),
        "location / { proxy_redirect off; proxy_redirect off; }": (
            '"proxy_redirect" directive is duplicate'
        ),
        "location / { proxy_redirect a b; proxy_redirect off; }": (
            '"proxy_redirect" directive is duplicate'
        ),
        "location / { proxy_cookie_path off; proxy_cookie_path a b; }": (
            '"proxy_cookie_path" directive is duplicate'
        ),
        "location / { proxy_redirect false; }": 'invalid parameter "false"',
        "location / { proxy_cookie_flags off; proxy_cookie_flags a secure; }": (
            '"proxy_cookie_flags" directive is duplicate'
        ),
        "location / { proxy_ignore_headers Location; }": 'invalid value "Location"',
    }
    for text, words in cases.items():
        (tmp_path / "nginx.conf").write_text(f"events {{}}\nhttp {{ server {{ {text} }} }}\n")
        with pytest.raises(ConfigError, match=re.escape(words)):
            load("nginx.conf", prefix=str(tmp_path))


def cookies(backend: Backend, request: Request) -> bytes:
    """Set-Cookie made of the query: ``c`` (the whole value) or ``domain`` and ``path``."""
    q = {k: v[0] for k, v in parse_qs(urlsplit(request.path).query).items()}
    value = q.get("c") or "v=path=domain=" + "".join(
        f"; {k.capitalize()}={q[k]}" for k in ("domain", "path") if k in q
    )
    return f"HTTP/1.1 200 OK\r\nSet-Cookie: {value}\r\nContent-Length: 0\r\n\r\n".encode()


def test_proxy_cookie_domain_path_flags(wsgate: Callable[..., WsgateProcess], bg: Loop) -> None:
    up = bg.backend("up", cookies)
    u = f"127.0.0.1:{up.port}"
    gw = wsgate(f"""
events {{}}
http {{
  server {{
    listen 127.0.0.1:0;
    server_name localhost;
    location / {{
      proxy_pass http://{u};
      proxy_cookie_domain www.example.org .example.com;
      proxy_cookie_domain .$server_name.com en.$server_name.org;
      proxy_cookie_domain ~^(.+)\\.com$ $1.org;
      proxy_cookie_path /path/ /new/;
      proxy_cookie_path /$server_name/ /new/$server_name/;
      proxy_cookie_path ~^/regex/(.+)$ /$1;
      proxy_cookie_path ~*^/caseless/(.+)$ /$1;
      proxy_cookie_flags a secure httponly samesite=none;
      proxy_cookie_flags d nosecure nohttponly nosamesite;
      proxy_cookie_flags ~BAR httponly;
      location /off/ {{
        proxy_pass http://{u};
        proxy_cookie_domain off;
        proxy_cookie_path off;
        proxy_cookie_flags off;
      }}
    }}
  }}
}}
""")
    p = gw.port

    def cookie(query: str, path: str = "/") -> str:
        return field(get(p, f"{path}?{query}"), "Set-Cookie")[0]

    assert cookie("domain=www.Example.org") == "v=path=domain=; Domain=example.com"
    assert cookie("domain=.LocalHost.com") == "v=path=domain=; Domain=.en.localhost.org"
    assert cookie("domain=www.example.COM") == "v=path=domain=; Domain=www.example.org"
    assert cookie("path=/path/test.html") == "v=path=domain=; Path=/new/test.html"
    assert cookie("path=/localhost/t") == "v=path=domain=; Path=/new/localhost/t"
    assert cookie("path=/regex/test.html") == "v=path=domain=; Path=/test.html"
    assert cookie("path=/CASEless/test.html") == "v=path=domain=; Path=/test.html"
    both = "domain=www.example.org&path=/path/test.html"
    assert cookie(both) == "v=path=domain=; Domain=example.com; Path=/new/test.html"
    assert cookie(both, "/off/") == "v=path=domain=; Domain=www.example.org; Path=/path/test.html"
    # Flags: set, rewritten in place, removed; a cookie nothing matches is left as it was.
    assert cookie("c=a=1;SameSite=Lax") == "a=1; SameSite=None; Secure; HttpOnly"
    assert cookie("c=d=1;secure;httponly;samesite=lax") == "d=1"
    assert cookie("c=nx=1;samesite=none") == "nx=1;samesite=none"
    assert cookie("c=foobarbaz=1") == "foobarbaz=1; HttpOnly"
    assert cookie("c=a=1", "/off/") == "a=1"


def test_rewriting_applies_to_a_101(wsgate: Callable[..., WsgateProcess], bg: Loop) -> None:
    """ngx_http_upstream_process_headers runs before the 101 is sent, as for any response."""
    up = bg.backend(
        "up",
        fixed(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Location: http://upstream.test/ws/x\r\nSet-Cookie: s=1; Path=/ws/\r\n\r\n"
        ),
    )
    gw = wsgate(f"""
events {{}}
http {{
  server {{
    listen 127.0.0.1:0;
    location /ws/ {{
      proxy_pass http://127.0.0.1:{up.port};
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection upgrade;
      proxy_redirect http://upstream.test/ws/ /socket/;
      proxy_cookie_path /ws/ /socket/;
      proxy_cookie_flags s secure;
    }}
  }}
}}
""")
    s, data = ws_handshake(gw.port, "/ws/", "h")
    s.close()
    head = data.decode()
    assert head.startswith("HTTP/1.1 101 "), head
    assert field(head, "Location") == [f"http://h:{gw.port}/socket/x"], head
    assert field(head, "Set-Cookie") == ["s=1; Path=/socket/; Secure"], head


def test_absolute_redirect_and_friends(wsgate: Callable[..., WsgateProcess]) -> None:
    """http_absolute_redirect.t's ``return`` and ``proxy_pass`` trailing-slash cases."""
    gw = wsgate("""
events {}
http {
  absolute_redirect off;
  server {
    listen 127.0.0.1:0;
    server_name on;
    absolute_redirect on;
    location /auto/ { proxy_pass http://127.0.0.1:1; }
    location "/auto sp/" { proxy_pass http://127.0.0.1:1; }
    location /return301 { return 301 /redirect; }
    location /return301/name { return 301 /redirect; server_name_in_redirect on; }
    location /return301/port { return 301 /redirect; port_in_redirect off; }
    location /full { return 302 http://elsewhere/x; }
  }
}
""")
    # http_absolute_redirect.t's second server, "off" (the same port there).
    off = wsgate("""
events {}
http {
  absolute_redirect off;
  server {
    listen 127.0.0.1:0;
    server_name off;
    location /auto/ { proxy_pass http://127.0.0.1:1; }
    location '/auto "#%<>?\\^`{|}/' { proxy_pass http://127.0.0.1:1; }
    location /return301 { return 301 /redirect; }
  }
}
""")
    p = gw.port

    def loc(host: str, path: str) -> list[str]:
        port = off.port if host == "off" else p
        return field(get(port, path, host=host, version="1.0"), "Location")

    assert loc("on", "/auto") == [f"http://on:{p}/auto/"]
    assert loc("on", "/auto?a=b") == [f"http://on:{p}/auto/?a=b"]
    assert loc("on", "/auto%20sp") == [f"http://on:{p}/auto%20sp/"]
    assert loc("on", "/auto%20sp?a=b") == [f"http://on:{p}/auto%20sp/?a=b"]
    assert loc("on", "/return301") == [f"http://on:{p}/redirect"]
    assert loc("host", "/return301/name") == [f"http://on:{p}/redirect"]
    assert loc("host", "/return301") == [f"http://host:{p}/redirect"]
    assert loc("host", "/return301/port") == ["http://host/redirect"]
    # No Host (HTTP/1.0): the local address.
    r = exchange(p, "GET /return301 HTTP/1.0\r\n\r\n")
    assert field(r, "Location") == [f"http://127.0.0.1:{p}/redirect"]
    # An absolute URL is sent as written, among the response's fields (after Connection).
    r = get(p, "/full", host="on")
    head = r.split("\r\n\r\n")[0].split("\r\n")
    assert head.index("Location: http://elsewhere/x") > head.index("Connection: close"), head
    assert loc("off", "/auto") == ["/auto/"]
    assert loc("off", "/auto?a=b") == ["/auto/?a=b"]
    assert loc("off", "/return301") == ["/redirect"]
    escaped = "/auto%20%22%23%25%3C%3E%3F%5C%5E%60%7B%7C%7D"
    assert loc("off", escaped) == [escaped + "/"]


def chunked_up(backend: Backend, request: Request) -> bytes:
    if "len" in request.path:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSEE-THIS"
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nSEE-THIS\r\n0\r\n\r\n"


def test_add_trailer(wsgate: Callable[..., WsgateProcess], bg: Loop) -> None:
    """trailers.t: only on a chunked HTTP/1.1 body, for nginx's statuses or ``always``; a
    known length becomes chunked so that the trailer can follow."""
    up = bg.backend("up", chunked_up)
    gw = wsgate(f"""
events {{}}
http {{
  server {{
    listen 127.0.0.1:0;
    server_name localhost;
    add_trailer X-Var $host;
    add_trailer X-Always $host always;
    add_trailer X-Empty '';
    add_trailer X-Complex $host:$host;
    location / {{ proxy_pass http://127.0.0.1:{up.port}; }}
    location /sent {{
      add_trailer X-Var $host;
      add_trailer X-Sent-Trailer $sent_trailer_x_var;
      add_trailer X-Sent-HTTP $sent_http_content_type;
      return 200 SEE-THIS;
    }}
    location /ret {{ return 200 SEE-THIS; }}
    location /nx {{ return 404; }}
    location /empty {{ add_trailer X-Var ''; proxy_pass http://127.0.0.1:{up.port}; }}
    location /length {{
      add_trailer X-Length $upstream_response_length;
      proxy_pass http://127.0.0.1:{up.port};
    }}
  }}
}}
""")
    p = gw.port
    crlf = "\r\n"
    for path in ("/t1", "/len", "/ret"):
        r = get(p, path, host="localhost")
        head, body = r.split(crlf * 2, 1)
        assert "Transfer-Encoding: chunked" in head and "Content-Length" not in head, r
        assert body == (
            f"8{crlf}SEE-THIS{crlf}0{crlf}X-Var: localhost{crlf}X-Always: localhost{crlf}"
            f"X-Complex: localhost:localhost{crlf}{crlf}"
        ), r
    # Each field sees the ones before it, and the head sent ($sent_trailer_*, $sent_http_*).
    r = get(p, "/sent", host="localhost")
    assert r.endswith(
        f"0{crlf}X-Var: localhost{crlf}X-Sent-Trailer: localhost{crlf}"
        f"X-Sent-HTTP: text/plain{crlf}{crlf}"
    ), r
    r = get(p, "/nx", host="localhost")
    assert r.endswith(f"{crlf}0{crlf}X-Always: localhost{crlf}{crlf}"), r
    assert "X-Var" not in r
    # HTTP/1.0: no chunks, so no trailer; HEAD: no body at all.
    r = get(p, "/len", host="localhost", version="1.0")
    assert r.endswith(f"{crlf}{crlf}SEE-THIS") and "X-Always" not in r, r
    r = get(p, "/t1", host="localhost", method="HEAD")
    assert "X-Always" not in r and r.endswith(crlf * 2), r
    # trailers.t's "upstream response variable": the body's length from the upstream.
    r = get(p, "/length", host="localhost")
    assert r.endswith(f"SEE-THIS{crlf}0{crlf}X-Length: 8{crlf}{crlf}"), r
    # A level with its own list: an empty value adds nothing, and nothing is inherited.
    r = get(p, "/empty", host="localhost")
    assert r.endswith(f"SEE-THIS{crlf}0{crlf}{crlf}"), r
