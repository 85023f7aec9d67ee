"""``stub_status``: the counters, the page bytes, the directive and the variables (no loop)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsgate.config.loader import load
from wsgate.config.model import Config
from wsgate.config.variables import RequestContext, is_known_variable
from wsgate.errors import ConfigError
from wsgate.observability.status import (
    ACCEPTS,
    ACTIVE,
    HANDLED,
    READING,
    REQUESTS,
    WRITING,
    ConnectionCounters,
    StatusSnapshot,
    stub_status_page,
)


def conf(tmp_path: Path, body: str) -> Config:
    (tmp_path / "nginx.conf").write_text(f"events {{}}\nhttp {{\n{body}\n}}\n")
    return load("nginx.conf", prefix=str(tmp_path))


def test_page_is_nginx_byte_for_byte() -> None:
    # NGINX-SEMANTICS.md §9, observed from nginx: trailing spaces, a leading one on line 3.
    page = stub_status_page(StatusSnapshot(6, 58, 58, 57, 1, 3, 2))
    assert page == (
        b"Active connections: 6 \n"
        b"server accepts handled requests\n"
        b" 58 58 57 \n"
        b"Reading: 1 Writing: 3 Waiting: 2 \n"
    )


def test_counters_waiting_is_what_is_left_of_active() -> None:
    c = ConnectionCounters()
    for index in (ACCEPTS, HANDLED, ACTIVE):
        c.increment(index, 3)
    c.increment(REQUESTS, 2)
    c.increment(READING)
    c.increment(WRITING)
    assert c.snapshot() == StatusSnapshot(3, 3, 3, 2, 1, 1, 1)
    c.decrement(READING)
    c.increment(WRITING)
    c.decrement(ACTIVE)
    assert c.snapshot() == StatusSnapshot(2, 3, 3, 2, 0, 2, 0)


def test_variables() -> None:
    for name in ("active", "reading", "writing", "waiting"):
        assert is_known_variable(f"connections_{name}", set())
    ctx = RequestContext()
    assert ctx.lookup("connections_active") == "0"
    c = ConnectionCounters()
    c.increment(ACTIVE, 4)
    c.increment(WRITING)
    ctx.counters = c
    names = ("active", "reading", "writing", "waiting")
    assert [ctx.lookup(f"connections_{n}") for n in names] == ["4", "0", "1", "3"]


def test_directive_server_and_location_not_inherited(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        "server { listen 127.0.0.1:0; stub_status;\n"
        "  location /a { stub_status on; location /a/b { return 204; } }\n"
        "  location /c { return 204; } }",
    )
    (server,) = config.http.servers
    assert server.settings.stub_status
    a, c = server.locations
    assert a.settings.stub_status and not a.locations[0].settings.stub_status
    assert not c.settings.stub_status


def test_directive_with_proxy_pass_the_later_wins(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        "server { listen 127.0.0.1:0;\n"
        "  location /a { proxy_pass http://127.0.0.1:9; stub_status; }\n"
        "  location /b { stub_status; proxy_pass http://127.0.0.1:9; } }",
    )
    a, b = config.http.servers[0].locations
    assert a.settings.stub_status and a.settings.proxy_pass is None
    assert not b.settings.stub_status and b.settings.proxy_pass is not None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "server { location / { stub_status off; } }",
            'invalid value "off" in "stub_status" directive',
        ),
        (
            "server { location / { stub_status on on; } }",
            'invalid number of arguments in "stub_status" directive',
        ),
        ("stub_status;", '"stub_status" directive is not allowed here'),
    ],
)
def test_directive_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        conf(tmp_path, body)
    assert message in str(info.value) and "nginx.conf:" in str(info.value)
