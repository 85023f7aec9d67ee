"""A fuzzer on the HTTP/1.1 front: mutated requests must get a well-formed answer or a close,
never an ``[alert]``, a traceback, or a connection left hanging past the configured timers.

hypothesis builds requests from a grammar of the parts that matter to a front end (methods,
targets, versions, framing headers, upgrade headers, chunked bodies with and without
trailers, bare LF line ends), pipelines up to three of them, then applies byte mutations
(flip, insert, delete, duplicate) anywhere in the stream; half of the examples half-close
after sending.  Coverage guidance (atheris) would not pay here: the parser is httptools (C)
and the interesting states are in how wsgate reacts to what it parsed, which the grammar
reaches directly.

Each example runs on a fresh connection to one long-lived proxy.  The oracle:

* what comes back parses as a sequence of HTTP/1.x responses (httptools), possibly ending in
  a ``101`` after which the bytes are the tunnel's;
* the proxy is never silent for longer than :data:`SILENCE`, derived from the configured
  timers (every timer here is 2 s): a connection that the proxy neither answers nor closes
  past that has hung.  ``client_body_timeout`` is one of those timers, so an example that
  ends inside a body is held open like any other and must be closed by it;
* after the example, a normal request on a new connection is answered ``200`` (the worker is
  alive and serving), and the error log has no new ``[alert]`` or ``[emerg]``.

The same examples run against nginx where it is installed, which calibrates the oracle: what
nginx does must pass it too.  ``test_answered_before_a_timer`` holds inputs whose answer must
not wait for a timer, side by side with nginx.
"""

from __future__ import annotations

import re
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tests.reliability.common import (
    HOST,
    SOAK,
    TARGETS,
    BgLoop,
    Target,
    conf,
    echo_backend,
    record,
    scaled,
    start_target,
)

TIMER = 2.0
#: A proxy that sends nothing and keeps the connection open for this long has hung: twice the
#: longest configured timer, plus slack for a loaded machine.
SILENCE = 2 * TIMER + 4.0
#: Once a complete answer is in and nothing more comes for this long, the example is over (the
#: connection is idle in keep-alive; the keep-alive timer itself is not what is probed).
QUIET = 0.3
EXAMPLES = scaled(150, 5000)
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="

SERVER = f"""
client_header_timeout {TIMER:.0f}s; client_body_timeout {TIMER:.0f}s;
keepalive_timeout {TIMER:.0f}s; send_timeout {TIMER:.0f}s;
proxy_read_timeout {TIMER:.0f}s; proxy_send_timeout {TIMER:.0f}s;
proxy_connect_timeout {TIMER:.0f}s; client_max_body_size 1k;
"""


