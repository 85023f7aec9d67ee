"""A real browser opening ``wss://`` through wsgate with a test CA (issue 5, tests).

Issue 5: "a real browser (headless Chromium from the system packages, driven by Playwright or
the DevTools protocol) opening ``wss://`` through wsgate with a test CA and exchanging
messages".  Browsers on HTTPS pages may only open ``wss://`` (mixed content), so this is the
path a production deployment of a TLS-terminating WebSocket proxy has to get right.

Topology, all on loopback::

    Chromium (playwright-core, tests/interop/browser_wss.js)
        │  https://localhost:PORT/        -> wsgate ``location = / { return 200 ...; }``
        │  wss://localhost:PORT/chat      -> wsgate ``location /`` (the walk-through's block)
        ▼
    wsgate  ``listen 127.0.0.1:0 ssl`` with a trustme certificate for localhost / 127.0.0.1
        │  ws:// (plain), ``proxy_pass http://backend``
        ▼
    a ``websockets`` echo server that records each handshake's headers

**How Chromium trusts the test CA: for real, through NSS.**  Chromium on Linux takes
user-added roots from the NSS database in ``$HOME/.pki/nssdb``.  The test creates an empty one
in a temporary ``HOME`` with ``certutil`` (Debian's ``libnss3-tools``) and adds the trustme CA
with trust flags ``C,,`` (a CA trusted to issue TLS server certificates); Chromium runs with
that ``HOME`` and a fresh ``--user-data-dir``.  Nothing relaxes verification: no
``--ignore-certificate-errors``, no SPKI pin, no Playwright ``ignoreHTTPSErrors``, so the
certificate wsgate presents is verified like any site's (chain, ``localhost`` name, validity).
Without the database the same run fails with ``net::ERR_CERT_AUTHORITY_INVALID``; the control
test below keeps that true.  (``--ignore-certificate-errors-spki-list`` would have pinned the
one test certificate, but proves less: it bypasses chain building rather than using it.)

**Why an https page first, not about:blank.**  The script navigates to an https:// page that
wsgate serves itself (``return 200 "..."`` sends ``text/plain``, which is enough: the page needs
no markup, because Playwright's ``page.evaluate`` runs the WebSocket code in the page's origin).
So the socket is opened by a secure context whose origin is ``https://localhost:PORT``, as on a
real site: the browser sends that ``Origin``, which the backend must receive unchanged, and
both the navigation's TLS connection and the WebSocket's go through wsgate's TLS listener.

The script sends five text messages (one at a time, each after the previous echo, with a
non-ASCII character), closes with 1000 and prints JSON; the test checks the echoes, the close
code and that the close completed promptly (wsgate passes the backend's TCP close on to the
browser's TLS connection), the TLS details Chromium saw, the backend's view of the handshake,
wsgate's access log (``200`` for the page, ``101`` for the tunnel, logged when it ends, as nginx
does) and that no Chromium process outlives the run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from tests.conftest import WsgateProcess
from tests.helpers import REPO_ROOT, Peer, require_node

__all__: list[str] = []

BROWSER_JS = str(REPO_ROOT / "tests" / "interop" / "browser_wss.js")
CHROMIUM = Path("/usr/bin/chromium")
MESSAGES = 5
#: The script's own deadline (ms) and the test's, a little later, after which it kills it.
SCRIPT_TIMEOUT_MS = 15_000
RUN_TIMEOUT = 25.0
PAGE_TEXT = "wsgate browser test"

CONF = """\
events {}

