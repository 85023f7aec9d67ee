"""The pure half of active health checks: rise/fall accounting and probe bytes, no loop."""

from __future__ import annotations

import base64

import pytest

from wsgate.config.model import HealthCheck
from wsgate.upstream.health import (
    HealthState,
    accept_key,
    close_frame,
    expected_statuses,
    probe_request,
    response_problem,
    websocket_key,
)


class Clock:
    """A hand-moved clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(state: HealthState, results: str) -> list[bool | None]:
    """Feed ``results`` ('+' good, '-' failed) and collect the transitions."""
    return [state.record(r == "+") for r in results]


def test_starts_unknown_and_routable() -> None:
    state = HealthState(3, 2, clock=Clock())
    assert state.healthy and not state.known and state.checked is None


def test_first_failure_takes_an_unknown_peer_out_whatever_fails_says() -> None:
    clock = Clock()
    state = HealthState(fails=3, passes=2, clock=clock)
    clock.now = 101.0
    assert state.record(False) is False
    assert not state.healthy and state.known and state.since == 101.0 and state.checked == 101.0


def test_first_success_keeps_it_in_without_a_transition() -> None:
    state = HealthState(fails=3, passes=2, clock=Clock())
    assert state.record(True) is None
    assert state.healthy and state.known


def test_fails_consecutive_failures_to_leave_rotation() -> None:
    state = HealthState(fails=3, passes=1, clock=Clock())
    assert run(state, "+--") == [None, None, None]
    assert state.healthy
    assert run(state, "-") == [False]
    assert not state.healthy


def test_a_success_resets_the_failure_streak() -> None:
    state = HealthState(fails=2, passes=1, clock=Clock())
    assert run(state, "+-+-+-") == [None] * 6
    assert state.healthy and state.failed == 1
    assert run(state, "-") == [False]


def test_passes_consecutive_successes_to_return() -> None:
    state = HealthState(fails=1, passes=3, clock=Clock())
    assert run(state, "-") == [False]
    assert run(state, "++-++") == [None] * 5  # the failure restarts the count
    assert not state.healthy
    assert run(state, "+") == [True]
    assert state.healthy and state.passed == 3


def test_default_one_and_one() -> None:
    state = HealthState(clock=Clock())
    assert run(state, "+-+-") == [None, False, True, False]


def test_transitions_record_their_time_and_count_checks() -> None:
    clock = Clock()
    state = HealthState(fails=2, passes=2, clock=clock)
    for t, ok in [(1.0, True), (2.0, False), (3.0, False), (4.0, True), (5.0, True)]:
        clock.now = t
        state.record(ok)
    assert state.checks == 5 and state.checked == 5.0 and state.since == 5.0 and state.healthy
    clock.now = 6.0
    state.record(True)
    assert state.since == 5.0


@pytest.mark.parametrize(("fails", "passes"), [(0, 1), (1, 0)])
def test_thresholds_are_at_least_one(fails: int, passes: int) -> None:
    with pytest.raises(ValueError):
        HealthState(fails, passes)


def test_http_request_bytes() -> None:
    check = HealthCheck(uri="/health")
    assert probe_request(check, "u") == (
        b"GET /health HTTP/1.1\r\nHost: u\r\nConnection: close\r\n"
        b"User-Agent: wsgate-health-check\r\n\r\n"
    )


def test_websocket_request_bytes() -> None:
    check = HealthCheck(uri="/ws", kind="websocket")
    key = websocket_key(bytes(range(16)))
    assert key == "AAECAwQFBgcICQoLDA0ODw=="
    request = probe_request(check, "backend", key).decode()
    assert request.startswith("GET /ws HTTP/1.1\r\nHost: backend\r\n")
    for line in ("Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}"):
        assert f"\r\n{line}\r\n" in request
    assert "Sec-WebSocket-Version: 13" in request and request.endswith("\r\n\r\n")
    with pytest.raises(ValueError):
        probe_request(check, "backend")
    with pytest.raises(ValueError):
        websocket_key(b"short")


def test_accept_key_rfc6455_example() -> None:
    # RFC 6455 §1.3's worked example.
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    ("status", "codes", "problem"),
    [
        (200, (), None),
        (204, (), None),
        (302, (), None),
        (199, (), "checking status code"),
        (404, (), "checking status code"),
        (503, (), "checking status code"),
        (200, (204,), "checking status code"),
        (204, (204,), None),
        (503, (200, 503), None),
    ],
)
def test_http_status_expectations(status: int, codes: tuple[int, ...], problem: str | None) -> None:
    check = HealthCheck(status=codes)
    assert response_problem(check, status, []) == problem


def test_expected_statuses() -> None:
    assert expected_statuses(HealthCheck()) is None
    assert expected_statuses(HealthCheck(kind="websocket")) == (101,)
    assert expected_statuses(HealthCheck(kind="websocket", status=(101, 426))) == (101, 426)


def test_websocket_handshake_validation() -> None:
    check = HealthCheck(kind="websocket")
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    good = [
        ("Upgrade", "WebSocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    ]
    assert response_problem(check, 101, good, key) is None
    assert response_problem(check, 200, [], key) == "checking status code"
    bad_accept = [*good[:2], ("Sec-WebSocket-Accept", accept_key("other"))]
    for headers in (good[1:], [good[0], good[2]], good[:2], bad_accept, [*good, good[2]]):
        assert response_problem(check, 101, headers, key) == "checking websocket handshake"
    assert response_problem(check, 101, good, None) == "checking websocket handshake"


def test_close_frame_is_masked_1000() -> None:
    frame = close_frame(b"\x01\x02\x03\x04")
    assert frame[:2] == b"\x88\x82" and frame[2:6] == b"\x01\x02\x03\x04"
    payload = bytes(b ^ frame[2 + i % 4] for i, b in enumerate(frame[6:]))
    assert payload == (1000).to_bytes(2, "big")
    assert close_frame(b"\0\0\0\0", 1001)[6:] == b"\x03\xe9"
    with pytest.raises(ValueError):
        close_frame(b"\0")
    assert base64.b64decode(websocket_key(b"x" * 16)) == b"x" * 16
