"""``access_log`` parameters (``buffer=``, ``flush=``, ``if=``), the built-in ``json`` format
and ``escape=json``: the loader and :class:`AccessLogs`, with no event loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsgate.config.loader import load
from wsgate.config.model import AccessLog, Config
from wsgate.config.variables import RequestContext
from wsgate.errors import ConfigError
from wsgate.observability.logs import AccessLogs, render_access


def conf(tmp_path: Path, body: str) -> Config:
    (tmp_path / "nginx.conf").write_text(f"events {{}}\nhttp {{\n{body}\n}}\n")
    return load("nginx.conf", prefix=str(tmp_path))


def error(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as info:
        conf(tmp_path, body)
    return str(info.value)


def logs_of(config: Config) -> tuple[AccessLog, ...]:
    return config.http.servers[0].settings.access_logs


def ctx(config: Config, status: int = 200, **kw: object) -> RequestContext:
    c = RequestContext(remote_addr="192.0.2.1", maps=config.http.maps)
    c.status = status
    c.request_line = "GET / HTTP/1.1"
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_parameters_parsed(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        "server { listen 127.0.0.1:0;\n"
        "access_log logs/a.log combined buffer=4k flush=5s if=$status;\n"
        "access_log logs/b.log json buffer=100;\n"
        "access_log logs/c.log; }",
    )
    a, b, c = logs_of(config)
    assert (a.buffer, a.flush, a.condition is not None) == (4096, 5.0, True)
    assert (b.buffer, b.flush, b.condition, b.format.name) == (100, None, None, "json")
    assert (c.buffer, c.flush, c.condition) == (0, None, None)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("access_log logs/a.log combined gzip=10;", 'invalid compression level "10"'),
        ("access_log logs/a.log combined gzip=x;", 'invalid compression level "x"'),
        ("access_log logs/$host.log combined gzip;", "buffered logs cannot have variables in name"),
        (
            "access_log logs/a.log combined buffer=8k; access_log logs/a.log combined gzip;",
            'access_log "logs/a.log" already defined with conflicting parameters',
        ),
        ("access_log logs/a.log combined buffer=12q;", 'invalid buffer size "12q"'),
        ("access_log logs/a.log combined flush=x;", 'invalid flush time "x"'),
        ("access_log logs/a.log combined flush=5s;", "no buffer is defined for access_log"),
        ("access_log logs/a.log combined bogus=1;", 'invalid parameter "bogus=1"'),
        ("access_log off buffer=4k;", 'invalid parameter "buffer=4k"'),
        ("access_log logs/a.log buffer=4k;", 'unknown log format "buffer=4k"'),
    ],
)
def test_parameter_errors(tmp_path: Path, line: str, message: str) -> None:
    text = error(tmp_path, f"server {{ listen 127.0.0.1:0;\n{line}\n}}")
    assert message in text
    assert text.endswith(f"{tmp_path}/nginx.conf:4")


def test_json_format_builtin(tmp_path: Path) -> None:
    config = conf(tmp_path, "server { listen 127.0.0.1:0; access_log logs/a.log json; }")
    fmt = logs_of(config)[0].format
    c = ctx(config, headers=[("User-Agent", 'a "q" \\ \n\x01')], host="example.org")
    c.upstream_addrs = ["127.0.0.1:9"]
    line = render_access(fmt, c)
    assert line.endswith("}\n") and line.count("\n") == 1
    obj = json.loads(line)
    assert set(obj) == {
        "time",
        "remote_addr",
        "request",
        "status",
        "body_bytes_sent",
        "request_time",
        "upstream_addr",
        "upstream_status",
        "http_user_agent",
        "http_referer",
        "host",
    }
    assert obj["http_user_agent"] == 'a "q" \\ \n\x01'
    assert obj["http_referer"] == "" and obj["upstream_status"] == ""
    assert obj["status"] == "200" and obj["remote_addr"] == "192.0.2.1"
    assert obj["upstream_addr"] == "127.0.0.1:9" and obj["host"] == "example.org"
    assert "T" in obj["time"]
    assert '\\n\\u0001"' in line


def test_json_format_user_override_and_escape(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        """log_format json escape=json '{"ua":"$http_user_agent","r":"$http_referer"}';
log_format mine escape=json '{"s":$status,"ua":"$http_user_agent"}';
server { listen 127.0.0.1:0; access_log logs/a.log json; access_log logs/b.log mine; }""",
    )
    a, b = logs_of(config)
    c = ctx(config, headers=[("User-Agent", 'x\t\r\b\f\\"y')])
    assert json.loads(render_access(a.format, c)) == {"ua": 'x\t\r\b\f\\"y', "r": ""}
    assert json.loads(render_access(b.format, c)) == {"s": 200, "ua": 'x\t\r\b\f\\"y'}
    assert '"x\\t\\r\\b\\f\\\\\\"y"' in render_access(b.format, c)
    assert "duplicate" in error(tmp_path, "log_format combined '$status';")
    assert "duplicate" in error(tmp_path, "log_format json '$status';\nlog_format json '$status';")


def test_escape_none_writes_nothing_for_an_empty_value(tmp_path: Path) -> None:
    """ngx_http_log_unescaped_variable: no "-" for a value not found (limit_rate.t's
    ``escape=none $uri:$arg_a$arg_xal:...`` reads ``/data::``); the default escaping keeps it."""
    config = conf(
        tmp_path,
        """log_format raw escape=none '$status:$arg_a$arg_b:$http_x_none';