http {
    map $http_upgrade $connection_upgrade {
        default upgrade;
        ''      close;
    }

    upstream backend {
        server 127.0.0.1:%(backend)d;
    }

    server {
        listen 127.0.0.1:0 ssl;
        server_name localhost;
        ssl_certificate     %(cert)s;
        ssl_certificate_key %(key)s;

        location = / {
            return 200 "%(page)s";
        }

        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
        }
    }
}
"""


def require_browser() -> tuple[str, str]:
    """``node`` and ``certutil``, or skip saying what is missing."""
    node = require_node("playwright-core")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"browser test: {CHROMIUM} missing (Debian package chromium; `make debs`)")
    certutil = shutil.which("certutil")
    if certutil is None:
        pytest.skip("browser test: certutil missing (Debian package libnss3-tools; `make debs`)")
    return node, certutil


class EchoBackend:
    """A plain ``ws://`` echo server (``websockets``' threaded server) recording handshakes."""

    def __init__(self, max_size: int | None = 1 << 20) -> None:
        self.requests: list[tuple[str, Headers]] = []
        #: The code and reason of the Close frame each connection received (None: none came).
        self.closes: list[tuple[int, str] | None] = []
        self.server: Server = serve(
            self._handle, "127.0.0.1", 0, max_size=max_size, compression=None
        )
        self.port: int = self.server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.requests.append((ws.request.path, ws.request.headers))
        try:
            for message in ws:
                ws.send(message)
        except ConnectionClosed:
            pass
        rcvd = ws.protocol.close_rcvd
        self.closes.append(None if rcvd is None else (rcvd.code, rcvd.reason))

    def close(self) -> None:
        self.server.shutdown()
        self._thread.join(5)


@pytest.fixture
def echo_backend() -> Iterator[EchoBackend]:
    backend = EchoBackend()
    try:
        yield backend
    finally:
        backend.close()


def trusting_home(home: Path, certutil: str, ca: trustme.CA) -> None:
    """An NSS database in ``home/.pki/nssdb`` trusting ``ca`` for TLS servers (``C,,``)."""
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    ca_file = home / "test-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    db = f"sql:{nssdb}"
    for argv in (
        [certutil, "-N", "-d", db, "--empty-password"],
        [certutil, "-A", "-d", db, "-n", "wsgate test CA", "-t", "C,,", "-i", str(ca_file)],
    ):
        subprocess.run(argv, check=True, capture_output=True, timeout=10)


def processes_using(marker: str) -> list[int]:
    """Pids of live processes whose command line mentions ``marker`` (a unique tmp path)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


@contextmanager
def browser_peer(
    node: str, script: str, home: Path, env: dict[str, str], *, stdin: bool = False
) -> Iterator[Peer]:
    """Run the Playwright ``script`` with Chromium, ``home`` as ``HOME`` (for the NSS database)
    and a fresh profile in it; ``env`` is added to the script's environment.

    On leaving, :class:`Peer` sends SIGTERM, on which Playwright kills Chromium's process group.
    Afterwards no process may still use the profile directory.
    """
    profile = home / "chromium-profile"
    env = {"HOME": str(home), "USER_DATA_DIR": str(profile), "CHROMIUM": str(CHROMIUM), **env}
    peer = Peer([node, script], env=env, stdin=stdin)
    try:
        yield peer
    finally:
        peer.stop()
        # Chromium's helpers (crashpad, zygote) are reparented and may take a moment to go.
        deadline = time.monotonic() + 5.0
        while (leftover := processes_using(str(profile))) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in leftover:  # only Chromium processes of this run's own profile
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert not leftover, f"Chromium processes outlived the script: {leftover}"


def last_json(peer: Peer, status: int) -> dict[str, Any]:
    """The script's last JSON line, with its exit status and stderr added."""
    lines = [line for line in peer.stdout_lines if line.startswith("{")]
    assert lines, f"no JSON from the browser script (status {status}): {peer.stderr_lines!r}"
    result: dict[str, Any] = json.loads(lines[-1])
    result["exit_status"] = status
    result["stderr"] = peer.stderr_lines
    return result


def run_browser(node: str, home: Path, port: int, *, host: str = "localhost") -> dict[str, Any]:
    """Run browser_wss.js against ``https://HOST:PORT``; its JSON result and exit status."""
    env = {
        "PAGE_URL": f"https://{host}:{port}/",
        "WS_URL": f"wss://{host}:{port}/chat",
        "MESSAGES": str(MESSAGES),
        "TIMEOUT_MS": str(SCRIPT_TIMEOUT_MS),
    }
    with browser_peer(node, BROWSER_JS, home, env) as peer:
        status = peer.wait(RUN_TIMEOUT)
    return last_json(peer, status)


