"""wsgate's ``redis=ADDRESS [redis_fail=open|closed]`` on ``limit_conn_zone``/``limit_req_zone``:
the parsing (each value at and over its bound, errors naming file and line in nginx's words),
the shared memory a Redis zone does not get, and the error log's once-per-interval lines
(:mod:`wsgate.limits_redis`, :mod:`wsgate.redis_link`; the behaviour against a real Redis is in
``tests/integration/test_limits_redis.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsgate.config import limits as config_limits
from wsgate.config.loader import load
from wsgate.config.model import Config, RedisServer
from wsgate.errors import ConfigError
from wsgate.redis_link import LOG_EVERY, Health
from wsgate.shm import SharedState


def conf(tmp_path: Path, http: str) -> Config:
    (tmp_path / "nginx.conf").write_text(f"events {{}}\nhttp {{\n{http}\n}}\n")
    return load("nginx.conf", prefix=str(tmp_path))


def error(tmp_path: Path, http: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        conf(tmp_path, http)
    return info.value


@pytest.mark.parametrize(
    ("address", "server"),
    [
        ("10.0.0.5:6380", RedisServer("10.0.0.5", 6380)),
        ("redis.internal", RedisServer("redis.internal", 6379)),
        ("localhost:1", RedisServer("localhost", 1)),  # the lowest port
        ("localhost:65535", RedisServer("localhost", 65535)),  # the highest
        ("[::1]:6380", RedisServer("::1", 6380)),
        ("[2001:db8::7]", RedisServer("2001:db8::7", 6379)),
        ("unix:/run/redis/redis.sock", RedisServer(path="/run/redis/redis.sock")),
    ],
)
def test_redis_addresses(tmp_path: Path, address: str, server: RedisServer) -> None:
    cfg = conf(
        tmp_path,
        f"limit_conn_zone $arg_user zone=users:1m redis={address};\n"
        f"limit_req_zone $arg_user zone=calls:1m rate=5r/s redis={address} redis_fail=closed;",
    )
    conn = cfg.http.limit_conn_zones["users"]
    req = cfg.http.limit_req_zones["calls"]
    assert conn.redis == server and not conn.redis_fail_closed  # open is the default
    assert req.redis == server and req.redis_fail_closed and req.rate == 5000


def test_redis_server_text() -> None:
    """How the error log names a Redis."""
    assert str(RedisServer("redis.internal")) == "redis.internal:6379"
    assert str(RedisServer("::1", 6380)) == "[::1]:6380"
    assert str(RedisServer(path="/run/r.sock")) == "unix:/run/r.sock"


def test_local_zones_have_no_redis_and_redis_zones_no_shared_memory(tmp_path: Path) -> None:
    cfg = conf(
        tmp_path,
        "limit_conn_zone $binary_remote_addr zone=local:1m;\n"
        "limit_conn_zone $arg_user zone=users:1m redis=127.0.0.1 redis_fail=open;\n"
        "limit_req_zone $arg_user zone=calls:1m rate=1r/s redis=127.0.0.1;",
    )
    assert cfg.http.limit_conn_zones["local"].redis is None
    state = SharedState(1)
    state.configure(cfg)
    assert set(state.limits.conn) == {"local"} and not state.limits.req
    assert state.limits.remote is None  # made by a worker's first request that uses one


@pytest.mark.parametrize(
    ("http", "message"),
    [
        (
            "limit_conn_zone $arg_u zone=z:1m redis=h:65536;",
            'invalid parameter "redis=h:65536": invalid port',
        ),
        ("limit_conn_zone $arg_u zone=z:1m redis=h:0;", 'invalid parameter "redis=h:0": invalid'),
        ("limit_conn_zone $arg_u zone=z:1m redis=h:;", 'invalid parameter "redis=h:": invalid'),
        ("limit_conn_zone $arg_u zone=z:1m redis=h:x;", 'invalid parameter "redis=h:x": invalid'),
        ("limit_conn_zone $arg_u zone=z:1m redis=:6379;", '"redis=:6379": no host'),
        ("limit_conn_zone $arg_u zone=z:1m redis=;", 'invalid parameter "redis=": no host'),
        ("limit_conn_zone $arg_u zone=z:1m redis=a/b;", '"redis=a/b": invalid host'),
        ("limit_conn_zone $arg_u zone=z:1m redis=::1;", '"redis=::1": invalid host'),
        ("limit_conn_zone $arg_u zone=z:1m redis=[::1;", '"redis=[::1": invalid host'),
        ("limit_conn_zone $arg_u zone=z:1m redis=[::1]:;", '"redis=[::1]:": invalid port'),
        ("limit_conn_zone $arg_u zone=z:1m redis=[zz]:1;", '"redis=[zz]:1": invalid IPv6'),
        ("limit_conn_zone $arg_u zone=z:1m redis=unix:;", "no path in the unix domain socket"),
        (
            "limit_conn_zone $arg_u zone=z:1m redis=h redis_fail=maybe;",
            'invalid parameter "redis_fail=maybe"',
        ),
        (
            "limit_req_zone $arg_u zone=z:1m rate=1r/s redis=h redis_fail=;",
            'invalid parameter "redis_fail="',
        ),
        (
            "limit_conn_zone $arg_u zone=z:1m redis_fail=closed;",
            '"redis_fail" parameter requires "redis" parameter',
        ),
        (
            "limit_req_zone $arg_u zone=z:1m rate=1r/s redis_fail=open;",
            '"redis_fail" parameter requires "redis" parameter',
        ),
        ("limit_conn_zone $arg_u zone=z:1m redis=a redis=b;", '"redis" parameter is duplicate'),
        (
            "limit_conn_zone $arg_u zone=z:1m redis=a redis_fail=open redis_fail=open;",
            '"redis_fail" parameter is duplicate',
        ),
        (
            "limit_conn_zone $arg_u zone=z:1m redis=a redis_fail=open size=1;",
            'invalid parameter "size=1"',
        ),
        # At most redis=, redis_fail= and redis_auth= past nginx's arguments.
        (
            "limit_conn_zone $arg_u zone=z:1m redis=a redis_fail=open redis_auth=f x;",
            'invalid number of arguments in "limit_conn_zone" directive',
        ),
        (
            "limit_req_zone $arg_u zone=z:1m rate=1r/s redis=a redis_fail=open redis_auth=f x;",
            'invalid number of arguments in "limit_req_zone" directive',
        ),
        (
            "limit_conn_zone $arg_u zone=z:1m redis=a redis_fail=x;",
            'invalid parameter "redis_fail=x"',
        ),
        # Without redis=, nginx's own arity: a surplus argument is nginx's error.
        (
            "limit_conn_zone $arg_u zone=z:1m zone=y:1m;",
            'invalid number of arguments in "limit_conn_zone" directive',
        ),
        (
            "limit_req_zone $arg_u zone=z:1m rate=1r/s rate=2r/s;",
            'invalid number of arguments in "limit_req_zone" directive',
        ),
        ("limit_conn_zone $arg_u zone=z:1m redis_host=h;", 'invalid parameter "redis_host=h"'),
    ],
)
def test_redis_parameter_errors_name_the_line(tmp_path: Path, http: str, message: str) -> None:
    err = error(tmp_path, "# line 3\n" + http)
    assert message in err.message, err.message
    assert err.file is not None and err.file.endswith("nginx.conf") and err.line == 4, str(err)
    assert str(err).endswith("nginx.conf:4")


def test_redis_zone_without_the_package_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_limits, "redis_installed", lambda: False)
    err = error(tmp_path, "limit_req_zone $arg_u zone=z:1m rate=1r/s redis=127.0.0.1:6379;")
    assert "pip install 'wsgate[redis]'" in err.message and err.line == 3, str(err)
    conf(tmp_path, "limit_req_zone $arg_u zone=z:1m rate=1r/s;")  # a local zone needs nothing


def test_redis_installed_does_not_import_it() -> None:
    import sys

    before = "redis" in sys.modules
    assert config_limits.redis_installed() is True  # the test extra installs it
    assert ("redis" in sys.modules) == before


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def log(self, level: str, message: str) -> None:
        self.lines.append((level, message))


def test_unreachable_is_logged_once_per_interval_and_recovery_once() -> None:
    now = [100.0]
    log = Log()
    health = Health("limit_conn", "users", RedisServer("r", 6379), log, lambda: now[0])  # type: ignore[arg-type]
    health.closed = True
    for _ in range(5):
        health.down("Connection refused")
        now[0] += 1
    assert log.lines == [
        (
            "error",
            'redis limit_conn zone "users" at r:6379 unreachable: Connection refused, '
            "failing closed",
        )
    ]
    now[0] = 100.0 + LOG_EVERY  # still down one interval later: one reminder
    health.down("Connection refused")
    assert len(log.lines) == 2
    health.up()
    health.up()
    assert log.lines[2:] == [("notice", 'redis limit_conn zone "users" at r:6379 reachable again')]
    # Flapping within the interval: the new failure is not logged, nor its end.
    health.down("timed out (500 ms)")
    health.up()
    assert len(log.lines) == 3
    now[0] += LOG_EVERY
    health.closed = False
    health.down("timed out (500 ms)")
    assert log.lines[3] == (
        "error",
        'redis limit_conn zone "users" at r:6379 unreachable: timed out (500 ms), failing open',
    )


@pytest.mark.parametrize(
    ("content", "user", "password"),
    [
        ("s3cret\n", "", "s3cret"),  # the default user
        ("alice wonder land\r\n", "alice", "wonder land"),  # split at the first space
        ("only-line", "", "only-line"),  # no newline at the end
        ("first\nsecond\n", "", "first"),  # the first line only
    ],
)
def test_redis_auth_file(tmp_path: Path, content: str, user: str, password: str) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "redis").write_text(content)
    cfg = conf(
        tmp_path,
        "limit_conn_zone $arg_u zone=z:1m redis=127.0.0.1 redis_fail=closed "
        "redis_auth=secrets/redis;",  # relative to the configuration's directory
    )
    server = cfg.http.limit_conn_zones["z"].redis
    assert server is not None and (server.username, server.password) == (user, password)
    assert password not in repr(server) and password not in str(server)


@pytest.mark.parametrize(
    ("http", "content", "message"),
    [
        ("redis=h redis_auth=missing", None, 'open() "{tmp}/missing" failed (2: '),
        ("redis=h redis_auth=empty", "\n", 'no password in redis_auth file "{tmp}/empty"'),
        ("redis=h redis_auth=empty", "alice \n", 'no password in redis_auth file "{tmp}/empty"'),
        ("redis=h redis_auth=", None, 'invalid parameter "redis_auth="'),
        ("redis=h redis_auth=a redis_auth=b", None, '"redis_auth" parameter is duplicate'),
        ("redis_auth=a", None, '"redis_auth" parameter requires "redis" parameter'),
    ],
)
def test_redis_auth_errors_name_the_line(
    tmp_path: Path, http: str, content: str | None, message: str
) -> None:
    if content is not None:
        (tmp_path / "empty").write_text(content)
    err = error(tmp_path, f"limit_conn_zone $arg_u zone=z:1m {http};")
    assert message.format(tmp=tmp_path) in err.message, err.message
    assert err.line == 3, str(err)
