"""``$upstream_connect_time``, ``$upstream_header_time`` and ``$upstream_response_time``: one
value per try, ``-`` where a try did not get that far (nginx's ``(ngx_msec_t) -1``)."""

from __future__ import annotations

from wsgate.config.variables import RequestContext, request_headers_read


def test_times_per_try_with_dashes() -> None:
    ctx = RequestContext()
    ctx.upstream_addrs = ["127.0.0.1:1", "127.0.0.1:2"]
    # the first try failed after connecting (no header), the second is sending its response
    ctx.upstream_phase_times = [["0.001", "-"], ["0.000", "0.250"]]
    ctx.upstream_times = ["1.002"]
    assert ctx.lookup("upstream_connect_time") == "0.001, 0.000"
    assert ctx.lookup("upstream_header_time") == "-, 0.250"
    # the try under way has no response time yet
    assert ctx.lookup("upstream_response_time") == "1.002, -"
    ctx.upstream_times = ["1.002", "0.300"]
    assert ctx.lookup("upstream_response_time") == "1.002, 0.300"


def test_a_tunnel_keeps_the_phase_times_only_when_a_log_reads_them() -> None:
    from wsgate.config.variables import UPSTREAM_PHASE_TIMES

    assert UPSTREAM_PHASE_TIMES in request_headers_read(["upstream_header_time"])
    assert UPSTREAM_PHASE_TIMES not in request_headers_read(["upstream_response_time"])
