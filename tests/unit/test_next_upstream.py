"""``proxy_next_upstream``'s rules (:mod:`wsgate.upstream.next`), without a loop or a socket."""

from __future__ import annotations

from typing import Any

import pytest

from wsgate.upstream.next import Failure, may_retry, replayable, status_failure

DEFAULT = frozenset({"error", "timeout"})


def retry(kind: Failure = Failure.ERROR, allowed: frozenset[str] = DEFAULT, **kw: Any) -> bool:
    args: dict[str, Any] = {
        "left": 1,
        "attempts": 1,
        "tries_limit": 0,
        "elapsed": 0.0,
        "timeout": 0.0,
        "sent": False,
        "streamed": False,
        "method": "GET",
    }
    args.update(kw)
    return may_retry(kind, allowed, **args)


def test_status_failures() -> None:
    for status in (500, 502, 503, 504, 403, 404, 429):
        kind = status_failure(status)
        assert kind is not None and kind.value == f"http_{status}"
    assert (
        status_failure(200) is None and status_failure(501) is None and status_failure(101) is None
    )


def test_403_and_404_are_no_failure() -> None:
    """``NGX_PEER_NEXT``: the next server is tried, but this one is not counted as failed."""
    counted = {k for k in Failure if k.counts_as_failure}
    assert counted == set(Failure) - {Failure.HTTP_403, Failure.HTTP_404}


def test_only_listed_kinds_are_retried() -> None:
    assert retry(Failure.ERROR) and retry(Failure.TIMEOUT)
    assert not retry(Failure.INVALID_HEADER)
    assert not retry(Failure.HTTP_502)
    assert retry(Failure.HTTP_502, DEFAULT | {"http_502"})
    assert not retry(Failure.ERROR, frozenset({"off"}))


def test_tries_left_and_tries_limit() -> None:
    assert not retry(left=0)
    assert retry(attempts=1, tries_limit=2)
    assert not retry(attempts=2, tries_limit=2)
    assert retry(attempts=50, tries_limit=0)  # 0 turns off this limitation


def test_next_upstream_timeout() -> None:
    assert retry(elapsed=0.9, timeout=1.0)
    assert not retry(elapsed=1.0, timeout=1.0)
    assert retry(elapsed=1000.0, timeout=0.0)  # 0: no limit


@pytest.mark.parametrize("method", ["POST", "LOCK", "PATCH"])
def test_non_idempotent_sent(method: str) -> None:
    assert retry(method=method)  # not sent yet: retried
    assert not retry(method=method, sent=True)
    assert retry(Failure.ERROR, DEFAULT | {"non_idempotent"}, method=method, sent=True)
    assert retry(method="PUT", sent=True)


def test_streamed_body_is_never_repeated() -> None:
    assert not retry(sent=True, streamed=True)
    assert not retry(Failure.ERROR, DEFAULT | {"non_idempotent"}, sent=True, streamed=True)


def test_replayable() -> None:
    assert replayable(False, "GET", DEFAULT)
    assert not replayable(True, "GET", DEFAULT)
    assert not replayable(False, "POST", DEFAULT)
    assert replayable(False, "POST", DEFAULT | {"non_idempotent"})