def wait_access(proxy: WsgateProcess, pattern: str, timeout: float = 10.0) -> str:
    """The first access-log line matching ``pattern``, waiting for it to be written."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        text = proxy.access_log.read_text() if proxy.access_log.exists() else ""
        for line in text.splitlines():
            if rx.search(line):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no {pattern!r} in access log:\n{text}")
        time.sleep(0.01)


@pytest.fixture
def tls_proxy(
    tmp_path: Path, echo_backend: EchoBackend, wsgate: Callable[[str], WsgateProcess]
) -> tuple[WsgateProcess, trustme.CA]:
    """wsgate terminating TLS with a fresh trustme certificate for localhost and 127.0.0.1."""
    require_browser()  # skip before starting anything
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    certs = tmp_path / "certs"
    certs.mkdir()
    cert.cert_chain_pems[0].write_to_path(str(certs / "server.crt"))
    cert.private_key_pem.write_to_path(str(certs / "server.key"))
    conf = CONF % {
        "backend": echo_backend.port,
        "cert": certs / "server.crt",
        "key": certs / "server.key",
        "page": PAGE_TEXT,
    }
    return wsgate(conf), ca


@pytest.mark.interop
def test_chromium_exchanges_messages_over_wss_through_wsgate(
    tmp_path: Path, tls_proxy: tuple[WsgateProcess, trustme.CA], echo_backend: EchoBackend
) -> None:
    node, certutil = require_browser()
    proxy, ca = tls_proxy
    home = tmp_path / "home"
    trusting_home(home, certutil, ca)
    port = proxy.ports[0]

    result = run_browser(node, home, port)

    assert result["ok"] and result["exit_status"] == 0, f"{result}\nwsgate:\n{proxy.errors()}"
    assert (result["status"], result["body"]) == (200, PAGE_TEXT)
    assert result["security"]["protocol"].startswith("TLS 1."), result["security"]
    assert result["secureContext"] is True
    assert result["origin"] == f"https://localhost:{port}"
    assert len(result["sent"]) == MESSAGES and len(set(result["sent"])) == MESSAGES
    assert result["received"] == result["sent"]
    assert result["closeCode"] == 1000 and result["wasClean"] is True
    # RFC 6455 section 7.1.1: after the Close frames "the underlying TCP connection, in most
    # normal cases, SHOULD be closed first by the server".  The backend does so; wsgate must
    # then close the browser's TLS connection (it cannot half-close TLS).  Chromium otherwise
    # waits 2 s (its kUnderlyingConnectionCloseTimeout) and closes it itself.
    assert result["closeMs"] < 1000, f"close took {result['closeMs']} ms: wsgate kept TLS open"

    # The browser's handshake reached the backend over plain ws:// with its own Origin.
    assert len(echo_backend.requests) == 1, echo_backend.requests
    path, handshake = echo_backend.requests[0]
    assert path == "/chat"
    assert handshake["Origin"] == f"https://localhost:{port}"
    assert handshake["Upgrade"].lower() == "websocket"
    assert "HeadlessChrome" in handshake["User-Agent"]

    wait_access(proxy, r'"GET / HTTP/1\.1" 200 ')
    wait_access(proxy, r'"GET /chat HTTP/1\.1" 101 ')


@pytest.mark.interop
def test_chromium_refuses_wsgate_without_the_test_ca(
    tmp_path: Path, tls_proxy: tuple[WsgateProcess, trustme.CA]
) -> None:
    """Control: the same run with an empty ``HOME`` (no NSS database) must fail verification,
    so the passing test above really depends on the CA, not on a relaxed browser."""
    node, _ = require_browser()
    proxy, _ = tls_proxy
    home = tmp_path / "home"
    home.mkdir()

    result = run_browser(node, home, proxy.ports[0])

    assert not result["ok"] and result["exit_status"] == 1, result
    assert "net::ERR_CERT_AUTHORITY_INVALID" in result["error"], result