log_format esc '$status:$arg_a:$http_x_none';
server { listen 127.0.0.1:0; access_log logs/a.log raw; access_log logs/b.log esc; }""",
    )
    a, b = logs_of(config)
    c = ctx(config)
    assert render_access(a.format, c) == "200::\n"
    assert render_access(b.format, c) == "200:-:-\n"


def test_buffer_fills_then_writes(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        "log_format s '$status';\n"
        "server { listen 127.0.0.1:0; access_log logs/a.log s buffer=10; }",
    )
    logs = logs_of(config)
    path = Path(logs[0].path)
    out = AccessLogs()
    out.open([logs[0].path])
    out.write(logs, ctx(config, 200))
    out.write(logs, ctx(config, 201))
    assert path.read_text() == ""  # 8 of 10 bytes buffered
    out.write(logs, ctx(config, 202))  # does not fit: the first two are written
    assert path.read_text() == "200\n201\n"
    out.open([logs[0].path])  # USR1 reopen writes the buffer out
    assert path.read_text() == "200\n201\n202\n"
    out.write(logs, ctx(config, 203))
    out.close()
    assert path.read_text() == "200\n201\n202\n203\n"


def test_long_line_and_unbuffered_neighbour_keep_order(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        "log_format s '$status';\nlog_format long '$status-$request';\n"
        "server { listen 127.0.0.1:0;\n"
        "location /b { access_log logs/a.log s buffer=64; }\n"
        "location /l { access_log logs/a.log long buffer=64; }\n"
        "location /u { access_log logs/a.log s; } }",
    )
    locs = config.http.servers[0].locations
    b, long, u = (loc.settings.access_logs for loc in locs)
    path = Path(b[0].path)
    out = AccessLogs()
    out.open([b[0].path])
    out.write(b, ctx(config, 200))
    out.write(long, ctx(config, 201, request_line="x" * 100))  # bigger than the buffer
    assert path.read_text() == "200\n201-" + "x" * 100 + "\n"
    out.write(b, ctx(config, 202))
    out.write(u, ctx(config, 203))  # unbuffered to the same file: the buffer goes first
    assert path.read_text().endswith("x\n202\n203\n")
    out.close()


def test_if_condition(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        "map $status $loggable { ~^[23] 0; default 1; }\n"
        "log_format s '$status';\n"
        "server { listen 127.0.0.1:0; access_log logs/a.log s if=$loggable;\n"
        "access_log logs/b.log s if=$http_x_log; }",
    )
    logs = logs_of(config)
    out = AccessLogs()
    out.open([lg.path for lg in logs])
    for status in (200, 302, 404, 502):
        out.write(logs, ctx(config, status))
    out.write(logs, ctx(config, 500, headers=[("X-Log", "yes")]))
    out.write(logs, ctx(config, 501, headers=[("X-Log", "0")]))
    out.close()
    assert Path(logs[0].path).read_text() == "404\n502\n500\n501\n"
    assert Path(logs[1].path).read_text() == "500\n"


def test_gzip_writes_one_member_per_buffer(tmp_path: Path) -> None:
    """``gzip``: a 64K buffer unless one is given, each written out as one gzip member
    (``ngx_http_log_gzip``), which gunzip reads as one stream."""
    import gzip

    config = conf(
        tmp_path,
        "log_format s '$status';\nserver { listen 127.0.0.1:0; access_log logs/z.log s gzip=9; }",
    )
    logs = logs_of(config)
    assert (logs[0].buffer, logs[0].gzip) == (64 * 1024, 9)
    out = AccessLogs()
    out.open([logs[0].path])
    out.write(logs, ctx(config, 200))
    out.flush()
    out.write(logs, ctx(config, 201))
    out.close()
    raw = Path(logs[0].path).read_bytes()
    assert raw.count(b"\x1f\x8b\x08") == 2
    assert gzip.decompress(raw) == b"200\n201\n"


class Errors:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def log(self, level: str, msg: str, *args: object) -> None:
        self.lines.append((level, msg))


def test_a_name_with_variables_is_opened_per_line(tmp_path: Path) -> None:
    """``access_log logs/$arg_n.log``: the name rendered per request, the file opened,
    written and closed; nothing opened at start, no directory made, an open that fails is
    nginx's ``[crit]`` and the line is lost."""
    config = conf(
        tmp_path,
        "log_format s '$status';\nserver { listen 127.0.0.1:0; access_log logs/v_${arg_n} s; }",
    )
    logs = logs_of(config)
    assert logs[0].name is not None and logs[0].path.endswith("logs/v_${arg_n}")
    (tmp_path / "logs").mkdir(exist_ok=True)
    out = AccessLogs()
    errors = Errors()
    out.error_log = errors  # type: ignore[assignment]
    out.open([])
    out.write(logs, ctx(config, 200, args="n=a"))
    out.write(logs, ctx(config, 201, args="n=a"))
    out.write(logs, ctx(config, 202, args="n=b"))
    out.write(logs, ctx(config, 203, args="n=no/such"))
    out.close()
    assert (tmp_path / "logs" / "v_a").read_text() == "200\n201\n"
    assert (tmp_path / "logs" / "v_b").read_text() == "202\n"
    assert not (tmp_path / "logs" / "v_no").exists()
    assert errors.lines == [
        ("crit", f'open() "{tmp_path}/logs/v_no/such" failed (2: No such file or directory)')
    ]


