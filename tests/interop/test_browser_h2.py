"""A real browser's WebSocket on the page's own HTTP/2 connection: RFC 8441 (issue 13).

Issue 13: "headless Chromium loading a page over h2 and then opening a WebSocket to the same
origin, with the test proving from the browser's own network events that the WebSocket travelled
on the HTTP/2 connection (and the same page through a server that does not advertise the setting
proving the fallback)"; and "Chromium and HAProxy each exchange text and a 1 MiB binary message
with a backend over RFC 8441 through wsgate; a QUIT during that gives both ends a 1001 close
frame".

Topology, all on loopback::

    Chromium (playwright-core, tests/interop/browser_h2ws.js; the test CA through NSS, as in
        │     test_browser.py: nothing relaxes certificate verification)
        │  https://localhost:PORT/     -> ``location / { root tests/interop/h2ws_page; }``
        │  wss://localhost:PORT/ws     -> ``location /ws { proxy_pass http://backend; ... }``
        ▼
    wsgate ``listen 127.0.0.1:0 ssl http2`` (or nginx 1.22 on the same text)
        │  ws:// (HTTP/1.1 Upgrade, as for any client)
        ▼
    a ``websockets`` echo server recording each connection's Close frame

What proves the WebSocket rode the page's connection, from three sides:

* **the browser's own events**: the Chrome DevTools Protocol (a CDP session, Network domain)
  says the page came over ``protocol: "h2"`` (``Network.responseReceived``), and gives the
  WebSocket's handshake status (``Network.webSocketHandshakeResponseReceived``): **200** is the
  ``:status`` of an RFC 8441 extended CONNECT on an HTTP/2 stream, **101** an HTTP/1.1 Upgrade
  on a connection of its own.  CDP has no ``connectionId`` for a WebSocket, so Chromium also
  writes its **NetLog** (``--log-net-log``): every socket it connected to the server with its
  ALPN protocol, which sockets carried requests (``SOCKET_IN_USE``, or an HTTP/2 session on
  it), and the HEADERS sent on each HTTP/2 session, where the ``:method CONNECT``
  ``:protocol websocket`` ``:path /ws`` stream appears on the session that carried ``GET /``.
  (Chromium opens a WebSocket over HTTP/2 only on an existing session to the origin whose
  server sent ``SETTINGS_ENABLE_CONNECT_PROTOCOL``; otherwise it connects anew with ALPN
  ``http/1.1`` only.)
* **the server's access log** with ``$connection`` (the serial number of the TCP connection):
  one number for the page and the WebSocket with wsgate, two with ``http2_websocket off``;
* **stub_status ``accepts``** (TCP connections accepted), read before the browser starts and
  after the exchange, while the WebSocket is open: the browser's own connections are the
  difference less the reading connection; it must equal the sockets the NetLog says Chromium
  connected.  Chromium connects one more socket than it uses: a navigation preconnect races
  the navigation's own connection, and the loser is closed unused ("Switching to HTTP2
  session") once h2 is negotiated; so "connections" in the figures are those that carried
  requests, the raw TCP count being printed beside them.

The counts are printed (``pytest -s``): a figure for the note, "the browser's connection count
for a page plus a WebSocket: 1 with wsgate vs 2 with nginx" (nginx 1.22.1 from Debian, which has
no RFC 8441, on the same configuration text; skipped when it is not installed).

In each run the page exchanges a text message (with a non-ASCII character) and a 1 MiB binary
message with the echo backend, checked byte for byte.  In the RFC 8441 run the test then sends
QUIT to wsgate while the WebSocket is open: the browser's close event has code 1001, and the
backend received a Close frame with 1001 ("going away") from wsgate.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import WsgateProcess
from tests.helpers import REPO_ROOT
from tests.integration.loopback import wait_for
from tests.interop.test_browser import (
    EchoBackend,
    browser_peer,
    last_json,
    require_browser,
    trusting_home,
)
from tests.reliability.common import NGINX, Target, start_target

__all__: list[str] = []

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

SCRIPT = str(REPO_ROOT / "tests" / "interop" / "browser_h2ws.js")
PAGE_ROOT = REPO_ROOT / "tests" / "interop" / "h2ws_page"
BINARY_BYTES = 1 << 20
SCRIPT_TIMEOUT_MS = 30_000
RUN_TIMEOUT = 40.0

#: Read by both wsgate and nginx 1.22 (whose ``listen`` takes ``http2``; ``http2 on`` came in
#: 1.25.1).  ``$connection`` is the TCP connection's serial number.
CONF = """\
events {}

