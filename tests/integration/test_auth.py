"""``auth_basic``, ``auth_request`` and ``satisfy`` through a real wsgate.

nginx's answers (``ngx_http_auth_basic_module.c``, ``ngx_http_auth_request_module.c``,
``ngx_http_core_access_phase``): 401 with ``WWW-Authenticate: Basic realm="..."``; a user
file that does not exist is 403 with ``[error] open() ... failed``, one that cannot be read
500 with ``[crit]``; a subrequest that fails or times out is 500; access is decided before
any upstream is contacted, WebSocket handshakes included.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import WsgateProcess
from tests.integration.loopback import (
    HOST,
    Backend,
    Loop,
    Request,
    dead_port,
    get,
    loop_fixture,
    silent,
    wait_for,
    ws_open,
)

Factory = Callable[..., WsgateProcess]

bg = pytest.fixture(loop_fixture)

WS = "proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection upgrade;"
HTPASSWD = (
    "# users\n"
    "plain:{PLAIN}secret\n"
    "apr1:$apr1$salt$Xxd1irWT9ycqoYxGFn4cb.\n"
    "sha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"
    # crypt(3) SHA-512 and bcrypt of "password", as libxcrypt writes them
    "sha512:$6$abc$rvqzMBuMVukmply9mZJpW0wJMdDfgUKLDrSNxf9l66h/ytQiKNAdqHSj5YPJpxWJpVjRXibQXR"
    "ddCl9xYHQnd0\n"
    "bcrypt:$2b$05$abcdefghijklmnopqrstuuWG29KuyeAicPCJODk1zjyGvyQUU2awu\n"
)


def basic(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Authorization: Basic {token}\r\n"


def raw(port: int, request: bytes) -> bytes:
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def request(port: int, path: str = "/", extra: str = "") -> bytes:
    return raw(port, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n".encode())


def http_conf(log: str, server: str) -> str:
    """A configuration of one server on port 0, ``server`` its contents; access-log lines in
    the format ``log``, info lines in ``logs/info.log``."""
    return f"""