def test_open_log_file_cache_keeps_used_names(tmp_path: Path) -> None:
    """access_log.t's cache cases: max=3 min_uses=2; a kept descriptor goes on writing to
    the file after its directory was renamed, a name evicted (least recently used) or not
    used twice is opened anew and fails."""
    config = conf(
        tmp_path,
        "log_format s '$uri';\n"
        "server { listen 127.0.0.1:0;\n"
        "open_log_file_cache max=3 inactive=20s valid=1m min_uses=2;\n"
        "access_log dir/c_$arg_n s; }",
    )
    settings = config.http.servers[0].settings
    cache = settings.open_log_file_cache
    assert cache is not None and (cache.max, cache.min_uses) == (3, 2)
    d = tmp_path / "dir"
    d.mkdir()
    out = AccessLogs()
    out.error_log = Errors()  # type: ignore[assignment]

    def hit(name: str) -> None:
        out.write(settings.access_logs, ctx(config, uri="/", args=f"n={name}"), cache)

    for name in ("lru", "lru", "once", "first", "first", "second", "second"):
        hit(name)
    d.rename(tmp_path / "moved")
    for name in ("lru", "once", "first", "second"):
        hit(name)
    out.close()
    moved = tmp_path / "moved"
    names = ("lru", "once", "first", "second")
    counts = {n: (moved / f"c_{n}").read_text().count("/") for n in names}
    assert counts == {"lru": 2, "once": 1, "first": 3, "second": 3}