http {
    log_format conn '$connection "$request" $status $server_protocol';
    access_log logs/access.log conn;

    map $http_upgrade $connection_upgrade {
        default upgrade;
        ''      close;
    }

    upstream backend {
        server 127.0.0.1:%(backend)d;
    }

    server {
        listen 127.0.0.1:0 ssl http2;
        server_name localhost;
        ssl_certificate     %(cert)s;
        ssl_certificate_key %(key)s;
        %(extra)s

        location / {
            root %(root)s;
        }

        location = /status {
            stub_status;
        }

        location /ws {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
        }
    }
}
"""

LINE = re.compile(r'^(\d+) "(\S+) (\S+) (\S+)" (\d{3}) (\S+)$')


@dataclass(frozen=True, slots=True)
class LogLine:
    connection: int
    method: str
    path: str
    protocol: str
    status: int


def read_log(path: Path) -> list[LogLine]:
    """The access-log lines of the browser's requests (not the test's own ``/status``)."""
    lines = []
    for text in path.read_text().splitlines():
        m = LINE.match(text)
        assert m, f"unexpected access-log line {text!r}"
        if m[3] != "/status":
            lines.append(LogLine(int(m[1]), m[2], m[3], m[6], int(m[5])))
    return lines


@pytest.fixture
def certs(tmp_path: Path) -> tuple[trustme.CA, Path, Path]:
    require_browser()  # skip before starting anything
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    crt, key = tmp_path / "server.crt", tmp_path / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(crt))
    cert.private_key_pem.write_to_path(str(key))
    return ca, crt, key


@pytest.fixture
def backend() -> Iterator[EchoBackend]:
    echo = EchoBackend(max_size=None)
    try:
        yield echo
    finally:
        echo.close()


def conf(backend: EchoBackend, certs: tuple[trustme.CA, Path, Path], extra: str = "") -> str:
    _, crt, key = certs
    return CONF % {
        "backend": backend.port,
        "cert": crt,
        "key": key,
        "root": PAGE_ROOT,
        "extra": extra,
    }


def accepts(port: int, ca: trustme.CA) -> int:
    """stub_status's ``accepts`` (this reading's own connection included), over HTTP/1.1."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/status")
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    m = re.search(r"server accepts handled requests\n\s*(\d+) (\d+) (\d+)", body)
    assert m, body
    return int(m[1])


@dataclass(frozen=True, slots=True)
class NetLogView:
    """What Chromium's own NetLog says about its connections to one ``host:port``."""

    #: Socket source id -> ALPN protocol, for every TCP connection that connected.
    connected: dict[int, str]
    #: The sockets that carried requests: bound to a request (HTTP/1.1) or to an HTTP/2 session.
    used: list[int]
    #: Per HTTP/2 session's socket, the requests sent on it: (":method", ":path", ":protocol").
    h2_requests: dict[int, list[tuple[str, str, str]]]


def read_netlog(path: Path, address: str) -> NetLogView:
    """Chromium's NetLog (``--log-net-log``, a JSON file) reduced to ``address``'s sockets."""
    text = path.read_text()
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # cut short: the writer had not closed the events list
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    begin = log["constants"]["logEventPhase"]["PHASE_BEGIN"]
    end = log["constants"]["logEventPhase"]["PHASE_END"]
    connected: dict[int, str] = {}
    in_use: list[int] = []
    session_socket: dict[int, int] = {}
    h2_requests: dict[int, list[tuple[str, str, str]]] = {}
    for event in log["events"]:
        name, source, params = names[event["type"]], event["source"]["id"], event.get("params")
        params = params if isinstance(params, dict) else {}
        if name == "TCP_CONNECT" and event["phase"] == end:
            if params.get("remote_address") == address:
                connected[source] = ""
        elif name == "SSL_CONNECT" and event["phase"] == end and source in connected:
            connected[source] = params.get("next_proto", "")
        elif name == "SOCKET_IN_USE" and event["phase"] == begin and source in connected:
            in_use.append(source)
        elif name == "HTTP2_SESSION_INITIALIZED":
            socket_id = params["source_dependency"]["id"]
            if socket_id in connected:
                session_socket[source] = socket_id
        elif name == "HTTP2_SESSION_SEND_HEADERS" and source in session_socket:
            fields = dict(h.split(": ", 1) for h in params["headers"] if h.startswith(":"))
            h2_requests.setdefault(session_socket[source], []).append(
                (fields[":method"], fields[":path"], fields.get(":protocol", ""))
            )
    used = list(dict.fromkeys([*in_use, *session_socket.values()]))
    return NetLogView(connected, used, h2_requests)