error_log logs/info.log info;
events {{}}
http {{
  log_format t '{log}';
  access_log logs/access.log t;
  server {{
    listen 127.0.0.1:0;
    {server}
  }}
}}
"""


def basic_conf(port: int, user_file: str = "htpasswd", location: str = "") -> str:
    return http_conf(
        "$status|$remote_user",
        f"""
    location / {{
      auth_basic "closed $host";
      auth_basic_user_file {user_file};
      proxy_pass http://127.0.0.1:{port};
      {WS}
      {location}
    }}
    location /open/ {{
      auth_basic off;
      proxy_pass http://127.0.0.1:{port};
    }}""",
    )


def start_basic(wsgate: Factory, port: int, **kw: str) -> WsgateProcess:
    gw = wsgate(basic_conf(port, **kw))
    (gw.prefix / "htpasswd").write_text(HTPASSWD)
    return gw


def info_log(gw: WsgateProcess) -> str:
    path = gw.prefix / "logs" / "info.log"
    return path.read_text() if path.exists() else ""


# -- auth_basic ---------------------------------------------------------------------------------
def test_no_credentials_is_401_with_the_realm(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = start_basic(wsgate, b.port)
    data = request(gw.port)
    assert data.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    head = data.split(b"\r\n\r\n")[0].decode()
    # After nginx's own fields, as ngx_http_header_filter writes r->headers_out.headers.
    assert head.endswith('Connection: close\r\nWWW-Authenticate: Basic realm="closed t"')
    assert b"<title>401 Authorization Required</title>" in data
    assert "[info]" in info_log(gw)
    assert "no user/password was provided for basic authentication, client: " in info_log(gw)
    assert b.accepted == 0


@pytest.mark.parametrize("user", ["plain", "apr1", "sha", "sha512", "bcrypt"])
def test_each_password_format(bg: Loop, wsgate: Factory, user: str) -> None:
    b = bg.backend("b")
    gw = start_basic(wsgate, b.port)
    password = "secret" if user == "plain" else "password"
    assert get(gw.port, extra=basic(user, password)) == (200, b"b")
    assert get(gw.port, extra=basic(user, "wrong"))[0] == 401
    gw.wait_log(rf'\[error\] .*user "{user}": password mismatch, client: 127\.0\.0\.1')
    assert gw.access_lines(2) == [f"200|{user}", f"401|{user}"]
    assert len(b.requests) == 1


def test_unknown_user_is_401_and_logged(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = start_basic(wsgate, b.port)
    assert get(gw.port, extra=basic("nobody", "x"))[0] == 401
    gw.wait_log(rf'\[error\] .*user "nobody" was not found in "{gw.prefix}/htpasswd"')
    assert b.accepted == 0


def test_the_file_is_read_per_request(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = start_basic(wsgate, b.port)
    assert get(gw.port, extra=basic("new", "pw"))[0] == 401
    (gw.prefix / "htpasswd").write_text("new:{PLAIN}pw")  # no final newline
    assert get(gw.port, extra=basic("new", "pw")) == (200, b"b")


def test_auth_basic_off_inside(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = start_basic(wsgate, b.port)
    assert get(gw.port, "/open/") == (200, b"b")


def test_missing_user_file_is_403_and_an_error_line(bg: Loop, wsgate: Factory) -> None:
    """nginx: "if (err == NGX_ENOENT) { level = NGX_LOG_ERR; rc = NGX_HTTP_FORBIDDEN; }"."""
    b = bg.backend("b")
    gw = start_basic(wsgate, b.port, user_file="nowhere")
    assert get(gw.port, extra=basic("plain", "secret"))[0] == 403
    gw.wait_log(
        rf'\[error\] .*open\(\) "{gw.prefix}/nowhere" failed \(2: No such file or directory\)'
    )
    assert b.accepted == 0


def test_unreadable_user_file_is_500_and_a_crit_line(bg: Loop, wsgate: Factory) -> None:
    """A directory opens but cannot be read: nginx's pread() fails, 500 and ``[crit]``."""
    b = bg.backend("b")
    gw = start_basic(wsgate, b.port, user_file="dir")
    (gw.prefix / "dir").mkdir()
    assert get(gw.port, extra=basic("plain", "secret"))[0] == 500
    gw.wait_log(rf'\[crit\] .*pread\(\) "{gw.prefix}/dir" failed \(21: Is a directory\)')
    assert b.accepted == 0


def test_user_file_that_cannot_be_opened_is_500_and_a_crit_line(bg: Loop, wsgate: Factory) -> None:
    """A name under a regular file: open() fails with ENOTDIR, which is no ENOENT."""
    b = bg.backend("b")
    gw = start_basic(wsgate, b.port, user_file="htpasswd/x")
    assert get(gw.port, extra=basic("plain", "secret"))[0] == 500
    gw.wait_log(rf'\[crit\] .*open\(\) "{gw.prefix}/htpasswd/x" failed \(20: Not a directory\)')


def test_user_file_with_variables_is_taken_from_the_conf_prefix(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = start_basic(wsgate, b.port, user_file="$arg_f")
    assert get(gw.port, "/?f=htpasswd", extra=basic("plain", "secret")) == (200, b"b")
    assert get(gw.port, "/?f=nx", extra=basic("plain", "secret"))[0] == 403
    # An empty name is the prefix itself: a directory, which cannot be read.
    assert get(gw.port, "/", extra=basic("plain", "secret"))[0] == 500


def test_websocket_handshake_without_credentials_never_reaches_the_upstream(
    bg: Loop, wsgate: Factory
) -> None:
    b = bg.backend("b", websocket=True)
    gw = start_basic(wsgate, b.port)
    data = request(
        gw.port,
        "/ws",
        "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n",
    )
    assert data.startswith(b"HTTP/1.1 401 ")
    assert b.accepted == 0
    s = socket.create_connection((HOST, gw.port), timeout=5)
    with s:
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            + basic("plain", "secret").encode()
            + b"\r\n"
        )
        assert s.recv(4096).startswith(b"HTTP/1.1 101 ")
    assert b.accepted == 1
    # The tunnel's line, written when it closes, still knows $remote_user.
    assert gw.access_lines(2) == ["401|-", "101|plain"]


