"""``access_log`` with ``buffer=``, ``flush=`` and ``if=``, and the ``json`` format, against a
real wsgate process: buffered lines reach the file when the buffer fills, when ``flush=``
time passes, and on every signal that reopens, reloads or stops (no line lost)."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import WsgateProcess


def get(port: int, path: str, **headers: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close", **headers})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def conf(access_log: str, extra: str = "") -> str:
    return f"""events {{}}
http {{
  log_format s '$status $request';
  {extra}
  server {{
    listen 127.0.0.1:0;
    access_log {access_log};
    location /ok {{ return 200 ok; }}
    location / {{ return 404; }}
  }}
}}
"""


def text(handle: WsgateProcess) -> str:
    return handle.access_log.read_text() if handle.access_log.exists() else ""


def test_buffer_fills(wsgate: Callable[..., WsgateProcess]) -> None:
    # Each line is "200 GET /ok HTTP/1.1\n": 21 bytes; two fit in 50, the third does not.
    gw = wsgate(conf("logs/access.log s buffer=50"))
    assert get(gw.port, "/ok") == 200
    assert get(gw.port, "/ok") == 200
    assert text(gw) == ""
    assert get(gw.port, "/ok") == 200
    assert gw.access_lines(2) == ["200 GET /ok HTTP/1.1"] * 2
    assert gw.stop() == 0
    assert text(gw).splitlines() == ["200 GET /ok HTTP/1.1"] * 3


def test_flush_time(wsgate: Callable[..., WsgateProcess]) -> None:
    gw = wsgate(conf("logs/access.log s buffer=64k flush=1s"))
    assert get(gw.port, "/ok") == 200
    assert text(gw) == ""
    assert gw.access_lines(1, timeout=10) == ["200 GET /ok HTTP/1.1"]


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1], ids=lambda s: s.name
)
def test_signals_write_the_buffer(wsgate: Callable[..., WsgateProcess], sig: int) -> None:
    gw = wsgate(conf("logs/access.log s buffer=64k flush=1h"))
    for _ in range(3):
        assert get(gw.port, "/ok") == 200
    assert get(gw.port, "/missing") == 404
    assert text(gw) == ""
    want = ["200 GET /ok HTTP/1.1"] * 3 + ["404 GET /missing HTTP/1.1"]
    if sig in (signal.SIGTERM, signal.SIGQUIT):
        assert gw.stop(sig) == 0
        assert text(gw).splitlines() == want
        return
    gw.signal(sig)
    assert gw.access_lines(4) == want
    # Still buffering after the reopen or reload (the old worker flushed its buffer when it
    # retired), and still answering.
    assert get(gw.port, "/ok") == 200
    assert len(text(gw).splitlines()) == 4
    assert gw.stop() == 0
    assert text(gw).splitlines() == [*want, "200 GET /ok HTTP/1.1"]


def test_if_logs_only_errors(wsgate: Callable[..., WsgateProcess]) -> None:
    gw = wsgate(
        conf("logs/access.log s if=$loggable", "map $status $loggable { ~^[23] 0; default 1; }")
    )
    assert get(gw.port, "/ok") == 200
    assert get(gw.port, "/nope") == 404
    assert get(gw.port, "/ok") == 200
    assert get(gw.port, "/again") == 404
    assert gw.access_lines(2) == ["404 GET /nope HTTP/1.1", "404 GET /again HTTP/1.1"]
    assert gw.stop() == 0
    assert len(text(gw).splitlines()) == 2


def test_json_format(wsgate: Callable[..., WsgateProcess]) -> None:
    gw = wsgate(conf("logs/access.log json"))
    assert get(gw.port, "/ok", **{"User-Agent": 'ua "quoted" \\ back'}) == 200
    (line,) = gw.access_lines(1)
    obj = json.loads(line)
    assert obj["status"] == "200" and obj["request"] == "GET /ok HTTP/1.1"
    assert obj["http_user_agent"] == 'ua "quoted" \\ back'
    assert obj["remote_addr"] == "127.0.0.1" and obj["http_referer"] == ""
    assert obj["host"] == "127.0.0.1" and obj["upstream_addr"] == ""
    assert {"time", "body_bytes_sent", "request_time", "upstream_status"} <= set(obj)


def test_user_escape_json_format(wsgate: Callable[..., WsgateProcess]) -> None:
    fmt = (
        """log_format j escape=json '{"s":$status,"r":"$http_referer","ua":"$http_user_agent"}';"""
    )
    gw = wsgate(conf("logs/access.log j", fmt))
    assert get(gw.port, "/x", **{"User-Agent": "a\tb"}) == 404
    (line,) = gw.access_lines(1)
    assert json.loads(line) == {"s": 404, "r": "", "ua": "a\tb"}


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("gzip=10", 'invalid compression level "10"'),
        ("buffer=1x", 'invalid buffer size "1x"'),
    ],
)
def test_config_errors(tmp_path: Path, param: str, message: str) -> None:
    (tmp_path / "nginx.conf").write_text(conf(f"logs/access.log s {param}"))
    r = subprocess.run(
        [sys.executable, "-m", "wsgate.cli", "-p", str(tmp_path), "-c", "nginx.conf", "-t"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1
    assert f"[emerg] {message} in {tmp_path}/nginx.conf:7\n" in r.stderr