# -- the grammar -----------------------------------------------------------------------------------
METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT"]
ODD_METHODS = [b"G@T", b"get", b"", b"GET GET", b"X" * 40, b"\x00GET", b"G\tT", b"PRI"]
TARGETS_ = [b"/", b"/a?b=c", b"*", b"http://t/x", b"/%00", b"/../../x", b"//", b"/\x7f", b"/a b"]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b""]
GOOD_HEADERS = [
    (b"Connection", b"close"),
    (b"Connection", b"keep-alive"),
    (b"Accept", b"*/*"),
    (b"Expect", b"100-continue"),
    (b"Cookie", b"a=b"),
]
ODD_HEADERS = [
    (b"Host", b""),
    (b"Host", b"a b"),
    (b"Host", b"t"),
    (b"Content-Length", b"-1"),
    (b"Content-Length", b"5, 5"),
    (b"Content-Length", b"99999999999999999999"),
    (b"Content-Length", b"2000"),
    (b"Transfer-Encoding", b"gzip, chunked"),
    (b"Transfer-Encoding", b"identity"),
    (b"Upgrade", b"h2c"),
    (b" Host", b"t"),
    (b"Host ", b"t"),
    (b"X", b"a\x00b"),
    (b"", b"v"),
    (b"X-Long", b"v" * 9000),
]
UPGRADE = [
    (b"Upgrade", b"websocket"),
    (b"Connection", b"Upgrade"),
    (b"Sec-WebSocket-Key", KEY),
    (b"Sec-WebSocket-Version", b"13"),
]
CHUNKED = [
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-T: y\r\n\r\n",
    b"5;ext=1\r\nhello\r\n0\r\n\r\n",
    b"0\r\nX-T: y\rZ\r\n\r\n",
    b"0\r\n\rX",
    b"zz\r\nhello\r\n0\r\n\r\n",
    b"ffffffffffffffffff\r\n",
    b"5\r\nhel",
    b"0\r\n",
]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One request: mostly one a front end must serve, with a minority of odd parts."""
    eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n"]))
    method = draw(st.sampled_from(METHODS * 6 + ODD_METHODS))
    target = draw(st.sampled_from([b"/"] * 8 + TARGETS_))
    version = draw(st.sampled_from([b"HTTP/1.1"] * 14 + VERSIONS))
    headers = [(b"Host", b"t")] if draw(st.integers(0, 7)) else []
    headers += draw(st.lists(st.sampled_from(GOOD_HEADERS), max_size=2))
    if draw(st.integers(0, 3)) == 0:
        headers += draw(st.lists(st.sampled_from(ODD_HEADERS), min_size=1, max_size=2))
    if draw(st.integers(0, 5)) == 0:
        headers += draw(
            st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=12)), max_size=1)
        )
    framing = draw(st.sampled_from(["none"] * 4 + ["length"] * 2 + ["chunked", "upgrade", "raw"]))
    body = b""
    if framing == "length":
        body = draw(st.binary(max_size=40))
        headers.append((b"Content-Length", str(len(body)).encode()))
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        body = draw(st.sampled_from(CHUNKED))
    elif framing == "upgrade":
        headers += UPGRADE
    elif framing == "raw":
        body = draw(st.binary(max_size=40))
    headers = draw(st.permutations(headers))
    line = method + b" " + target + (b" " + version if version else b"")
    return line + eol + b"".join(k + b": " + v + eol for k, v in headers) + eol + body


MUTATIONS = st.just([]) | st.lists(
    st.tuples(
        st.integers(0, 1 << 16),
        st.sampled_from(["flip", "insert", "delete", "dup"]),
        st.binary(min_size=1, max_size=4),
    ),
    max_size=3,
)


def mutate(data: bytes, mutations: list[tuple[int, str, bytes]]) -> bytes:
    for at, how, blob in mutations:
        if not data:
            return blob
        i = at % len(data)
        if how == "flip":
            data = data[:i] + bytes([data[i] ^ blob[0]]) + data[i + 1 :]
        elif how == "insert":
            data = data[:i] + blob + data[i:]
        elif how == "delete":
            data = data[:i] + data[i + len(blob) :]
        else:
            data = data[:i] + data[i : i + len(blob) * 4] + data[i:]
    return data


# -- the oracle ------------------------------------------------------------------------------------
@dataclass
class Answers:
    """httptools callbacks over what the proxy sent back."""

    statuses: list[int] = field(default_factory=list)
    complete: int = 0
    in_message: bool = False
    delimited: bool = True
    parser: httptools.HttpResponseParser | None = None

    def on_message_begin(self) -> None:
        self.in_message = True
        self.delimited = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.delimited = True

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.statuses.append(self.parser.get_status_code())

    def on_message_complete(self) -> None:
        self.in_message = False
        self.complete += 1


#: A request line without a version: an HTTP/0.9 request, answered by a body alone.  It may
#: follow a line end or the last byte of a body (``Content-Length: 1`` then ``\x00GET /``), not
#: the inside of a header line.
HTTP09 = re.compile(rb"(?:^|[^A-Za-z0-9:, \t-])[A-Z]+ [^ \r\n]+\r?\n")


@dataclass
class Outcome:
    statuses: list[int]
    closed: bool  # by the proxy (EOF or reset)
    upgraded: bool
    seconds: float


def exchange(port: int, data: bytes, half_close: bool) -> Outcome:
    """Send ``data``, read what comes back until the proxy closes, a 101 switches the
    connection, or the answers are complete and the connection idle; check the oracle."""
    answers = Answers()
    parser = httptools.HttpResponseParser(answers)
    answers.parser = parser
    began = time.monotonic()
    raw = b""
    closed = upgraded = http09 = False
    with socket.create_connection((HOST, port), timeout=5) as s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the proxy may close before reading everything; what it sent is still read
        last = time.monotonic()
        while True:
            idle_done = answers.complete and not answers.in_message
            s.settimeout(QUIET if idle_done else 0.5)
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                if idle_done:
                    break
                silent = time.monotonic() - last
                assert silent < SILENCE, (
                    f"hung: nothing sent and not closed for {silent:.1f} s after {raw[:300]!r}"
                )
                continue
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            last = time.monotonic()
            raw += chunk
            if http09:
                continue
            try:
                parser.feed_data(chunk)
            except httptools.HttpParserUpgrade:
                upgraded = True
                break
            except httptools.HttpParserError as exc:
                if HTTP09.search(data):
                    http09 = True  # a body alone, ended by the close: nginx's HTTP/0.9 answer
                    continue
                raise AssertionError(f"malformed answer ({exc}): {raw[:500]!r}") from None
    if http09:
        assert closed, f"an HTTP/0.9 answer must end with the close: {raw[:500]!r}"
    elif closed and answers.in_message:
        # Only a body delimited by the close itself may end with it.
        assert not answers.delimited, f"answer cut short by the close: {raw[:500]!r}"
    if upgraded:
        assert answers.statuses[-1] == 101, raw[:300]
    return Outcome(answers.statuses, closed, upgraded, time.monotonic() - began)


def statuses_of(raw: bytes) -> list[int]:
    """The statuses of the answers in ``raw``, as far as it parses."""
    answers = Answers()
    parser = httptools.HttpResponseParser(answers)
    answers.parser = parser
    try:
        parser.feed_data(raw)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        pass
    return answers.statuses


def serving(port: int) -> int:
    """Status of a normal request on a new connection."""
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(b"GET /alive HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split()[1]) if data else 0


# -- the fuzz run ----------------------------------------------------------------------------------
@dataclass
class Front:
    target: Target
    seen: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


@pytest.fixture(scope="module", params=TARGETS)
def front(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Front]:
    kind = request.param
    loop = BgLoop()
    upstream = loop.serve(echo_backend())
    target = start_target(kind, tmp_path_factory.mktemp(kind), conf(upstream, server=SERVER))
    state = Front(target)
    try:
        yield state
    finally:
        target.stop()
        loop.close()
        seen = state.seen
        examples = sum(v for k, v in seen.items() if k.startswith("examples"))
        if examples:
            record(
                "fuzz",
                kind,
                examples=examples,
                answered=seen["answered"],
                closed_unanswered=seen["closed unanswered"],
                upgraded=seen["upgraded"],
                statuses=" ".join(
                    f"{k.split()[1]}x{v}" for k, v in sorted(seen.items()) if k.startswith("status")
                ),
                mean_ms_per_example=1000 * state.seconds / examples,
            )


@pytest.mark.timeout(scaled(150, 1500))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=not SOAK,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate] + ([Phase.shrink] if SOAK else []),
    report_multiple_bugs=True,
)
@given(
    pipeline=st.lists(requests(), min_size=1, max_size=3),
    mutations=MUTATIONS,
    half_close=st.booleans(),
)
# Known: a pipelined second request with an invalid method (an ``[alert]`` in wsgate).
@example(
    pipeline=[b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n", b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n"],
    mutations=[],
    half_close=False,
)
def test_mutated_requests(
    front: Front, pipeline: list[bytes], mutations: list[tuple[int, str, bytes]], half_close: bool
) -> None:
    target = front.target
    mark = len(target.errors())
    data = mutate(b"".join(pipeline), mutations)
    outcome = exchange(target.port, data, half_close)
    front.seen["examples"] += 1
    front.seconds += outcome.seconds
    if outcome.statuses:
        front.seen["answered"] += 1
        for status in outcome.statuses:
            front.seen[f"status {status}"] += 1
    elif outcome.closed:
        front.seen["closed unanswered"] += 1
    if outcome.upgraded:
        front.seen["upgraded"] += 1
    assert serving(target.port) == 200, f"not serving after {data[:300]!r}"
    new = target.errors()[mark:]
    bad = [line for line in new.splitlines() if "[alert]" in line or "[emerg]" in line]
    assert not bad, f"{bad} after {data[:300]!r}"
    assert target.proc.poll() is None
    assert "Traceback" not in target.stderr()


# -- inputs whose answer must not wait for a timer ------------------------------------------------
PROMPT = [
    # A CR not followed by LF in the last chunk's trailer: nginx answers 400 at that byte.
    (
        "trailer_cr_without_lf",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: y\rZ",
    ),
    (
        "bare_cr_after_last_chunk",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\rX",
    ),
    (
        "pipelined_invalid_method",
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nG@T / HTTP/1.1\r\nHost: a\r\n\r\n",
    ),
    (
        "invalid_chunk_size",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ),
]
#: The timers in this test are long (the body timer is left at nginx's default, 60 s), so an
#: answer that waits for one is not mistaken for a prompt one: the answer must come within a
#: tenth of them.
LONG_TIMER = 60
PROMPTLY = LONG_TIMER / 10


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", TARGETS)
def test_answered_before_a_timer(kind: str, tmp_path: Path, bg: BgLoop) -> None:
    upstream = bg.serve(echo_backend())
    server = f"client_header_timeout {LONG_TIMER}s;"
    target = start_target(kind, tmp_path / kind, conf(upstream, server=server))
    failures = []
    try:
        for name, data in PROMPT:
            mark = len(target.errors())
            began = time.monotonic()
            with socket.create_connection((HOST, target.port), timeout=PROMPTLY) as s:
                s.sendall(data)
                got = b""
                try:
                    while chunk := s.recv(65536):
                        got += chunk
                        if len(statuses_of(got)) >= data.count(b" HTTP/1.1\r\n"):
                            break
                except TimeoutError:
                    pass
                except ConnectionResetError:
                    pass
            statuses = statuses_of(got)
            record(
                f"prompt.{name}",
                kind,
                statuses=statuses or "none",
                seconds=time.monotonic() - began,
            )
            alerts = [ln for ln in target.errors()[mark:].splitlines() if "[alert]" in ln]
            if not statuses or statuses[-1] != 400 or alerts:  # the last request is the bad one
                failures.append((name, statuses, got[:200], alerts))
    finally:
        target.stop()
    # nginx calibrates the list: each input is one it answers 400 without waiting.
    assert not failures, failures
    assert not target.alerts(), target.alerts()