# -- auth_request -------------------------------------------------------------------------------
def auth_conf(app: int, auth: int, auth_location: str = "", main: str = "") -> str:
    return http_conf(
        "$status|$user|$upstream_status",
        f"""
    location / {{
      auth_request /auth;
      auth_request_set $user $upstream_http_x_user;
      auth_request_set $sid $upstream_cookie_sid;
      proxy_pass http://127.0.0.1:{app};
      proxy_set_header X-User $user;
      proxy_set_header X-Sid $sid;
      {WS}
      {main}
    }}
    location = /auth {{
      # nginx's documented auth location
      proxy_pass http://127.0.0.1:{auth}/check;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_read_timeout 1s;
      {auth_location}
    }}
    location = /auth-404 {{ }}""",
    )


def answer(code: int, *headers: str) -> Callable[[Backend, Request], bytes]:
    def respond(backend: Backend, request: Request) -> bytes:
        extra = "".join(f"{h}\r\n" for h in headers)
        return f"HTTP/1.1 {code} X\r\n{extra}Content-Length: 2\r\n\r\nno".encode()

    return respond


def test_subrequest_2xx_allows_and_sets_variables(bg: Loop, wsgate: Factory) -> None:
    app = bg.backend("app")
    auth = bg.backend("auth", answer(204, "X-User: alice", "Set-Cookie: sid=s1; Path=/"))
    gw = wsgate(auth_conf(app.port, auth.port))
    assert get(gw.port, "/p?q=1", method="POST", body=b"0123456789") == (200, b"app")
    (sub,) = auth.requests
    # GET, the main request's headers, no body (ngx_http_subrequest, auth_request's fake body)
    assert sub.method == "GET" and sub.path == "/check" and sub.body == b""
    head = sub.head.decode().lower()
    assert "x-original-uri: /p?q=1\r\n" in head and "content-length" not in head
    (main,) = app.requests
    assert main.method == "POST" and main.body == b"0123456789"
    assert b"X-User: alice\r\n" in main.head and b"X-Sid: s1\r\n" in main.head
    # The subrequest is not logged (log_subrequest off); its upstream is not the main's.
    assert gw.access_lines(1) == ["200|alice|200"]


@pytest.mark.parametrize("code", [401, 403])
def test_subrequest_401_403_deny(bg: Loop, wsgate: Factory, code: int) -> None:
    app = bg.backend("app")
    auth = bg.backend("auth", answer(code, 'WWW-Authenticate: Bearer realm="a"', "X-User: x"))
    gw = wsgate(auth_conf(app.port, auth.port))
    data = request(gw.port)
    assert data.startswith(f"HTTP/1.1 {code} ".encode())
    # A 401 passes the subrequest's WWW-Authenticate on; a 403 does not.
    assert (b'WWW-Authenticate: Bearer realm="a"\r\n' in data) is (code == 401)
    assert app.accepted == 0


@pytest.mark.parametrize("code", [200, 299, 302, 404, 500])
def test_subrequest_other_statuses(bg: Loop, wsgate: Factory, code: int) -> None:
    app = bg.backend("app")
    auth = bg.backend("auth", answer(code))
    gw = wsgate(auth_conf(app.port, auth.port))
    got = get(gw.port)[0]
    if code < 300:
        assert got == 200
    else:
        assert got == 500
        gw.wait_log(rf"\[error\] .*auth request unexpected status: {code}")
        assert app.accepted == 0


@pytest.mark.parametrize(
    ("failure", "log", "status"),
    [
        ("timeout", r"upstream timed out \(110: Connection timed out\) while reading", 504),
        ("refused", r"connect\(\) failed \(111: Connection refused\)", 502),
        ("no content", "", 404),
    ],
)
def test_subrequest_failure_is_500(
    bg: Loop, wsgate: Factory, failure: str, log: str, status: int
) -> None:
    """A subrequest that times out, cannot connect, or finds no content handler: its status
    is no 2xx, 401 or 403, so the main request is 500 and nothing reaches its upstream."""
    app = bg.backend("app")
    port = bg.backend("auth", silent).port if failure == "timeout" else dead_port()
    text = auth_conf(app.port, port)
    if failure == "no content":
        text = text.replace("auth_request /auth;", "auth_request /auth-404;")
    gw = wsgate(text)
    assert get(gw.port)[0] == 500
    if log:
        # nginx's error line of a subrequest names it after the request.
        gw.wait_log(rf'\[error\] .*{log}.*request: "GET / HTTP/1.1", subrequest: "/auth", ')
    gw.wait_log(rf"\[error\] .*auth request unexpected status: {status}")
    assert app.accepted == 0


