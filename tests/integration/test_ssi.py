"""Server Side Includes through a real wsgate on loopback: files and proxied documents, their
commands, ``include virtual`` of files, proxied locations (over a kept-alive upstream
connection) and error pages, the headers the filter changes, errors and their log lines, and a
subrequest that must never become a tunnel."""

from __future__ import annotations

import re
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
    fixed,
    loop_fixture,
    ws_handshake,
)

bg = pytest.fixture(loop_fixture)


def fetch(port: int, path: str, extra: str = "", version: str = "1.1") -> tuple[str, bytes]:
    """One request on a new connection read to its close; the head and the de-chunked body."""
    raw = f"GET {path} HTTP/{version}\r\nHost: t\r\nConnection: close\r\n{extra}\r\n"
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(raw.encode("latin-1"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    text = head.decode("latin-1")
    if "\r\nTransfer-Encoding: chunked" in text:
        out = b""
        while True:
            size_line, _, body = body.partition(b"\r\n")
            if not size_line:  # cut short: what came
                break
            size = int(size_line, 16)
            if size == 0:
                break
            out, body = out + body[:size], body[size + 2 :]
        body = out
    return text, body


def document(backend: Backend, request: Request) -> bytes:
    """A proxied SSI document at /doc, plain text elsewhere (the path echoed)."""
    if request.path.startswith("/doc"):
        body = b'<p><!--#include virtual="/up/part?x=1" -->|<!--#echo var="http_x_a" --></p>'
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nLast-Modified: "
            b"Thu, 01 Jan 2026 00:00:00 GMT\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
    body = b"part:" + request.path.encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "inc.txt").write_text("INC")
    (root / "cmds.html").write_text(
        '<!--#set var="v" value="<$arg_a>" -->'
        '[<!--#echo var="v" -->][<!--#echo var="v" encoding="none" -->]'
        '[<!--#echo var="v" encoding="url" -->][<!--#echo var="nothing" -->]'
        '[<!--#echo var="nothing" default="d" -->]'
        '<!--#if expr="$arg_a = /^y/" -->Y<!--#elif expr="$arg_a" -->A<!--#else -->E<!--#endif -->'
    )
    (root / "inc.html").write_text(
        'a<!--#include virtual="inc.txt" -->b<!--#include virtual="/up/p" -->c'
        '<!--#include virtual="/up/q" set="got" -->d<!--#echo var="got" -->'
    )
    (root / "nested.html").write_text('<<!--#include virtual="/inc.html" -->>')
    (root / "missing.html").write_text(
        '<!--#block name="s" -->STUB<!--#endblock -->'
        '1<!--#include virtual="/none.txt" stub="s" -->2<!--#include virtual="/none.txt" -->3'
    )
    (root / "errors.html").write_text(
        '1<!--#bogus -->2<!--#echo -->3<!--#config errmsg="[E]" --><!--#echo x="1" -->4'
    )
    (root / "upgrade.html").write_text('1<!--#include virtual="/ws" -->2')
    return root


def conf(site: Path, port: int, extra: str = "") -> str:
    return f"""
events {{}}
http {{
  include mime.types;
  upstream up {{ server 127.0.0.1:{port}; keepalive 2; }}
  server {{
    listen 127.0.0.1:0;
    root {site};
    ssi on;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    location /up/ {{ proxy_pass http://up/; }}
    location /doc {{ proxy_pass http://up; }}
    location /ws {{
      proxy_pass http://up;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection upgrade;
    }}
    location /silent/ {{ alias {site}/; ssi_silent_errors on; }}
    location /lm/ {{ alias {site}/; ssi_last_modified on; }}
    {extra}
  }}
}}
"""


def test_commands_in_a_file(wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path) -> None:
    gw = wsgate(conf(site, bg.backend("b").port))
    head, body = fetch(gw.port, "/cmds.html?a=yes")
    assert head.startswith("HTTP/1.1 200 OK"), head
    assert body == b"[&lt;yes&gt;][<yes>][%3Cyes%3E][(none)][d]Y"
    assert fetch(gw.port, "/cmds.html?a=b")[1].endswith(b"A")
    assert fetch(gw.port, "/cmds.html")[1].endswith(b"E")
    # The filter's headers: no length, ranges or validators; the body chunked.
    assert "Transfer-Encoding: chunked" in head
    for name in ("Content-Length", "Accept-Ranges", "Last-Modified", "ETag"):
        assert name not in head
    # ssi_last_modified on keeps Last-Modified and makes the ETag weak.
    head, _ = fetch(gw.port, "/lm/cmds.html")
    assert "Last-Modified: " in head and re.search(r'\r\nETag: W/"', head), head
    # A type not in ssi_types passes unchanged, with its length.
    head, body = fetch(gw.port, "/inc.txt")
    assert "Content-Length: 3" in head and body == b"INC"
    assert "[alert]" not in gw.errors()


def test_includes_of_files_proxied_locations_and_variables(
    wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path
) -> None:
    b = bg.backend("b", document)
    gw = wsgate(conf(site, b.port))
    _, body = fetch(gw.port, "/inc.html")
    assert body == b"aINCbpart:/pcdpart:/q"
    # Included documents are SSI documents too, and the upstream connection is reused.
    _, body = fetch(gw.port, "/nested.html")
    assert body == b"<aINCbpart:/pcdpart:/q>"
    assert b.paths == ["/p", "/q", "/p", "/q"] and b.accepted == 1
    # Subrequests get the main request's headers, but GET and no access-log line.
    assert all(r.method == "GET" for r in b.requests)


def test_proxied_document_is_filtered(
    wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path
) -> None:
    b = bg.backend("b", document)
    gw = wsgate(conf(site, b.port))
    head, body = fetch(gw.port, "/doc", "X-A: <h>\r\n")
    assert body == b"<p>part:/part?x=1|&lt;h&gt;</p>", body
    assert "Last-Modified" not in head and "Content-Length" not in head
    # HTTP/1.0: no chunks, the close ends the body.
    head, body = fetch(gw.port, "/doc", version="1.0")
    assert "Transfer-Encoding" not in head and body == b"<p>part:/part?x=1|(none)</p>"
    assert "[alert]" not in gw.errors()


def test_failed_includes_stubs_and_errors(
    wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path
) -> None:
    gw = wsgate(conf(site, bg.backend("b").port))
    _, body = fetch(gw.port, "/missing.html")
    # The stub replaces the failed include; without one, the error page is included.
    assert body.startswith(b"1STUB2<html>") and b"404 Not Found" in body and body.endswith(b"3")
    _, body = fetch(gw.port, "/errors.html")
    err = b"[an error occurred while processing the directive]"
    assert body == b"1" + err + b"2" + err + b"3[E]4"
    log = gw.errors()
    assert 'invalid SSI command: "bogus"' in log
    assert 'mandatory "var" parameter is absent in "echo" SSI command' in log
    assert 'invalid parameter name: "x" in "echo" SSI command' in log
    _, body = fetch(gw.port, "/silent/errors.html")
    assert body == b"1234"


def test_a_subrequest_is_never_upgraded(
    wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path
) -> None:
    """The main request's ``Upgrade`` reaches the upstream (``proxy_set_header Upgrade
    $http_upgrade``), which answers 101: the subrequest fails, the main request ends, the
    client never sees a 101 (nginx-tests proxy_upgrade.t, "handshake in subrequests")."""
    b = bg.backend("b", websocket=True)
    gw = wsgate(conf(site, b.port))
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    head, body = fetch(
        gw.port,
        "/upgrade.html",
        f"Upgrade: websocket\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
    )
    assert head.startswith("HTTP/1.1 200 OK") and b"101" not in body
    assert body == b"1", body  # the response ends at the include, the connection closed
    assert b.paths == ["/ws"]
    log = gw.errors()
    assert "[error]" in log and "connection upgrade in subrequest" in log
    assert 'subrequest: "/ws"' in log and "[alert]" not in log


def test_an_empty_response_passes_unfiltered(
    wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path
) -> None:
    b = bg.backend(
        "b", fixed(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\r\n")
    )
    gw = wsgate(conf(site, b.port))
    head, body = fetch(gw.port, "/doc")
    assert "Content-Length: 0" in head and body == b""


def test_a_tunnel_logs_the_fields_of_its_101(
    wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path
) -> None:
    """``$sent_http_connection`` in a tunnel's log line is the 101's ``upgrade``
    (nginx-tests proxy_upgrade.t, "log - bytes"); the subrequest that was refused above logs
    nothing."""
    b = bg.backend("b", websocket=True)
    extra = "log_format t '$status $sent_http_connection $sent_http_upgrade';"
    logged = f"  {extra}\n  access_log logs/access.log t;\n  upstream up"
    gw = wsgate(conf(site, b.port).replace("  upstream up", logged))
    s, data = ws_handshake(gw.port)
    assert data.startswith(b"HTTP/1.1 101 "), data
    s.close()
    (line,) = gw.access_lines(1)
    assert line == "101 upgrade websocket"


def test_set_body_at_and_over_subrequest_output_buffer_size(
    wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path
) -> None:
    (site / "eight.txt").write_text("12345678")
    (site / "nine.txt").write_text("123456789")
    (site / "set.html").write_text(
        '<!--#include virtual="/$arg_f" set="x" -->[<!--#echo var="x" -->]'
    )
    extra = f"location ~ \\.txt$ {{ root {site}; subrequest_output_buffer_size 8; }}"
    gw = wsgate(conf(site, bg.backend("b").port, extra))
    head, body = fetch(gw.port, "/set.html?f=eight.txt")
    assert head.startswith("HTTP/1.1 200") and body == b"[12345678]"
    # Over the limit: the main request ends before anything was sent.
    head, body = fetch(gw.port, "/set.html?f=nine.txt")
    assert head == "" and body == b""
    log = gw.errors()
    assert "too big subrequest response: 9" in log and 'subrequest: "/nine.txt"' in log
    assert "[alert]" not in log


def test_keep_alive_after_ssi_documents(
    wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path
) -> None:
    """Two pipelined requests for SSI documents (a file, a proxied one) on one connection:
    each chunked body ends where the next response starts."""
    b = bg.backend("b", document)
    gw = wsgate(conf(site, b.port))
    with socket.create_connection((HOST, gw.port), timeout=10) as s:
        s.sendall(
            b"GET /inc.html HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /doc HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    first, second = data.split(b"HTTP/1.1 200 OK")[1:]
    assert first.endswith(
        b"\r\n\r\n"
        + b"".join(
            b"%x\r\n%s\r\n" % (len(p), p)
            for p in (b"a", b"INC", b"b", b"part:/p", b"c", b"d", b"part:/q")
        )
        + b"0\r\n\r\n"
    ), first
    assert second.endswith(
        b"\r\n\r\n3\r\n<p>\r\ne\r\npart:/part?x=1\r\n1\r\n|\r\n"
        b"6\r\n(none)\r\n4\r\n</p>\r\n0\r\n\r\n"
    ), second


def test_return_text_is_an_ssi_document(
    wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path
) -> None:
    """``return 200 TEXT`` of an SSI type is filtered too (nginx-tests rewrite_set.t); a
    return text of another type is not."""
    extra = (
        'location = /r.html { return 200 \'X<!--#echo var="http_foo" -->'
        '<!--#include virtual="/inc.txt" -->X\'; }\n'
        "    location = /r.txt { return 200 'X<!--#echo var=\"http_foo\" -->X'; }"
    )
    gw = wsgate(conf(site, bg.backend("b").port, extra))
    head, body = fetch(gw.port, "/r.html", "Foo: <f>\r\n")
    assert head.startswith("HTTP/1.1 200 OK") and "Transfer-Encoding: chunked" in head
    assert body == b"X&lt;f&gt;INCX"
    head, body = fetch(gw.port, "/r.html", version="1.0")
    assert "Content-Length" not in head and body == b"X(none)INCX"
    head, body = fetch(gw.port, "/r.txt")
    assert "Content-Length: 30" in head and body == b'X<!--#echo var="http_foo" -->X'


def test_ssi_in_if_and_regex_captures(
    wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path
) -> None:
    """``ssi`` may be set in an ``if`` of a location; an ``if`` regex's captures are ``$1``...
    and its named ones SSI variables."""
    (site / "cap.html").write_text(
        '<!--#if expr="$arg_v = /(CAP\\d).*(?<n>N\\d)/" -->'
        '<!--#echo var="1" -->-<!--#echo var="n" --><!--#endif -->'
    )
    extra = f"location /iff/ {{ alias {site}/; ssi off; if ($arg_s) {{ ssi on; }} }}"
    gw = wsgate(conf(site, bg.backend("b").port, extra))
    assert fetch(gw.port, "/cap.html?v=xCAP1yN2")[1] == b"CAP1-N2"
    assert fetch(gw.port, "/iff/cap.html?v=xCAP1yN2&s=1")[1] == b"CAP1-N2"
    assert fetch(gw.port, "/iff/cap.html?v=xCAP1yN2")[1].startswith(b"<!--#if")