@dataclass
class Run:
    result: dict[str, Any]
    #: TCP connections the server accepted from the browser (stub_status).
    accepted: int
    netlog: NetLogView


def browse(
    home: Path, port: int, ca: trustme.CA, on_ready: Callable[[], None] | None = None
) -> Run:
    """Chromium loads the page, then the page opens ``/ws`` and exchanges its messages.

    After the exchange, the WebSocket still open, stub_status is read again; then ``on_ready``
    is called (to make the server close the WebSocket) or, without it, the page closes it with
    1000.
    """
    node, certutil = require_browser()
    trusting_home(home, certutil, ca)
    before = accepts(port, ca)
    env = {
        "PAGE_URL": f"https://localhost:{port}/",
        "WS_URL": f"wss://localhost:{port}/ws",
        "BINARY_BYTES": str(BINARY_BYTES),
        "TIMEOUT_MS": str(SCRIPT_TIMEOUT_MS),
        "NET_LOG": str(home / "netlog.json"),
    }
    with browser_peer(node, SCRIPT, home, env, stdin=True) as peer:
        peer.wait_for(r'^\{"ready":true\}$', RUN_TIMEOUT)
        accepted = accepts(port, ca) - before - 1
        if on_ready is not None:
            on_ready()
        else:
            peer.write("close\n")
        status = peer.wait(RUN_TIMEOUT)
    netlog = read_netlog(home / "netlog.json", f"127.0.0.1:{port}")
    return Run(last_json(peer, status), accepted, netlog)


def assert_exchanged(result: dict[str, Any]) -> None:
    assert result["ok"] and result["exit_status"] == 0, result
    assert result["status"] == 200
    assert result["text"]["echo"] == result["text"]["sent"]
    assert result["binary"] == {"bytes": BINARY_BYTES, "received": BINARY_BYTES, "same": True}
    pages = [r for r in result["responses"] if r["type"] == "Document"]
    assert len(pages) == 1, result["responses"]
    assert pages[0]["protocol"] == "h2", pages[0]
    assert result["ws"]["created"] == 1 and result["ws"]["closed"] == 1, result["ws"]


def connections(lines: list[LogLine]) -> list[int]:
    """The distinct ``$connection`` numbers of ``lines``, in order of appearance."""
    return list(dict.fromkeys(line.connection for line in lines))


def requests(lines: list[LogLine]) -> set[tuple[str, str, str, int]]:
    return {(x.method, x.path, x.protocol, x.status) for x in lines}


def report(name: str, run: Run, lines: list[LogLine]) -> None:
    """Print the counts (``pytest -s``): a figure for the note."""
    ws = run.result["ws"]["handshakes"]
    log = ", ".join(f"#{x.connection} {x.method} {x.path} {x.protocol} {x.status}" for x in lines)
    print(
        f"\n{name}: page over {run.result['responses'][0]['protocol']}, WebSocket handshake"
        f" status {[h['status'] for h in ws]}; connections that carried the page + WebSocket:"
        f" {len(run.netlog.used)} (Chromium's NetLog), {len(connections(lines))} (access log:"
        f" {log}); TCP connections Chromium opened: {len(run.netlog.connected)} (NetLog,"
        f" ALPN {sorted(run.netlog.connected.values())}), {run.accepted} accepted (stub_status)"
    )


def assert_counts(run: Run, lines: list[LogLine], used: int) -> None:
    """``used`` connections carried the page and the WebSocket, by the browser's NetLog and the
    server's log; every TCP connection Chromium opened was one the server accepted.  (Chromium
    may open one more than it uses: a navigation preconnect racing the navigation's own
    connection, dropped unused with "Switching to HTTP2 session" once h2 is negotiated.)"""
    assert len(run.netlog.used) == used, run.netlog
    assert len(connections(lines)) == used, lines
    assert run.accepted == len(run.netlog.connected), (run.accepted, run.netlog)