def test_websocket_handshake_denied_before_the_upstream(bg: Loop, wsgate: Factory) -> None:
    app = bg.backend("app", websocket=True)
    auth = bg.backend("auth", answer(401, "WWW-Authenticate: Basic"))
    gw = wsgate(auth_conf(app.port, auth.port))
    data = request(
        gw.port,
        "/ws",
        "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n",
    )
    assert data.startswith(b"HTTP/1.1 401 ")
    assert len(auth.requests) == 1 and app.accepted == 0


def test_an_auth_service_answering_101_is_no_tunnel(bg: Loop, wsgate: Factory) -> None:
    """With the WebSocket headers set for the auth location too, an auth service may answer
    the handshake with 101: a status like any other (500), its connection closed."""
    app = bg.backend("app", websocket=True)
    auth = bg.backend("auth", websocket=True)
    gw = wsgate(auth_conf(app.port, auth.port, auth_location=WS))
    data = request(
        gw.port,
        "/ws",
        "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n",
    )
    assert data.startswith(b"HTTP/1.1 500 ")
    gw.wait_log(r"\[error\] .*auth request unexpected status: 101")
    assert auth.accepted == 1 and app.accepted == 0
    wait_for(lambda: auth.open == 0, "the auth connection to close")


def test_websocket_handshake_allowed_tunnels(bg: Loop, wsgate: Factory) -> None:
    app = bg.backend("app", websocket=True)
    auth = bg.backend("auth", answer(200, "X-User: bob"))
    gw = wsgate(auth_conf(app.port, auth.port))
    with ws_open(gw.port):
        pass
    (sub,) = auth.requests
    assert sub.method == "GET"
    assert b"X-User: bob\r\n" in app.requests[0].head


@pytest.mark.parametrize(
    ("code", "body", "connections"), [(204, "", 1), (200, "", 1), (200, "ok", 2)]
)
def test_auth_connections_are_kept_when_the_answer_has_no_body(
    bg: Loop, wsgate: Factory, code: int, body: str, connections: int
) -> None:
    """The subrequest reads no body: an answer without one leaves the connection to the
    auth service reusable (``keepalive``), one with a body is closed, as in nginx."""
    app = bg.backend("app")

    def respond(backend: Backend, request: Request) -> bytes:
        length = "" if code == 204 else f"Content-Length: {len(body)}\r\n"
        return f"HTTP/1.1 {code} X\r\n{length}\r\n{body}".encode()

    auth = bg.backend("auth", respond)
    text = auth_conf(app.port, auth.port).replace(
        f"proxy_pass http://127.0.0.1:{auth.port}/check;", "proxy_pass http://authsvc/check;"
    )
    text = text.replace(
        "  server {",
        f"  upstream authsvc {{ server 127.0.0.1:{auth.port}; keepalive 2; }}\n  server {{",
        1,
    )
    gw = wsgate(text)
    assert get(gw.port) == (200, b"app")
    assert get(gw.port) == (200, b"app")
    assert len(auth.requests) == 2 and auth.accepted == connections


def test_limits_count_once_per_main_request(bg: Loop, wsgate: Factory) -> None:
    """``limit_conn``/``limit_req`` at server level reach the auth location too, but nginx
    applies them once per main request ("if (r->main->limit_conn_status)"): the subrequest
    takes no second slot and counts no second request."""
    app = bg.backend("app")
    auth = bg.backend("auth", answer(204))
    text = auth_conf(app.port, auth.port).replace(
        "  server {",
        "  limit_conn_zone $remote_addr zone=c:1m;\n"
        "  limit_req_zone $remote_addr zone=q:1m rate=1r/m;\n  server {",
        1,
    )
    text = text.replace(
        "listen 127.0.0.1:0;", "listen 127.0.0.1:0; limit_conn c 1; limit_req zone=q;"
    )
    gw = wsgate(text)
    assert get(gw.port) == (200, b"app")
    assert len(auth.requests) == 1
    assert get(gw.port)[0] == 503  # the second request of the minute: the main one is limited


