"""The access phase without sockets: nginx's password schemes (``ngx_crypt``), its user-file
reader, ``Authorization: Basic`` parsing, and ``satisfy`` combining ``allow``/``deny``,
``auth_basic`` and ``auth_request`` as ``ngx_http_core_access_phase`` does."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from tests.unit.test_phases import Worker, conf, request
from wsgate.config.variables import RequestContext
from wsgate.errors import HttpError
from wsgate.http.auth import PasswordCheck, basic_credentials, find_password
from wsgate.http.crypt import decode_base64, ngx_crypt
from wsgate.http.phases import Content, Request, run
from wsgate.http.suspend import Offload, Pause, Subrequest


# -- ngx_decode_base64 -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("src", "out"),
    [
        (b"dXNlcjpzZWNyZXQ=", b"user:secret"),
        (b"dXNlcjpzZWNyZXQ", b"user:secret"),  # padding is optional
        (b"Zm9v=garbage!", b"foo"),  # the first "=" ends it
        (b"Zm9", b"fo"),
        (b"Zm9vY", None),  # 4n+1
        (b"Zm9v!", None),  # not in the alphabet
        (b"Zm-_", None),  # URL-safe letters are not nginx's
        (b"", b""),
    ],
)
def test_decode_base64(src: bytes, out: bytes | None) -> None:
    assert decode_base64(src) == out


# -- ngx_crypt -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "stored",
    [
        # nginx-tests auth_basic.t
        b"$apr1$salt$Xxd1irWT9ycqoYxGFn4cb.",
        b"{SSHA}yI6cZwQadOA1e+/f+T+H3eCQQhRzYWx0",
        b"{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
        b"{PLAIN}password",
        # crypt(3) through the system's libcrypt, as Perl's crypt() and nginx compute them
        b"sa3tHJ3/KuYvI",
        b"$1$salt$qJH7.N4xYta3aEG/dfqo/0",
        b"$5$abc$6va2Z4O.keO7R84v9g0B9d2NkB7NOyTy0sMeQ5Z3LLA",
        b"$6$abc$rvqzMBuMVukmply9mZJpW0wJMdDfgUKLDrSNxf9l66h/ytQiKNAdqHSj5YPJpxWJpVjRXibQXRdd"
        b"Cl9xYHQnd0",
        b"$2b$05$abcdefghijklmnopqrstuuWG29KuyeAicPCJODk1zjyGvyQUU2awu",
    ],
)
def test_known_hashes_of_password(stored: bytes) -> None:
    assert ngx_crypt(b"password", stored) == stored
    assert ngx_crypt(b"passwore", stored) != stored


def test_apr1_against_openssl() -> None:
    # openssl passwd -apr1 -salt abcdefgh 'hello world'; the salt stops at 8 characters.
    assert ngx_crypt(b"hello world", b"$apr1$abcdefgh$") == b"$apr1$abcdefgh$CZx3qOBL3IJw7t4yUwt4J."
    assert ngx_crypt(b"hello world", b"$apr1$abcdefghij$x").startswith(b"$apr1$abcdefgh$CZx3")


@pytest.mark.parametrize(
    "stored",
    [b"$1$", b"$apr1$", b"{SSHA}_____wQadOA1e+/f+T+H3eCQQhRzYWx0", b"{SSHA}Zm9vCg==", b"{SHA}x"],
)
def test_broken_values_never_match(stored: bytes) -> None:
    """auth_basic.t's "broken" entries: the computation succeeds, the result differs."""
    for password in (b"", b"1", b"password"):
        assert ngx_crypt(password, stored) != stored


def test_passwords_are_c_strings() -> None:
    assert ngx_crypt(b"password\0tail", b"{PLAIN}password") == b"{PLAIN}password"
    assert ngx_crypt(b"x", b"{PLAIN}x\0y") == b"{PLAIN}x"


def test_crypt_failure_token_does_not_match() -> None:
    """libxcrypt answers an unusable setting with ``*0`` (nginx compares and refuses)."""
    assert ngx_crypt(b"password", b"!locked") in (b"*0", b"*1")


# -- the user file -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "user", "found"),
    [
        (b"a:1\nb:2\n", b"b", b"2"),
        (b"a:1\nb:2", b"b", b"2"),  # no final newline
        (b"a:1\r\nb:2\r\n", b"a", b"1"),  # CR ends the field
        (b"a:1:comment\n", b"a", b"1"),  # so does a colon
        (b"#b:1\nb:2\n", b"b", b"2"),  # comments
        (b"\rb:1\nb:2\n", b"b", b"2"),  # a line starting with CR is skipped
        (b"\n\nb:3\n", b"b", b"3"),
        (b"bb:1\nb:2\n", b"b", b"2"),  # a longer name is another user
        (b"b\nb:2\n", b"b", None),  # the LF that mismatches is consumed: the next line too
        (b"b", b"b", None),
        (b"a:1\n", b"b", None),
        (b"b:", b"b", b""),
    ],
)
def test_find_password(data: bytes, user: bytes, found: bytes | None) -> None:
    assert find_password(data, user) == found


