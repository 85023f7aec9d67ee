"""``listen`` parameters and nginx's duplicate checks, ``error_log`` per level, and the
pure rules of ``keepalive_disable``: no sockets."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from wsgate.config.loader import load
from wsgate.config.model import Config, ErrorLog, Listen
from wsgate.config.variables import RequestContext
from wsgate.errors import ConfigError
from wsgate.http.pages import error_response
from wsgate.http.phases import _is_msie6, _is_safari, _keepalive_disabled
from wsgate.http.request import RequestHead
from wsgate.observability.logs import ErrorLogger, location_error_logs
from wsgate.server.listening import bind_keys, socket_options


def conf(tmp_path: Path, text: str) -> Config:
    (tmp_path / "nginx.conf").write_text(text)
    return load("nginx.conf", prefix=str(tmp_path))


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        conf(tmp_path, text)
    return str(info.value)


def servers(*listens: str) -> str:
    body = " ".join(f"server {{ {lines} }}" for lines in listens)
    return f"events {{}} http {{ {body} }}"


def only_listen(tmp_path: Path, args: str) -> Listen:
    (server,) = conf(tmp_path, servers(f"listen {args};")).http.servers
    (lst,) = server.listens
    return lst


def test_listen_options_are_parsed(tmp_path: Path) -> None:
    lst = only_listen(
        tmp_path,
        "127.0.0.1:8080 backlog=100 rcvbuf=8k sndbuf=1m reuseport deferred fastopen=3"
        " so_keepalive=1h:30:4",
    )
    assert (lst.backlog, lst.rcvbuf, lst.sndbuf, lst.fastopen) == (100, 8192, 1 << 20, 3)
    assert lst.reuseport and lst.deferred and lst.bind and lst.options
    assert (lst.so_keepalive, lst.keepidle, lst.keepintvl, lst.keepcnt) == (1, 3600, 30, 4)
    plain = only_listen(tmp_path, "8080 default_server proxy_protocol")
    assert not plain.options and not plain.bind and plain.backlog == 511
    assert only_listen(tmp_path, "80 so_keepalive=off").so_keepalive == 2
    assert only_listen(tmp_path, "80 so_keepalive=::9").keepcnt == 9
    unix = only_listen(tmp_path, "unix:/run/x.sock")
    assert unix.is_unix and unix.port == 0 and unix.text == "unix:/run/x.sock"
    assert only_listen(tmp_path, "[::1]:81 ipv6only=off").text == "[::1]:81"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ("80 backlog=0", 'invalid backlog "backlog=0"'),
        ("80 backlog=x", 'invalid backlog "backlog=x"'),
        ("80 rcvbuf=1q", 'invalid rcvbuf "rcvbuf=1q"'),
        ("80 sndbuf=", 'invalid sndbuf "sndbuf="'),
        ("80 fastopen=-1", 'invalid fastopen "fastopen=-1"'),
        ("80 so_keepalive=::", 'invalid so_keepalive value: "::"'),
        ("80 so_keepalive=1x", 'invalid so_keepalive value: "1x"'),
        ("80 ipv6only=of", 'invalid ipv6only flags "of"'),
        ("80 setfib=1", '"listen ... setfib=" is not supported by wsgate'),
        ("80 backlogs=1", 'invalid parameter "backlogs=1"'),
        ("unix:", "no path in the unix domain socket"),
    ],
)
def test_listen_bad_values(tmp_path: Path, args: str, words: str) -> None:
    text = error(tmp_path, servers(f"listen {args};"))
    assert words in text and "nginx.conf:1" in text


def test_accept_filter_is_ignored_with_nginx_words(tmp_path: Path) -> None:
    """nginx on Linux logs the parameter and ignores it (FreeBSD's accept filters)."""
    config = conf(tmp_path, servers("listen 80 accept_filter=dataready;"))
    assert any(
        w.startswith(
            'accept filters "accept_filter=dataready" are not supported on this '
            "platform, ignored in "
        )
        for w in config.warnings
    ), config.warnings
    assert not config.http.servers[0].listens[0].options


def test_duplicate_listen_checks(tmp_path: Path) -> None:
    """nginx's three checks, with its words and the line of the second ``listen``."""
    text = "events {}\nhttp {\nserver { listen 127.0.0.1:80;\nlisten 127.0.0.1:80; }\n}"
    assert "a duplicate listen 127.0.0.1:80 in" in error(tmp_path, text)
    assert "nginx.conf:4" in error(tmp_path, text)
    text = servers("listen 80 backlog=5;", "listen 80 rcvbuf=4k;")
    assert "duplicate listen options for 0.0.0.0:80" in error(tmp_path, text)
    text = servers("listen [::1]:80 default;", "listen [::1]:80 default_server;")
    assert "a duplicate default server for [::1]:80" in error(tmp_path, text)
    text = servers("listen unix:/x.sock;", "listen unix:/x.sock bind;")
    conf(tmp_path, text)  # one with options, one without: fine
    assert "a duplicate listen unix:/x.sock" in error(
        tmp_path, servers("listen unix:/x.sock; listen unix:/x.sock;")
    )


def test_options_give_an_address_its_own_socket(tmp_path: Path) -> None:
    """``ngx_http_init_listening``: a specific address with ``bind`` (or any option) is not
    folded into the wildcard's socket; the socket takes that ``listen``'s options."""
    config = conf(
        tmp_path,
        servers(
            "listen 80; listen 127.0.0.1:80;",
            "listen 127.0.0.2:80 backlog=9; listen unix:/tmp/a.sock;",
        ),
    )
    keys = bind_keys(config)
    assert sorted(keys) == [
        ("0.0.0.0", 80, 0),
        ("127.0.0.2", 80, 0),
        ("unix:/tmp/a.sock", 0, 0),
    ]
    lst, defer = socket_options(("127.0.0.2", 80, 0), keys[("127.0.0.2", 80, 0)])
    assert lst.backlog == 9 and defer == 60.0


def test_error_log_levels_inherit_all_or_nothing(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        "error_log main.log; events {} http { error_log h.log info; server { listen 80;"
        " location /a { error_log a1.log; error_log stderr warn; } location /b { } } }",
    )
    (server,) = config.http.servers
    a, b = server.locations
    h = (ErrorLog(str(tmp_path / "h.log"), "info"),)
    assert server.settings.error_logs == h and b.settings.error_logs == h
    assert a.settings.error_logs == (
        ErrorLog(str(tmp_path / "a1.log"), "error"),
        ErrorLog("stderr", "warn"),
    )
    assert location_error_logs(config) == (h, a.settings.error_logs)
    assert config.error_logs == (ErrorLog(str(tmp_path / "main.log"), "error"),)
    text = error(tmp_path, "events {} http { error_log memory:32m debug; }")
    assert '"error_log memory:..." is not supported by wsgate' in text
    assert 'invalid log level "loud"' in error(tmp_path, "events {} http { error_log x loud; }")


def test_error_logger_sends_a_request_line_to_its_level(tmp_path: Path) -> None:
    main = (ErrorLog(str(tmp_path / "main.log"), "info"),)
    level = (ErrorLog(str(tmp_path / "l1.log"), "error"), ErrorLog(str(tmp_path / "l2.log")))
    logger = ErrorLogger(main, scoped=(level,))
    ctx = RequestContext(remote_addr="192.0.2.1")
    logger.log("error", "connection line")
    ctx.error_logs = level
    logger.log("error", "request line", 1, ctx)
    logger.log("info", "below the level's level", 1, ctx)
    logger.open()  # USR1
    logger.log("error", "after reopen", 1, ctx)
    logger.close()
    main_text = (tmp_path / "main.log").read_text()
    assert "connection line" in main_text and "request line" not in main_text
    for name in ("l1.log", "l2.log"):
        text = (tmp_path / name).read_text()
        assert "request line, client: 192.0.2.1" in text and "after reopen" in text
        assert "below the level" not in text


def _head(method: str, agent: str | None) -> RequestHead:
    headers = [("User-Agent", agent)] if agent is not None else []
    return RequestHead(method, "/", "1.1", headers, True, None, False, None, "t", "", 0)


def test_keepalive_disable_browsers() -> None:
    """``ngx_http_process_user_agent``'s tests, and MSIE 6 for POST only."""
    msie6 = "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)"
    assert _is_msie6(msie6) and _is_msie6("Mozilla/4.0 (compatible; MSIE 5.5; Windows 98)")
    assert not _is_msie6("Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1; SV1)")
    assert not _is_msie6("Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 6.0)")
    assert not _is_msie6("Opera/9.0 (compatible; MSIE 6.0; Windows NT 5.1)")
    safari = (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15"
        " (KHTML, like Gecko) Version/17.0 Safari/605.1.15"
    )
    chrome = safari.replace("Version/17.0", "Chrome/120.0")
    assert _is_safari(safari) and not _is_safari(chrome)
    default = frozenset({"msie6"})
    assert _keepalive_disabled(_head("POST", msie6), default)
    assert not _keepalive_disabled(_head("GET", msie6), default)
    assert not _keepalive_disabled(_head("GET", safari), default)
    assert _keepalive_disabled(_head("GET", safari), frozenset({"safari"}))
    assert not _keepalive_disabled(_head("GET", None), frozenset({"safari", "msie6"}))


def test_listen_port_ranges(tmp_path: Path) -> None:
    """nginx 1.27.3+: ``listen ADDR:LO-HI`` is one address per port."""
    (server,) = conf(
        tmp_path, servers("listen 127.0.0.1:8182-8184; listen [::1]:90-91;")
    ).http.servers
    assert [lst.text for lst in server.listens] == [
        "127.0.0.1:8182",
        "127.0.0.1:8183",
        "127.0.0.1:8184",
        "[::1]:90",
        "[::1]:91",
    ]
    (server,) = conf(tmp_path, servers("listen 8000-8001 reuseport;")).http.servers
    assert [(lst.host, lst.port, lst.reuseport) for lst in server.listens] == [
        ("0.0.0.0", 8000, True),
        ("0.0.0.0", 8001, True),
    ]
    assert "invalid port range in" in error(tmp_path, servers("listen 9-8;"))
    assert "invalid port in" in error(tmp_path, servers("listen 1-70000;"))


def test_connection_time_counts_from_the_connection() -> None:
    """``$connection_time``: seconds since the connection began, milliseconds resolution."""
    ctx = RequestContext()
    ctx.connection_start = time.time() - 2.5
    text = ctx.lookup("connection_time")
    assert 2.5 <= float(text) < 60 and len(text.split(".")[1]) == 3


def test_msie_padding_off_leaves_error_pages_unpadded() -> None:
    chrome = "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0 Safari/537.36"
    padded = error_response(404, user_agent=chrome, keep_alive=False, date="d")
    plain = error_response(404, user_agent=chrome, keep_alive=False, date="d", msie_padding=False)
    assert b"a padding to disable MSIE and Chrome friendly error page" in padded
    assert b"padding" not in plain and len(plain) < len(padded)
    assert b"Content-Length: %d" % len(plain.split(b"\r\n\r\n", 1)[1]) in plain