def test_proxy_pass_request_body_off(bg: Loop, wsgate: Factory) -> None:
    """The body stays behind and is discarded (the next request on the connection is read
    right); the client's Content-Length is not sent when set empty, as nginx's docs do."""
    app = bg.backend("app")
    gw = wsgate(f"""
events {{}}
http {{
  access_log off;
  server {{
    listen 127.0.0.1:0;
    location / {{
      proxy_pass http://127.0.0.1:{app.port};
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
    }}
  }}
}}
""")
    data = raw(
        gw.port,
        b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789"
        b"GET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert [(r.method, r.path, r.body) for r in app.requests] == [
        ("POST", "/a", b""),
        ("GET", "/b", b""),
    ]
    assert b"content-length" not in app.requests[0].head.lower()


def test_a_subrequest_without_body_off_never_reads_the_body(bg: Loop, wsgate: Factory) -> None:
    """An auth location without nginx's documented ``proxy_pass_request_body off``: the
    subrequest neither takes the client's body nor sends a Content-Length its upstream would
    wait on; the main request still gets the whole body (buffered or streamed)."""
    app = bg.backend("app")
    auth = bg.backend("auth", answer(204))
    gw = wsgate(f"""
events {{}}
http {{
  access_log off;
  server {{
    listen 127.0.0.1:0;
    location / {{ auth_request /auth; proxy_pass http://127.0.0.1:{app.port}; }}
    location /s/ {{
      auth_request /auth;
      proxy_request_buffering off;
      proxy_pass http://127.0.0.1:{app.port};
    }}
    location = /auth {{ proxy_pass http://127.0.0.1:{auth.port}/check; }}
  }}
}}
""")
    for path in ("/p", "/s/p"):
        assert get(gw.port, path, method="POST", body=b"0123456789") == (200, b"app")
    for sub in auth.requests:
        assert sub.body == b"" and b"content-length" not in sub.head.lower()
    assert [(r.path, r.body) for r in app.requests] == [
        ("/p", b"0123456789"),
        ("/s/p", b"0123456789"),
    ]


# -- satisfy -----------------------------------------------------------------------------------
def satisfy_conf(app: int, auth: int, satisfy: str, rules: str) -> str:
    return f"""
events {{}}
http {{
  access_log off;
  server {{
    listen 127.0.0.1:0;
    location / {{
      satisfy {satisfy};
      {rules}
      auth_basic "r";
      auth_basic_user_file htpasswd;
      auth_request /auth;
      proxy_pass http://127.0.0.1:{app};
    }}
    location = /auth {{ proxy_pass http://127.0.0.1:{auth}; }}
  }}
}}
"""


@pytest.mark.parametrize(
    ("satisfy", "rules", "creds", "auth_code", "expected"),
    [
        # satisfy all: the first denial wins, in the order access, auth_basic, auth_request
        ("all", "allow all;", True, 200, 200),
        ("all", "deny all;", True, 200, 403),
        ("all", "allow all;", False, 200, 401),
        ("all", "allow all;", True, 403, 403),
        # satisfy any: the first allow wins; a 403 never replaces a 401
        ("any", "deny all;", False, 200, 200),
        ("any", "deny all;", False, 403, 401),
        ("any", "deny all;", True, 403, 200),
        ("any", "allow all;", False, 401, 200),
        ("any", "", False, 403, 401),
    ],
)
def test_satisfy(
    bg: Loop,
    wsgate: Factory,
    tmp_path: Path,
    satisfy: str,
    rules: str,
    creds: bool,
    auth_code: int,
    expected: int,
) -> None:
    app = bg.backend("app")
    auth = bg.backend("auth", answer(auth_code))
    gw = wsgate(satisfy_conf(app.port, auth.port, satisfy, rules))
    (gw.prefix / "htpasswd").write_text("u:{PLAIN}p\n")
    data = request(gw.port, extra=basic("u", "p") if creds else "")
    assert data.startswith(f"HTTP/1.1 {expected} ".encode()), data[:40]
    # A 401 in the end carries auth_basic's realm; an allowed request drops it.
    assert (b'WWW-Authenticate: Basic realm="r"' in data) is (expected == 401)
    assert app.accepted == (expected == 200)
