"""``add_header`` through a real wsgate, with real upstreams on loopback: inheritance per
level, nginx's status list and ``always``, variables, empty values, and every kind of
response (proxied, ``return``, redirects, error pages, ``stub_status``, a WebSocket 101).

The cases follow nginx-tests ``headers.t`` ("good/bad add_header", "add_header always empty").
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from tests.conftest import WsgateProcess
from tests.integration.loopback import HOST, Backend, Loop, Request, loop_fixture

bg = pytest.fixture(loop_fixture)


def by_path(backend: Backend, request: Request) -> bytes:
    """404 for /missing..., 200 otherwise, with a header of its own and an ETag."""
    code = b"404 Not Found" if "missing" in request.path else b"200 OK"
    return b'HTTP/1.1 %s\r\nContent-Length: 2\r\nX-Up: 1\r\nETag: "up"\r\n\r\nok' % code


def head_of(port: int, path: str, extra: str = "") -> str:
    """The response head for GET ``path`` on a new connection."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    return data.split(b"\r\n\r\n")[0].decode()


def fields(head: str) -> list[str]:
    return head.split("\r\n")[1:]


WS = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def test_add_header_levels_statuses_and_responses(
    wsgate: Callable[..., WsgateProcess], bg: Loop
) -> None:
    up = bg.backend("up", by_path, websocket=True)
    gw = wsgate(f"""
events {{}}
http {{
  add_header X-Http http;
  upstream backend {{ server 127.0.0.1:{up.port}; }}
  server {{
    listen 127.0.0.1:0;
    add_header X-URI $uri;
    add_header X-Always $uri always;
    add_header ETag foo always;
    add_header ETag '' always;
    location / {{ proxy_pass http://backend; }}
    location /own {{
      add_header X-Own own;
      add_header X-Empty '';
      add_header X-Var $arg_none;
      add_header ETag '"mine"';
      proxy_pass http://backend;
    }}
    location /ret {{ return 200 hi; }}
    location /redir {{ return 302 /x; }}
    location /gone {{ return 404; }}
    location /status {{ stub_status; }}
    location /ws {{
      add_header X-WS ws;
      add_header X-WS-Always $uri always;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection upgrade;
      proxy_pass http://backend;
    }}
  }}
}}
""")
    port = gw.port
    # Proxied 200: the server's list (not http's: a level with any replaces it all), the
    # ETag set and then emptied is gone, and so is the upstream's (headers.t).
    h = fields(head_of(port, "/a"))
    assert h[-3:] == ["X-Up: 1", "X-URI: /a", "X-Always: /a"], h
    assert not any(x.startswith(("X-Http", "ETag")) for x in h), h
    # Proxied 404: only ``always``.
    h = fields(head_of(port, "/missing"))
    assert "X-Always: /missing" in h and not any(x.startswith("X-URI") for x in h), h
    # A location with its own list inherits none; empty values add nothing; ETag replaces
    # the upstream's where it stands.
    h = fields(head_of(port, "/own"))
    assert 'ETag: "mine"' in h and h.index('ETag: "mine"') == h.index("X-Up: 1") + 1, h
    assert h[-1] == "X-Own: own", h
    assert not any(x.startswith(("X-URI", "X-Always", "X-Http", "X-Empty", "X-Var")) for x in h)
    # return 200, a redirect, an error page, stub_status.
    h = fields(head_of(port, "/ret"))
    assert h[-2:] == ["X-URI: /ret", "X-Always: /ret"], h
    h = fields(head_of(port, "/redir"))
    assert "X-URI: /redir" in h and h[-1] == "X-Always: /redir", h
    h = fields(head_of(port, "/gone"))
    assert h[-2:] == ["Connection: close", "X-Always: /gone"], h
    h = fields(head_of(port, "/status"))
    assert h[-2:] == ["X-URI: /status", "X-Always: /status"], h
    # A 101 is not in nginx's list: only ``always`` reaches the handshake response.
    h = fields(head_of(port, "/ws", WS))
    assert h[-1] == "X-WS-Always: /ws" and not any(x.startswith("X-WS:") for x in h), h
    assert any(x.startswith("Sec-WebSocket-Accept") for x in h), h


