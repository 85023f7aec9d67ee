"""``limit_rate``: nginx's write-filter arithmetic, and the slices and pauses it gives."""

from __future__ import annotations

import asyncio

import pytest

from wsgate.config.model import LocationSettings
from wsgate.config.template import compile_template
from wsgate.config.variables import RequestContext
from wsgate.http.rate import WriteRate
from wsgate.proxy import pacing
from wsgate.proxy.endpoint import PeerClosed
from wsgate.proxy.pacing import accel_limit_rate, response_rate, send_paced


def test_allowance_wait_and_pause_follow_ngx_http_write_filter() -> None:
    r = WriteRate(rate=12288, after=256, start_sec=100)
    # limit = rate * (ngx_time() - start_sec + 1) - (c->sent - after)
    assert r.allowance(0, 100.9) == 12288 + 256
    assert r.allowance(12544, 100.9) == 0
    assert r.allowance(20000, 101.2) == 2 * 12288 - (20000 - 256)
    # limit <= 0: wait (-limit * 1000 / rate + 1) ms
    assert r.wait(0) == 0.001
    assert r.wait(-12288) == 1.001
    # after a send: (nsent - sent) * 1000 / rate ms, both less limit_rate_after (not below 0)
    assert r.pause_after(0, 256) == 0.0
    assert r.pause_after(0, 256 + 12288) == 1.0
    assert r.pause_after(100, 100 + 6144) == pytest.approx((6144 - 156) * 1000 // 12288 / 1000)
    assert WriteRate(1000, 0, 0).pause_after(500, 1000) == 0.5


class FakeEndpoint:
    closed = False

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self._gone: asyncio.Future[None] | None = None

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def drain(self) -> None:
        return None

    def gone(self) -> asyncio.Future[None]:
        if self._gone is None:
            self._gone = asyncio.get_running_loop().create_future()
        return self._gone


def test_send_paced_slices_by_the_allowance_and_sleeps_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.5]
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(pacing.asyncio, "sleep", fake_sleep)
    ep = FakeEndpoint()
    rate = WriteRate(rate=1000, after=100, start_sec=100)
    sent = asyncio.run(send_paced(ep, b"x" * 2600, rate, 0, clock=lambda: now[0]))  # type: ignore[arg-type]
    assert sent == 2600 and b"".join(ep.writes) == b"x" * 2600
    # 1100 at once (rate + after), a second's pause; then what the next seconds allow.
    assert [len(w) for w in ep.writes] == [1100, 1000, 500]
    assert sleeps == [1.0, 1.0, 0.5]


def test_a_client_gone_ends_the_pause_at_once() -> None:
    """nginx's ngx_http_test_reading: a client closing during a delayed response ends it
    then, not when the delay is over (here a delay of days; the test's own deadline fails
    it if the pause is not cut short)."""

    async def main() -> None:
        ep = FakeEndpoint()
        rate = WriteRate(rate=1, after=0, start_sec=0)
        task = asyncio.ensure_future(send_paced(ep, b"x", rate, 10**6, clock=lambda: 0.0))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert not task.done() and not ep.writes
        ep.gone().set_result(None)
        with pytest.raises(PeerClosed):
            await asyncio.wait_for(task, 10)

    asyncio.run(main())


def test_response_rate_reads_the_directive_once_and_variables_as_sizes() -> None:
    errors: list[str] = []
    ctx = RequestContext(start=50.7)
    ctx.args = "l=12k&a=256"
    settings = LocationSettings(
        limit_rate=compile_template("$arg_l"), limit_rate_after=compile_template("$arg_a")
    )
    r = response_rate(settings, ctx, errors.append)
    assert r == WriteRate(12288, 256, 50) and ctx.limit_rate == 12288
    assert ctx.lookup("limit_rate") == "12288"
    # set once: a later call keeps it
    ctx.args = "l=1&a=256"
    assert response_rate(settings, ctx, errors.append) == r
    # not a size: nginx's "invalid size" and no limit
    bad = RequestContext()
    bad.args = "l=fast"
    assert response_rate(settings, bad, errors.append) is None
    assert errors == ['invalid size "fast"'] and bad.lookup("limit_rate") == "0"
    # an unset variable: "" is not a size either (ngx_parse_size of an empty string)
    assert response_rate(settings, RequestContext(), errors.append) is None
    assert errors[-1] == 'invalid size ""'
    # $limit_rate set before the first write wins over the directive
    pre = RequestContext()
    pre.limit_rate = 500
    assert response_rate(LocationSettings(limit_rate=100), pre, errors.append) == WriteRate(
        500, 0, int(pre.start)
    )


def test_x_accel_limit_rate_is_digits_only() -> None:
    assert accel_limit_rate([("X-Accel-Limit-Rate", "13000")]) == 13000
    assert accel_limit_rate([("x-accel-limit-rate", "13k")]) is None
    assert accel_limit_rate([("X-Other", "1")]) is None
    assert accel_limit_rate([("X-Accel-Limit-Rate", "5"), ("X-Accel-Limit-Rate", "9")]) == 5
