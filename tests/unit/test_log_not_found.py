"""Access logs write ``-`` for a variable nginx does not find and nothing for one found
empty (``ngx_http_log_variable``), as http_variables.t checks for ``$uri`` of a bad URI."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsgate.config.loader import load
from wsgate.config.variables import RequestContext
from wsgate.observability.logs import render_access


def line(tmp_path: Path, fmt: str, **fields: object) -> str:
    (tmp_path / "nginx.conf").write_text(
        "events {}\nhttp {\n"
        f"log_format t '{fmt}';\n"
        "map $http_x_none $mapped { default ''; }\n"
        "server { access_log t.log t; }\n}\n"
    )
    config = load("nginx.conf", prefix=str(tmp_path))
    c = RequestContext(remote_addr="192.0.2.1", maps=config.http.maps)
    c.headers = [("Host", "h"), ("X-Empty", ""), ("Cookie", "e=; f=1")]
    for name, value in fields.items():
        setattr(c, name, value)
    log = config.http.servers[0].settings.access_logs[0]
    return render_access(log.format, c).rstrip("\n")


@pytest.mark.parametrize(
    ("fmt", "fields", "expected"),
    [
        # A URI nginx could not normalise: found, length 0.
        ("[$uri]", {"request_uri": "/../bad"}, "[]"),
        # No request line at all: not found.
        ("[$uri]", {}, "[-]"),
        ("[$args][$is_args]", {"request_uri": "/"}, "[-][]"),
        ("[$http_x_empty][$http_x_missing]", {}, "[][-]"),
        ("[$cookie_e][$cookie_g]", {}, "[][-]"),
        ("[$arg_a][$arg_b]", {"args": "a=&c=1"}, "[][-]"),
        ("[$mapped]", {}, "[]"),
        ("[$sent_http_x][$sent_http_y]", {"sent_head": b"HTTP/1.1 200 OK\r\nX: \r\n\r\n"}, "[][-]"),
        ("[$upstream_addr][$remote_user]", {}, "[-][-]"),
        ("[$1]", {"captures": ("/a", "")}, "[]"),
        ("[$2]", {"captures": ("/a", "")}, "[-]"),
    ],
)
def test_found_empty_is_nothing_and_not_found_is_a_dash(
    tmp_path: Path, fmt: str, fields: dict[str, object], expected: str
) -> None:
    assert line(tmp_path, fmt, **fields) == expected


def test_a_set_empty_variable_is_found(tmp_path: Path) -> None:
    (tmp_path / "nginx.conf").write_text(
        "events {}\nhttp {\nlog_format t '[$v]';\n"
        "server { access_log t.log t; location /x { set $v ''; } }\n}\n"
    )
    config = load("nginx.conf", prefix=str(tmp_path))
    c = RequestContext(remote_addr="192.0.2.1", maps=config.http.maps)
    fmt = config.http.servers[0].settings.access_logs[0].format
    assert render_access(fmt, c) == "[-]\n"
    c.set_variable("v", "")
    assert render_access(fmt, c) == "[]\n"