@pytest.mark.parametrize(
    ("value", "creds"),
    [
        ("Basic dXNlcjpzZWNyZXQ=", (b"user", b"secret")),
        ("basic    dXNlcjpzZWNyZXQ=", (b"user", b"secret")),
        ("BASIC " + base64.b64encode(b"u:p:q").decode(), (b"u", b"p:q")),
        ("Basic " + base64.b64encode(b"u:").decode(), (b"u", b"")),
        ("Basic " + base64.b64encode(b":p").decode(), None),  # no user
        ("Basic " + base64.b64encode(b"up").decode(), None),  # no colon
        ("Basic !!!!", None),
        ("Basic ", None),
        ("Bearer dXNlcjpzZWNyZXQ=", None),
        ("Basic", None),
    ],
)
def test_basic_credentials(value: str, creds: tuple[bytes, bytes] | None) -> None:
    assert basic_credentials([("Authorization", value)]) == creds
    ctx = RequestContext()
    ctx.headers = [("Authorization", value)]
    assert ctx.lookup("remote_user") == ("" if creds is None else creds[0].decode())


def check(path: Path, user: bytes, password: bytes) -> PasswordCheck:
    job = PasswordCheck(str(path), user, password)
    job()
    return job


def test_password_check_results(tmp_path: Path) -> None:
    f = tmp_path / "htpasswd"
    f.write_bytes(b"u:{PLAIN}p\n")
    ok = check(f, b"u", b"p")
    assert (ok.status, ok.log) == (None, "")
    bad = check(f, b"u", b"x")
    assert (bad.status, bad.level, bad.log) == (401, "error", 'user "u": password mismatch')
    missing = check(f, b"v", b"p")
    assert (missing.status, missing.log) == (401, f'user "v" was not found in "{f}"')
    gone = check(tmp_path / "nx", b"u", b"p")
    assert (gone.status, gone.level) == (403, "error")
    assert gone.log == f'open() "{tmp_path}/nx" failed (2: No such file or directory)'
    unreadable = check(tmp_path, b"u", b"p")
    assert (unreadable.status, unreadable.level) == (500, "crit")
    assert unreadable.log == f'pread() "{tmp_path}" failed (21: Is a directory)'


# -- the access phase ----------------------------------------------------------------------------
SERVER = """
server {{
  listen 8080;
  location / {{
    satisfy {satisfy};
    {rules}
    auth_basic "r";
    auth_basic_user_file {file};
    auth_request /auth;
    auth_request_set $who $upstream_http_x_user;
    auth_delay {delay};
    proxy_pass http://127.0.0.1:1;
  }}
  location = /auth {{ proxy_pass http://127.0.0.1:2; }}
}}
"""


def walk(r: Request, sub_status: int = 200, *, creds: bool = True) -> Content | int:
    """The phases of ``r``, performing waits as the asyncio layer would."""
    index = 0
    try:
        while True:
            decision, index = run(r, index)
            if isinstance(decision, Offload):
                decision.job()
            elif isinstance(decision, Subrequest):
                decision.status = sub_status
                decision.www_authenticate = [("WWW-Authenticate", "Bearer")]
                decision.ctx = RequestContext()
                decision.ctx.set_variable("upstream_http_x_user", "alice")
                decision.done = True
            elif isinstance(decision, Pause):
                r.worker.now += decision.seconds  # type: ignore[attr-defined]
            else:
                assert isinstance(decision, Content)
                return decision
    except HttpError as exc:
        return exc.status


def make(
    tmp_path: Path, satisfy: str, rules: str, *, creds: bool = True, delay: str = "0s"
) -> Request:
    (tmp_path / "htpasswd").write_text("u:{PLAIN}p\n")
    config = conf(
        tmp_path,
        SERVER.format(satisfy=satisfy, rules=rules, file=tmp_path / "htpasswd", delay=delay),
    )
    extra = "Authorization: Basic dTpw\r\n" if creds else ""
    return request(config, Worker(), "/x", extra=extra)


@pytest.mark.parametrize(
    ("satisfy", "rules", "creds", "sub", "result"),
    [
        ("all", "", True, 204, Content.PROXY),
        ("all", "deny all;", True, 204, 403),
        ("all", "", False, 204, 401),
        ("all", "", True, 401, 401),
        ("all", "", True, 403, 403),
        ("all", "", True, 404, 500),
        ("any", "deny all;", False, 204, Content.PROXY),
        ("any", "deny all;", False, 403, 401),
        ("any", "deny all;", True, 403, Content.PROXY),
        ("any", "deny all;", False, 500, 500),
        ("any", "allow all;", False, 500, Content.PROXY),
    ],
)
def test_satisfy(
    tmp_path: Path, satisfy: str, rules: str, creds: bool, sub: int, result: Content | int
) -> None:
    assert walk(make(tmp_path, satisfy, rules, creds=creds), sub) == result


