"""nginx's request phases (:mod:`wsgate.http.phases`): each handler, and the walk, without a
socket or a loop -- a configuration, a parsed head, a fake worker with a settable clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsgate.config.loader import load
from wsgate.config.model import Config
from wsgate.config.variables import RequestContext
from wsgate.errors import HttpError
from wsgate.http.errorpages import ERROR_HANDLERS, error_page
from wsgate.http.phases import (
    HANDLERS,
    MAX_URI_CHANGES,
    Close,
    Content,
    Decision,
    Delay,
    Phase,
    Plain,
    Redirect,
    Request,
    Restart,
    on_error,
    release_slots,
    run,
)
from wsgate.http.request import RequestHead, RequestParser
from wsgate.limits import LimitRegistry
from wsgate.routing import select_server


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def log(self, level: str, msg: str, *args: object, **kw: object) -> None:
        self.lines.append((level, msg))


class Worker:
    def __init__(self) -> None:
        self.limits = LimitRegistry()
        self.error_log = Log()
        self.now = 100.0
        self.stopping = False

    def clock(self) -> float:
        return self.now


def conf(tmp_path: Path, body: str) -> Config:
    (tmp_path / "nginx.conf").write_text(f"events {{}}\nhttp {{\n{body}\n}}\n")
    return load("nginx.conf", prefix=str(tmp_path))


def head_of(raw: bytes) -> RequestHead:
    events = RequestParser().feed(raw)
    head = events[0]
    assert isinstance(head, RequestHead)
    return head


def request(
    config: Config, worker: Worker, target: str = "/", method: str = "GET", extra: str = ""
) -> Request:
    raw = f"{method} {target} HTTP/1.1\r\nHost: example.org\r\n{extra}\r\n".encode()
    head = head_of(raw)
    ctx = RequestContext(
        remote_addr="192.0.2.1", server_addr="127.0.0.1", server_port=8080, maps=config.http.maps
    )
    ctx.method, ctx.request_uri, ctx.headers = head.method, head.target, head.headers
    ctx.host = head.host or ""
    servers = config.http.servers
    server = select_server(servers, head.host, servers[0])
    return Request(worker, 1, head, ctx, server, connection_started=worker.now)


def decide(r: Request) -> Decision:
    decision, _ = run(r)
    return decision


SIMPLE = """
server {
    listen 8080;
    location /ws/ { proxy_pass http://127.0.0.1:9; }
    location = /status { stub_status; }
    location = /metrics { prometheus; }
    location = /r { return 302 /elsewhere; }
    location = /t { return 200 "hi $uri"; }
    location = /gone { return 444; }
    location = /e { return 418; }
    location = /closed { deny 192.0.2.0/24; proxy_pass http://127.0.0.1:9; }
    location = /small { client_max_body_size 10; proxy_pass http://127.0.0.1:9; }
    location = /nothing { }
}
"""


def test_phases_are_in_nginx_order() -> None:
    phases = [phase for phase, _ in HANDLERS]
    assert phases == sorted(phases)
    assert Phase.FIND_CONFIG in phases and Phase.CONTENT == phases[-1]


def test_content_handlers(tmp_path: Path) -> None:
    config, worker = conf(tmp_path, SIMPLE), Worker()
    r = request(config, worker, "/ws/chat?x=1")
    assert decide(r) is Content.PROXY
    assert r.location is not None and r.location.name == "/ws/"
    assert (r.ctx.uri, r.ctx.args) == ("/ws/chat", "x=1")
    assert decide(request(config, worker, "/status")) is Content.STUB_STATUS
    assert decide(request(config, worker, "/metrics", "HEAD")) is Content.PROMETHEUS
    with pytest.raises(HttpError) as info:
        decide(request(config, worker, "/status", "POST", "Content-Length: 0\r\n"))
    assert info.value.status == 405
    with pytest.raises(HttpError) as info:
        decide(request(config, worker, "/nothing"))
    assert info.value.status == 404
    with pytest.raises(HttpError) as info:
        decide(request(config, worker, "/small", "POST", "Content-Length: 11\r\n"))
    assert info.value.status == 413 and "too large body: 11 bytes" in info.value.log
    assert decide(request(config, worker, "/small", "POST", "Content-Length: 10\r\n")) is (
        Content.PROXY
    )


def test_return(tmp_path: Path) -> None:
    config, worker = conf(tmp_path, SIMPLE), Worker()
    r = request(config, worker, "/r")
    # The Location as set; made absolute when the response is written.
    assert decide(r) == Redirect(302, "/elsewhere")
    assert r.absolute("/elsewhere") == "http://example.org:8080/elsewhere"
    assert decide(request(config, worker, "/t")) == Plain(200, b"hi /t", "text/plain")
    assert decide(request(config, worker, "/gone")) == Close(444)
    with pytest.raises(HttpError) as info:
        decide(request(config, worker, "/e"))
    assert info.value.status == 418


def test_server_return_comes_before_the_location(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        "server { listen 8080; return 301 https://x/; location / { return 200; } }",
    )
    r = request(config, Worker(), "/")
    assert decide(r) == Redirect(301, "https://x/")
    assert r.location is None  # the server rewrite phase ended the walk


def test_slash_redirect(tmp_path: Path) -> None:
    config = conf(tmp_path, SIMPLE)
    r = request(config, Worker(), "/ws?a=b")
    assert decide(r) == Redirect(301, "/ws/?a=b")
    assert r.absolute("/ws/?a=b") == "http://example.org:8080/ws/?a=b"


def test_access_deny(tmp_path: Path) -> None:
    config = conf(tmp_path, SIMPLE)
    with pytest.raises(HttpError) as info:
        decide(request(config, Worker(), "/closed"))
    assert (info.value.status, info.value.log) == (403, "access forbidden by rule")


def test_keepalive_limits_in_find_config(tmp_path: Path) -> None:
    config = conf(
        tmp_path, "server { listen 8080; keepalive_requests 2; location / { return 200; } }"
    )
    worker = Worker()
    r = request(config, worker)
    decide(r)
    assert r.head.keep_alive
    r = request(config, worker)
    r.connection_requests = 2
    decide(r)
    assert not r.head.keep_alive
    worker.stopping = True
    r = request(config, worker)
    decide(r)
    assert not r.head.keep_alive


def test_plain_http_on_tls_port(tmp_path: Path) -> None:
    config = conf(tmp_path, SIMPLE)
    r = request(config, Worker(), "/t")
    r.plain_on_tls = True
    with pytest.raises(HttpError) as info:
        decide(r)
    assert info.value.status == 497


LIMITS = """
limit_req_zone $remote_addr zone=one:1m rate=1r/s;
limit_conn_zone $remote_addr zone=addr:1m;
server {
    listen 8080;
    location /slow { limit_req zone=one burst=1; proxy_pass http://127.0.0.1:9; }
    location /two { limit_conn addr 1; proxy_pass http://127.0.0.1:9; }
    location /early { limit_conn addr 1; return 200; }
}
"""


def test_limit_req_delays_then_refuses(tmp_path: Path) -> None:
    config, worker = conf(tmp_path, LIMITS), Worker()
    assert decide(request(config, worker, "/slow")) is Content.PROXY
    r = request(config, worker, "/slow")
    decision, index = run(r)
    assert isinstance(decision, Delay) and decision.seconds == pytest.approx(1.0)
    assert worker.error_log.lines[-1][0] == "warn"  # one below the refusal's "error"
    assert "delaying request, excess: 1.000" in worker.error_log.lines[-1][1]
    # After the delay the walk goes on where it stopped.
    assert run(r, index)[0] is Content.PROXY
    with pytest.raises(HttpError) as info:
        decide(request(config, worker, "/slow"))
    assert info.value.status == 503
    assert worker.error_log.lines[-1] == (
        "error",
        'limiting requests, excess: 2.000 by zone "one"',
    )


def test_limit_conn_holds_slots_until_released(tmp_path: Path) -> None:
    config, worker = conf(tmp_path, LIMITS), Worker()
    first = request(config, worker, "/two")
    assert decide(first) is Content.PROXY
    assert len(first.conn_slots) == 1
    with pytest.raises(HttpError) as info:
        decide(request(config, worker, "/two"))
    assert info.value.status == 503
    release_slots(first)
    assert first.conn_slots == ()
    assert decide(request(config, worker, "/two")) is Content.PROXY
    # ``return`` (the rewrite phase) comes before the preaccess phase: no slot taken.
    early = request(config, worker, "/early")
    assert decide(early) == Plain(200, b"", "text/plain") and early.conn_slots == ()


def test_internal_redirects_are_bounded(tmp_path: Path) -> None:
    """A :class:`Restart` goes back to FIND_CONFIG; the 11th is nginx's "rewrite or internal
    redirection cycle" (500)."""
    config = conf(tmp_path, SIMPLE)
    seen: list[str] = []

    def count(r: Request) -> None:
        seen.append(r.ctx.uri)

    def again(r: Request) -> Restart:
        return Restart()

    table = [
        (Phase.POST_READ, HANDLERS[0][1]),
        (Phase.FIND_CONFIG, (count,)),
        (Phase.REWRITE, (again,)),
    ]
    assert HANDLERS[2][0] is Phase.FIND_CONFIG and HANDLERS[3][0] is Phase.REWRITE
    r = request(config, Worker(), "/t")
    with pytest.raises(HttpError) as info:
        run(r, table=table)
    assert info.value.status == 500
    assert info.value.log == 'rewrite or internal redirection cycle while processing "/t"'
    assert len(seen) == MAX_URI_CHANGES + 1

    def once(r: Request) -> Restart | None:
        return Restart() if len(seen) == 1 else None

    seen.clear()
    table = [
        (Phase.POST_READ, HANDLERS[0][1]),
        (Phase.FIND_CONFIG, (count, *HANDLERS[2][1])),
        (Phase.REWRITE, (once, *HANDLERS[3][1])),
    ]
    r = request(config, Worker(), "/t")
    assert run(r, table=table)[0] == Plain(200, b"hi /t", "text/plain")
    assert len(seen) == 2


def test_errors_re_enter_through_error_handlers(tmp_path: Path) -> None:
    """An error handler that redirects (here like ``rewrite ... last``: ``Restart()``) makes
    the walk go on at ``FIND_CONFIG`` with the new URI, counted as an internal redirect;
    none: the error leaves :func:`run` for nginx's page."""
    config = conf(tmp_path, SIMPLE)
    r = request(config, Worker(), "/nothing")
    with pytest.raises(HttpError) as info:
        run(r, errors=())
    assert info.value.status == 404
    assert on_error(r, info.value, ()) is None
    assert error_page in ERROR_HANDLERS

    def to_t(r: Request, exc: HttpError) -> Restart | None:
        if exc.status != 404:
            return None
        r.ctx.uri = "/t"
        return Restart()

    r = request(config, Worker(), "/nothing")
    assert run(r, errors=(to_t,))[0] == Plain(200, b"hi /t", "text/plain")
    assert r.location is not None and r.location.name == "/t"
    assert r.uri_changes == MAX_URI_CHANGES
    with pytest.raises(HttpError) as other:
        run(request(config, Worker(), "/closed"), errors=(to_t,))
    assert other.value.status == 403
    r = request(config, Worker(), "/nothing")
    r.uri_changes = 1
    with pytest.raises(HttpError) as cycle:
        run(r, errors=(to_t,))
    assert cycle.value.status == 500