def test_chromium_websocket_rides_the_pages_http2_connection(
    tmp_path: Path,
    wsgate: Callable[..., WsgateProcess],
    backend: EchoBackend,
    certs: tuple[trustme.CA, Path, Path],
) -> None:
    gw = wsgate(conf(backend, certs))
    run = browse(tmp_path / "home", gw.port, certs[0], lambda: gw.signal(signal.SIGQUIT))
    result = run.result
    assert_exchanged(result)
    # The browser's side: an RFC 8441 stream answers the extended CONNECT with :status 200
    # (an HTTP/1.1 Upgrade would be 101), with no Upgrade/Sec-WebSocket-Accept headers.
    [handshake] = result["ws"]["handshakes"]
    assert handshake["status"] == 200, handshake
    headers = {k.lower() for k in handshake["headers"]}
    assert "upgrade" not in headers and "sec-websocket-accept" not in headers, headers
    # QUIT during the open WebSocket: 1001 to both ends.
    assert result["close"] == {"code": 1001, "reason": "going away", "wasClean": True}
    assert gw.proc.wait(20) == 0
    wait_for(lambda: bool(backend.closes), "the backend's connection to end")
    assert backend.closes == [(1001, "going away")], backend.closes
    # The server's side: one TCP connection carried the page and the WebSocket.
    lines = read_log(gw.access_log)
    report("wsgate (RFC 8441)", run, lines)
    assert {("GET", "/", "HTTP/2.0", 200), ("CONNECT", "/ws", "HTTP/2.0", 200)} <= requests(lines)
    assert_counts(run, lines, used=1)
    # The browser's NetLog: the extended CONNECT went on the page's HTTP/2 session.
    [socket_id] = run.netlog.used
    assert run.netlog.connected[socket_id] == "h2"
    sent = run.netlog.h2_requests[socket_id]
    assert sent[0] == ("GET", "/", "") and ("CONNECT", "/ws", "websocket") in sent, sent
    # The backend saw an ordinary HTTP/1.1 upgrade with the page's origin.
    [(path, handshake_in)] = backend.requests
    assert path == "/ws" and handshake_in["Origin"] == f"https://localhost:{gw.port}"


def test_chromium_falls_back_to_http1_with_http2_websocket_off(
    tmp_path: Path,
    wsgate: Callable[..., WsgateProcess],
    backend: EchoBackend,
    certs: tuple[trustme.CA, Path, Path],
) -> None:
    """Control: without ``SETTINGS_ENABLE_CONNECT_PROTOCOL`` the same page's WebSocket takes a
    second connection, an HTTP/1.1 Upgrade (so the count of 1 above is RFC 8441's doing)."""
    gw = wsgate(conf(backend, certs, "http2_websocket off;"))
    run = browse(tmp_path / "home", gw.port, certs[0])
    result = run.result
    assert_exchanged(result)
    assert [h["status"] for h in result["ws"]["handshakes"]] == [101]
    assert result["close"]["code"] == 1000
    gw.stop()
    lines = read_log(gw.access_log)
    report("wsgate, http2_websocket off", run, lines)
    assert {("GET", "/", "HTTP/2.0", 200), ("GET", "/ws", "HTTP/1.1", 101)} <= requests(lines)
    assert_counts(run, lines, used=2)
    assert sorted(run.netlog.connected[x] for x in run.netlog.used) == ["h2", "http/1.1"]
    wait_for(lambda: bool(backend.closes), "the backend's connection to end")
    assert backend.closes == [(1000, "done")]


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make debs)")
def test_chromium_through_nginx_takes_a_second_connection(
    tmp_path: Path, backend: EchoBackend, certs: tuple[trustme.CA, Path, Path]
) -> None:
    """The figure beside nginx: nginx (1.22.1 here) has no RFC 8441, so the same page's
    WebSocket costs Chromium a second TCP and TLS connection."""
    nginx: Target = start_target("nginx", tmp_path / "nginx", conf(backend, certs))
    try:
        run = browse(tmp_path / "home", nginx.port, certs[0])
    finally:
        nginx.stop()
    result = run.result
    assert_exchanged(result)
    assert [h["status"] for h in result["ws"]["handshakes"]] == [101]
    lines = read_log(nginx.prefix / "logs" / "access.log")
    report("nginx " + nginx_version(), run, lines)
    assert {("GET", "/", "HTTP/2.0", 200), ("GET", "/ws", "HTTP/1.1", 101)} <= requests(lines)
    assert_counts(run, lines, used=2)
    assert sorted(run.netlog.connected[x] for x in run.netlog.used) == ["h2", "http/1.1"]
    wait_for(lambda: bool(backend.closes), "the backend's connection to end")
    assert backend.closes == [(1000, "done")]


def nginx_version() -> str:
    assert NGINX is not None
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, timeout=10).stderr
    return out.strip().rsplit("/", 1)[-1]