def test_add_header_from_http_level_and_bad_request(
    wsgate: Callable[..., WsgateProcess], bg: Loop
) -> None:
    up = bg.backend("up", by_path)
    gw = wsgate(f"""
events {{}}
http {{
  add_header X-Http $request_method;
  add_header X-Http-Always yes always;
  server {{
    listen 127.0.0.1:0;
    location / {{ proxy_pass http://127.0.0.1:{up.port}; }}
  }}
}}
""")
    h = fields(head_of(gw.port, "/a"))
    assert h[-2:] == ["X-Http: GET", "X-Http-Always: yes"], h
    with socket.create_connection((HOST, gw.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
        data = s.recv(65536).decode()
    assert data.startswith("HTTP/1.1 400 ") and "\r\nX-Http-Always: yes\r\n" in data, data
    assert "X-Http:" not in data


def upstream_fields(backend: Backend, request: Request) -> bytes:
    """nginx's hidden fields and others (X-Accel-Charset rather than X-Accel-Redirect, which
    is an internal redirect whether passed or not)."""
    return (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: up\r\nDate: then\r\nX-Pad: p\r\n"
        b"X-Accel-Charset: utf-8\r\nX-Accel-Other: o\r\nX-Secret: s\r\nX-Up: 1\r\n\r\nok"
    )


def test_proxy_hide_header_and_proxy_pass_header(
    wsgate: Callable[..., WsgateProcess], bg: Loop
) -> None:
    up = bg.backend("up", upstream_fields)
    gw = wsgate(f"""
events {{}}
http {{
  proxy_hide_header X-Secret;
  server {{
    listen 127.0.0.1:0;
    location / {{ proxy_pass http://127.0.0.1:{up.port}; }}
    location /pass {{
      proxy_pass_header Server;
      proxy_pass_header X-Accel-Charset;
      proxy_pass http://127.0.0.1:{up.port};
    }}
    location /own {{
      proxy_hide_header X-Up;
      proxy_pass http://127.0.0.1:{up.port};
    }}
  }}
}}
""")
    h = fields(head_of(gw.port, "/"))
    assert h[0].startswith("Server: wsgate") and h[1] != "Date: then", h
    assert h[-2:] == ["X-Accel-Other: o", "X-Up: 1"], h
    h = fields(head_of(gw.port, "/pass"))
    assert h[0].startswith("Date: ") and h[0] != "Date: then", h
    assert h[-4:] == ["Server: up", "X-Accel-Charset: utf-8", "X-Accel-Other: o", "X-Up: 1"], h
    # A level's own proxy_hide_header list replaces the outer one: X-Secret passes here.
    h = fields(head_of(gw.port, "/own"))
    assert h[-2:] == ["X-Accel-Other: o", "X-Secret: s"], h


# -- expires ---------------------------------------------------------------------------------------
LM = "Mon, 28 Sep 1970 06:00:00 GMT"


def caching_upstream(backend: Backend, request: Request) -> bytes:
    """An upstream with its own Cache-Control (twice) and Expires; 404 for /missing...;
    Last-Modified (headers.t's) for .../modified...."""
    code = b"404 Not Found" if "missing" in request.path else b"200 OK"
    lm = b"Last-Modified: %s\r\n" % LM.encode() if "modified" in request.path else b""
    return (
        b"HTTP/1.1 %s\r\nContent-Length: 2\r\nCache-Control: private\r\nX-Up: 1\r\n"
        b"Expires: Mon, 01 Jan 2001 00:00:00 GMT\r\n%sCache-Control: no-store\r\n\r\nok"
    ) % (code, lm)


def field(h: list[str], name: str) -> list[str]:
    return [x.split(": ", 1)[1] for x in h if x.lower().startswith(name.lower() + ":")]


def max_age_of(h: list[str]) -> int:
    """The seconds between Date and Expires."""
    from email.utils import parsedate_to_datetime

    (date,), (expires,) = field(h, "Date"), field(h, "Expires")
    return int((parsedate_to_datetime(expires) - parsedate_to_datetime(date)).total_seconds())


EPOCH = "Thu, 01 Jan 1970 00:00:01 GMT"
MAX = "Thu, 31 Dec 2037 23:55:55 GMT"


def test_expires_levels_statuses_and_responses(
    wsgate: Callable[..., WsgateProcess], bg: Loop
) -> None:
    up = bg.backend("up", caching_upstream)
    gw = wsgate(f"""
events {{}}
http {{
  expires epoch;
  upstream backend {{ server 127.0.0.1:{up.port}; }}
  server {{
    listen 127.0.0.1:0;
    location / {{ proxy_pass http://backend; }}
    location /off {{ expires off; proxy_pass http://backend; }}
    location /access {{
      expires 2048;
      proxy_pass http://backend;
      location /access/inner {{ proxy_pass http://backend; }}
    }}
    location /modified {{ expires modified 2048; proxy_pass http://backend; }}
    location /cc {{ expires 1h; add_header Cache-Control public; proxy_pass http://backend; }}
    location /ret {{ expires max; return 200 hi; }}
    location /redir {{ expires -1h; return 302 /x; }}
    location /gone {{ expires max; return 404; }}
    location /ret-modified {{ expires modified 1h; return 200 hi; }}
    location /var {{ expires $arg_e; return 200 hi; }}
    location /var_modified {{ expires modified $arg_e; proxy_pass http://backend; }}
  }}
  server {{
    listen 127.0.0.1:0;
    expires max;
    location / {{ proxy_pass http://backend; }}
    location /own {{ expires 0; proxy_pass http://backend; }}
  }}
}}
""")
    port, port2 = gw.ports[0], gw.ports[1]
    # http's epoch, inherited: the upstream's Expires and first Cache-Control get the new
    # values where they stand, its second Cache-Control goes.
    h = fields(head_of(port, "/a"))
    assert h[-3:] == ["Cache-Control: no-cache", "X-Up: 1", f"Expires: {EPOCH}"], h
    assert field(h, "Cache-Control") == ["no-cache"] and field(h, "Expires") == [EPOCH], h
    # off: the upstream's fields pass as they are.
    h = fields(head_of(port, "/off"))
    assert field(h, "Cache-Control") == ["private", "no-store"], h
    assert field(h, "Expires") == ["Mon, 01 Jan 2001 00:00:00 GMT"], h
    # Not for a 404.
    h = fields(head_of(port, "/missing"))
    assert field(h, "Cache-Control") == ["private", "no-store"], h
    # A time, in a location and inherited by a nested one (headers.t's access_inner).
    for path in ("/access", "/access/inner"):
        h = fields(head_of(port, path))
        assert field(h, "Cache-Control") == ["max-age=2048"], h
        assert max_age_of(h) == 2048, h
    # modified: from the upstream's Last-Modified (headers.t: 06:34:08), long past.
    h = fields(head_of(port, "/modified"))
    assert field(h, "Expires") == ["Mon, 28 Sep 1970 06:34:08 GMT"], h
    assert field(h, "Cache-Control") == ["no-cache"], h
    # add_header Cache-Control adds a line after expires's.
    h = fields(head_of(port, "/cc"))
    assert field(h, "Cache-Control") == ["max-age=3600", "public"], h
    # return: 200, a redirect (negative: no-cache, an Expires in the past), not a 404.
    h = fields(head_of(port, "/ret"))
    assert h[-2:] == [f"Expires: {MAX}", "Cache-Control: max-age=315360000"], h
    h = fields(head_of(port, "/redir"))
    assert field(h, "Cache-Control") == ["no-cache"] and max_age_of(h) == -3600, h
    assert any(x.startswith("Location:") for x in h), h
    h = fields(head_of(port, "/gone"))
    assert not field(h, "Expires") and not field(h, "Cache-Control"), h
    # modified without a Last-Modified: from now, as nginx.
    h = fields(head_of(port, "/ret-modified"))
    assert field(h, "Cache-Control") == ["max-age=3600"] and max_age_of(h) == 3600, h
    # Variables (headers.t's /var cases).
    assert field(fields(head_of(port, "/var?e=epoch")), "Expires") == [EPOCH]
    assert field(fields(head_of(port, "/var?e=max")), "Expires") == [MAX]
    assert field(fields(head_of(port, "/var?e=2048")), "Cache-Control") == ["max-age=2048"]
    assert field(fields(head_of(port, "/var?e=-2048")), "Cache-Control") == ["no-cache"]
    assert field(fields(head_of(port, "/var?e=@33s")), "Expires")[0].endswith(":33 GMT")
    for bad in ("/var?e=off", "/var", "/var?e=bad"):
        assert not field(fields(head_of(port, bad)), "Expires"), bad
    h = fields(head_of(port, "/var_modified?e=2048"))
    assert field(h, "Expires") == ["Mon, 28 Sep 1970 06:34:08 GMT"], h
    h = fields(head_of(port, "/var_modified?e=epoch"))
    assert field(h, "Expires") == ["Mon, 01 Jan 2001 00:00:00 GMT"], h  # untouched
    # A server's own value, inherited by its locations; 0 is "now", max-age=0.
    h = fields(head_of(port2, "/a"))
    assert field(h, "Expires") == [MAX] and field(h, "Cache-Control") == ["max-age=315360000"]
    h = fields(head_of(port2, "/own"))
    assert field(h, "Expires") == field(h, "Date") and field(h, "Cache-Control") == ["max-age=0"]