def test_401_carries_the_realm_and_the_subrequests_fields(tmp_path: Path) -> None:
    r = make(tmp_path, "any", "", creds=False)
    with pytest.raises(HttpError) as info:
        index = 0
        while True:
            decision, index = run(r, index)
            assert isinstance(decision, Subrequest)
            decision.status, decision.done = 401, True
            decision.www_authenticate = [("WWW-Authenticate", "Bearer")]
    assert info.value.status == 401
    assert info.value.headers == (
        ("WWW-Authenticate", 'Basic realm="r"'),
        ("WWW-Authenticate", "Bearer"),
    )


def test_the_handler_never_hashes_itself(tmp_path: Path) -> None:
    """The file read and the hash are an Offload job for the thread pool: the phase handler
    returns before either happened."""
    r = make(tmp_path, "all", "")
    decision, _ = run(r)
    assert isinstance(decision, Offload)
    job = decision.job
    assert isinstance(job, PasswordCheck) and (job.status, job.log) == (500, "")
    job()
    assert job.status is None


def test_auth_request_set_and_a_second_pass(tmp_path: Path) -> None:
    r = make(tmp_path, "all", "")
    assert walk(r) is Content.PROXY
    assert r.ctx.lookup("who") == "alice"
    assert r.access is not None and r.access.next == 3


def test_auth_delay_pauses_a_401_once(tmp_path: Path) -> None:
    r = make(tmp_path, "all", "", creds=False, delay="2s")
    start = r.worker.now  # type: ignore[attr-defined]
    assert walk(r) == 401
    assert r.worker.now == start + 2  # type: ignore[attr-defined]
    assert ("info", "delaying unauthorized request") in r.worker.error_log.lines  # type: ignore[attr-defined]


def test_subrequests_skip_the_access_phase(tmp_path: Path) -> None:
    r = make(tmp_path, "all", "deny all;")
    r.subrequest = True
    assert walk(r) is Content.PROXY


# -- configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("auth_request_set $uri x;", 'the duplicate "uri" variable'),
        ("auth_request_set user x;", 'invalid variable name "user"'),
        ("auth_request_set $ x;", 'invalid variable name "$"'),
        ("satisfy some;", 'invalid value "some"'),
        ("auth_request /a; auth_request /b;", '"auth_request" directive is duplicate'),
        ("auth_basic_user_file a; auth_basic_user_file b;", '"auth_basic_user_file" directive'),
        ("proxy_set_header X-U $nobody;", 'unknown "nobody" variable'),
    ],
)
def test_load_errors(tmp_path: Path, line: str, error: str) -> None:
    from wsgate.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(error)):
        conf(tmp_path, f"server {{ listen 8080; location / {{ {line} return 204; }} }}")


def test_declared_variable_is_known_everywhere_and_empty_until_set(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        "server { listen 8080;"
        " location /a { add_header X-U $who; return 204; }"
        " location /b { auth_request /auth; auth_request_set $who $upstream_http_x_user; }"
        " location = /auth { return 204; } }",
    )
    r = request(config, Worker(), "/a")
    assert r.ctx.lookup("who") == ""


def test_args_and_limit_rate_have_set_handlers(tmp_path: Path) -> None:
    (tmp_path / "htpasswd").write_text("")
    config = conf(
        tmp_path,
        "server { listen 8080; location / { auth_request /auth;"
        " auth_request_set $args a=1; auth_request_set $limit_rate $upstream_http_x_rate;"
        " proxy_pass http://127.0.0.1:1; } }",
    )
    r = request(config, Worker(), "/x?old")
    index = 0
    while True:
        decision, index = run(r, index)
        if not isinstance(decision, Subrequest):
            break
        decision.status, decision.done = 200, True
        decision.ctx = RequestContext()
        decision.ctx.set_variable("upstream_http_x_rate", "10k")
    assert decision is Content.PROXY
    assert r.ctx.args == "a=1" and r.ctx.limit_rate == 10240
    assert r.ctx.variables is None  # neither became a plain variable


@pytest.mark.parametrize(
    ("headers", "name", "value"),
    [
        ([("Set-Cookie", "sid=abc; Path=/")], "sid", "abc"),
        ([("set-cookie", "SID = abc ;x")], "sid", "abc "),
        ([("Set-Cookie", "sidx=1"), ("Set-Cookie", "sid=2")], "sid", "2"),
        ([("Set-Cookie", "sid")], "sid", ""),
        ([("Set-Cookie", "a=1; sid=2")], "sid", ""),  # only the cookie's own name counts
        ([("X-Sid", "sid=1")], "sid", ""),
    ],
)
def test_upstream_cookie(headers: list[tuple[str, str]], name: str, value: str) -> None:
    from wsgate.http.fields import set_cookie_value

    assert set_cookie_value(headers, name) == value


def test_offload_runs_jobs_in_the_bounded_pool() -> None:
    import asyncio
    import threading

    from wsgate.proxy import offload as mod

    seen: list[str] = []

    async def main() -> None:
        loop_thread = threading.current_thread().name
        await asyncio.gather(
            *(mod.offload(lambda: seen.append(threading.current_thread().name)) for _ in range(8))
        )
        assert loop_thread not in seen

    asyncio.run(main())
    assert len(seen) == 8 and all(name.startswith("wsgate-auth") for name in seen)
    assert len(set(seen)) <= mod.MAX_THREADS <= 4
