"""What an open tunnel keeps of its request's context (``relay._slim``): exactly what its
access-log lines and the error log read when it closes, with the lines unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsgate.config.loader import load
from wsgate.config.model import Config, LocationSettings
from wsgate.config.variables import RequestContext, request_headers_read
from wsgate.observability.logs import format_error_line, render_access
from wsgate.proxy.relay import _slim

HEADERS = [
    ("Host", "example.org:8080"),
    ("User-Agent", "ua/1"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Cookie", "a=1"),
    ("X-Forwarded-For", "192.0.2.9"),
    ("Cookie", "b=2"),
    ("Referer", "http://r/"),
    ("X-Pick", "yes"),
]


def conf(tmp_path: Path, body: str) -> Config:
    (tmp_path / "nginx.conf").write_text(f"events {{}}\nhttp {{\n{body}\n}}\n")
    return load("nginx.conf", prefix=str(tmp_path))


def settings_of(config: Config) -> LocationSettings:
    return config.http.servers[0].settings


def context(config: Config) -> RequestContext:
    c = RequestContext(remote_addr="192.0.2.1", maps=config.http.maps)
    c.headers = list(HEADERS)
    c.method, c.version, c.request_uri, c.uri = "GET", "1.1", "/ws?x=1", "/ws"
    c.request_line, c.host, c.server_name = "GET /ws?x=1 HTTP/1.1", "example.org", "s"
    c.status, c.proxy_port = 101, "80"
    c.upstream_addrs.append("127.0.0.1:9")
    c.upstream_statuses.append(str(101))
    return c


def test_request_headers_read() -> None:
    assert request_headers_read([]) == frozenset()
    assert request_headers_read(
        ["remote_addr", "http_user_agent", "cookie_b", "content_type", "1", "arg_x", "status"]
    ) == {"user-agent", "cookie", "content-type"}
    assert request_headers_read(["proxy_add_x_forwarded_for", "http_X_Pick"]) == {
        "x-forwarded-for",
        "x-pick",
    }
    assert request_headers_read(["status", "some_map"]) is None  # a map may read anything
    # Knowing the maps: a variable ``set`` made (or a named capture) is already computed.
    assert request_headers_read(["status", "who", "http_a"], {"some_map"}) == {"a"}
    assert request_headers_read(["who", "some_map"], {"some_map"}) is None


FORMAT = (
    "'$host|$http_user_agent|$http_x_forwarded_for|$cookie_b|$http_cookie|$http_x_pick|"
    "$upstream_addr|$upstream_status|$uri|$request'"
)


@pytest.mark.parametrize(
    ("body", "kept"),
    [
        ("access_log off;", ["Host", "Referer"]),
        ("access_log logs/a.log;", ["Host", "User-Agent", "Referer"]),  # combined
        (
            f"log_format f {FORMAT}; access_log logs/a.log f if=$http_upgrade;",
            ["Host", "User-Agent", "Upgrade", "Cookie", "X-Forwarded-For", "Cookie", "Referer"]
            + ["X-Pick"],
        ),
        (
            "map $http_x_pick $m { default no; yes ok; }\n"
            "log_format f '$m'; access_log logs/a.log f;",
            [name for name, _ in HEADERS],
        ),
    ],
)
def test_the_lines_are_unchanged_and_only_what_they_read_is_kept(
    tmp_path: Path, body: str, kept: list[str]
) -> None:
    config = conf(tmp_path, f"{body}\nserver {{ listen 127.0.0.1:0; }}")
    settings = settings_of(config)
    before = context(config)
    lines = [render_access(log.format, before) for log in settings.access_logs]
    error = format_error_line("info", "x", 1, before, "http://u/")

    after = _slim(context(config), settings)
    assert [name for name, _ in after.headers] == kept
    assert [render_access(log.format, after) for log in settings.access_logs] == lines
    assert format_error_line("info", "x", 1, after, "http://u/")[19:] == error[19:]
    assert isinstance(after.headers, tuple)
    assert after.upstream_addrs == ("127.0.0.1:9",) and after.upstream_statuses == ("101",)
    assert after.upstream_times == ()


def test_common_strings_are_shared(tmp_path: Path) -> None:
    config = conf(tmp_path, "server { listen 127.0.0.1:0; }")
    settings = settings_of(config)
    a, b = (_slim(context(config), settings) for _ in range(2))
    b.method, b.version = "".join(["G", "ET"]), "".join(["1.", "1"])
    b = _slim(b, settings)
    assert a.method is b.method and a.version is b.version
    assert a.upstream_statuses[0] is b.upstream_statuses[0]
    assert a.headers[0][1] is b.headers[0][1]  # the Host value


def test_kept_header_cache_is_cleared_at_its_cap(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The per-``access_log`` cache of ``_log_reads`` holds at most 1024 entries (a
    reload brings new ones): at the cap it starts again, and answers stay right."""
    from wsgate.proxy import relay

    cache: dict[int, object] = {}
    monkeypatch.setattr(relay, "_READS", cache)
    logs = settings_of(
        conf(
            tmp_path,
            "log_format f '$http_user_agent';\n"
            "server { listen 8080; access_log /dev/null f; location / { return 200; } }",
        )
    ).access_logs
    for i in range(1023):
        cache[-i - 1] = ((), None)  # other configurations' entries
    kept = relay._log_reads(logs).headers  # the 1024th entry: no clearing yet
    assert kept is not None and "user-agent" in kept and "host" in kept
    assert len(cache) == 1024
    cache.pop(id(logs))
    cache[-5000] = ((), None)
    assert relay._log_reads(logs).headers == kept  # over the cap: cleared, then this one kept
    assert list(cache) == [id(logs)]
