"""The shared-memory metrics store: forked writers, slot reuse, dead workers, the text page,
and the ``prometheus`` directive (no event loop; forks where processes are the point)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.prometheus_text import parse
from wsgate.config.loader import load
from wsgate.config.model import Config
from wsgate.errors import ConfigError
from wsgate.observability.metrics import (
    HANDSHAKE_SECONDS,
    LATENCY_BUCKETS,
    REQUEST_SECONDS,
    TUNNELS_OPEN,
    UPSTREAM_FAILURES,
    MetricsStore,
    location_label,
    prometheus_enabled,
)

SMALL = 64 * 1024


def in_child(work: Callable[[], None]) -> int:
    """Run ``work`` in a forked child; returns its pid (exit status 0 means it passed)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    return pid


def wait_ok(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def page(store: MetricsStore) -> str:
    return store.exposition().decode()


def failures(store: MetricsStore, peer: str) -> float:
    return parse(page(store)).value(
        "wsgate_upstream_failures_total", upstream="u", peer=peer, type="error"
    )


class FakeTunnel:
    def __init__(self, websocket: bool = False, sizes: bool = False) -> None:
        self.bytes_to_upstream = 0
        self.bytes_to_client = 0
        self.messages_to_upstream = 0
        self.messages_to_client = 0
        self.websocket = websocket
        self.sized = sizes
        self.close_code_client: int | None = None
        self.close_code_upstream: int | None = None
        #: What take_sizes hands over next (to upstream, to client).
        self.pending: tuple[list[int], list[int]] | None = None

    def take_sizes(self) -> tuple[list[int], list[int]] | None:
        if not self.sized:
            return None
        taken = self.pending or ([0] * 12, [0] * 12)
        self.pending = None
        return taken


def test_forked_workers_write_their_slots_and_any_reader_sums() -> None:
    store = MetricsStore(8, SMALL)
    try:

        def worker(slot: int) -> Callable[[], None]:
            def work() -> None:
                store.attach(slot)
                for i in range(1000 * (slot + 1)):
                    store.upstream_failed("u", "a:1", "error")
                    # Series appear while the parent reads: entries are published whole.
                    store.upstream_failed("u", f"p{slot}-{i % 50}", "error")
                store.request_done("s", "/", 200, False, 0.002)

            return work

        pids = [in_child(worker(slot)) for slot in (0, 3, 7)]
        running = set(pids)
        while running:  # read while the children write: every page must parse
            parse(page(store))
            for pid in list(running):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    assert os.waitstatus_to_exitcode(status) == 0
                    running.discard(pid)
        result = parse(page(store))
        assert failures(store, "a:1") == 1000 + 4000 + 8000
        assert len(result.series("wsgate_upstream_failures_total")) == 1 + 3 * 50
        assert failures(store, "p7-49") == 8000 / 50
        assert result.value("wsgate_request_duration_seconds_count", server="s", location="/") == 3
        assert (
            result.value("wsgate_http_requests_total", server="s", location="/", status_class="2xx")
            == 3
        )
    finally:
        store.close()


def test_a_reused_slot_continues_its_counters_and_dead_gauges_drop() -> None:
    store = MetricsStore(4, SMALL)
    try:
        tunnel = FakeTunnel()
        labels = ("s", "/ws", "u", "a:1")

        def first() -> None:
            store.attach(2)
            store.upstream_failed("u", "a:1", "error")
            store.upstream_failed("u", "a:1", "error")
            store.tunnel_opened(FakeTunnel(), labels, 0.01)
            store.tunnel_opened(FakeTunnel(), labels, 0.01)
            os.kill(os.getpid(), signal.SIGKILL)  # tunnels open: never closed

        pid = in_child(first)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL
        before = parse(page(store))
        assert (
            before.value(
                "wsgate_tunnels_open", **dict(zip(TUNNELS_OPEN.labels, labels, strict=True))
            )
            == 2
        )

        store.worker_exited(2)  # what the master does after reaping it
        after = parse(page(store))
        assert (
            after.value(
                "wsgate_tunnels_open", **dict(zip(TUNNELS_OPEN.labels, labels, strict=True))
            )
            == 0
        )
        assert failures(store, "a:1") == 2
        assert after.value("wsgate_handshakes_total", server="s", location="/ws", status="101") == 2
        assert (
            after.value("wsgate_handshake_duration_seconds_count", server="s", location="/ws") == 2
        )

        def second() -> None:
            store.attach(2)  # the slot, reused
            store.upstream_failed("u", "a:1", "error")
            store.tunnel_opened(tunnel, labels, 0.01)
            assert failures(store, "a:1") == 3

        wait_ok(in_child(second))
        again = parse(page(store))
        assert failures(store, "a:1") == 3
        assert (
            again.value(
                "wsgate_tunnels_open", **dict(zip(TUNNELS_OPEN.labels, labels, strict=True))
            )
            == 1
        )
        # Adopted, not duplicated: one entry per series in the slot.
        assert len(again.series("wsgate_upstream_failures_total")) == 1
        assert store._header(2)[0] == len(store._parse(2)[0])
        keys = [e.key for e in store._parse(2)[0]]
        assert len(keys) == len(set(keys))
    finally:
        store.close()


def test_worker_exited_zeroes_gauges_only() -> None:
    store = MetricsStore(2, SMALL)
    try:
        store.attach(1)
        store.tunnel_opened(FakeTunnel(), ("", "", "u", "a:1"), 0.5)
        store.add(TUNNELS_OPEN, ("x", "", "u", "a:2"), 5)
        store.upstream_failed("u", "a:1", "timeout")
        store.observe(REQUEST_SECONDS, ("", ""), 0.3)
        before = store.collect()
        store.worker_exited(1)
        after = store.collect()
        for key, (kind, values) in before.items():
            if key.startswith(b"wsgate_tunnels_open\0"):
                assert values == [5] or values == [1]
                assert after[key][1] == [0]
            else:
                assert after[key] == (kind, values)
    finally:
        store.close()


def test_exposition_format_and_histograms() -> None:
    store = MetricsStore.single_process()
    try:
        where = ("api.example", '~ ^/a"b\\c\nd')
        for seconds in (0.0005, 0.001, 0.003, 0.2, 100.0, -1.0):
            store.observe(HANDSHAKE_SECONDS, where, seconds)
        store.request_done("api.example", "= /x", 404, True, 0.0)
        store.request_done("api.example", "= /x", 502, False, 0.0)
        text = page(store)
        result = parse(text)
        # Every family is declared, with HELP before TYPE, even before it has a sample.
        assert list(result.families) == [
            "wsgate_tunnels_open",
            "wsgate_handshakes_total",
            "wsgate_http_requests_total",
            "wsgate_tunnel_bytes_total",
            "wsgate_tunnel_messages_total",
            "wsgate_tunnel_message_size_bytes",
            "wsgate_tunnel_close_codes_total",
            "wsgate_tunnel_duration_seconds",
            "wsgate_upstream_failures_total",
            "wsgate_handshake_duration_seconds",
            "wsgate_request_duration_seconds",
            "wsgate_metrics_series_dropped_total",
        ]
        assert result.families["wsgate_tunnels_open"].type == "gauge"
        assert result.families["wsgate_handshake_duration_seconds"].type == "histogram"
        assert "# TYPE wsgate_handshakes_total counter\n" in text
        # Escaped label values come back intact.
        labels = dict(server=where[0], location=where[1])
        buckets = result.buckets("wsgate_handshake_duration_seconds", **labels)
        assert [le for le, _ in buckets] == [*LATENCY_BUCKETS, float("inf")]
        cumulative = dict(buckets)
        # 0.0005, 0.001 (le is inclusive) and -1 (a clock step, counted as 0) in le=0.001.
        assert cumulative[0.001] == 3
        assert cumulative[0.0025] == 3 and cumulative[0.005] == 4
        assert cumulative[0.25] == 5 and cumulative[60.0] == 5
        assert cumulative[float("inf")] == 6
        assert result.value("wsgate_handshake_duration_seconds_count", **labels) == 6
        assert result.value("wsgate_handshake_duration_seconds_sum", **labels) == pytest.approx(
            0.0005 + 0.001 + 0.003 + 0.2 + 100.0
        )
        assert 'le="+Inf"' in text and 'le="0.0025"' in text and 'le="60"' in text
        x = dict(server="api.example", location="= /x")
        assert result.value("wsgate_http_requests_total", **x, status_class="4xx") == 1
        assert result.value("wsgate_http_requests_total", **x, status_class="5xx") == 1
        # Only a request that carried Upgrade is a handshake.
        assert result.series("wsgate_handshakes_total") == {
            (("location", "= /x"), ("server", "api.example"), ("status", "404")): 1
        }
        assert result.value("wsgate_metrics_series_dropped_total") == 0
    finally:
        store.close()


def test_tunnel_bytes_and_messages_flush_while_open_and_on_close() -> None:
    store = MetricsStore.single_process()
    try:
        t = FakeTunnel()
        labels = ("s", "/ws", "u", "127.0.0.1:1")
        store.tunnel_opened(t, labels, 0.01)
        ls = dict(zip(TUNNELS_OPEN.labels, labels, strict=True))

        def value(name: str, direction: str) -> float:
            return parse(page(store)).value(name, **ls, direction=direction)

        t.bytes_to_upstream, t.messages_to_upstream = 100, 2
        assert value("wsgate_tunnel_bytes_total", "to_upstream") == 0  # not flushed yet
        store.flush()
        assert value("wsgate_tunnel_bytes_total", "to_upstream") == 100
        t.bytes_to_upstream, t.bytes_to_client, t.messages_to_client = 150, 7, 1
        store.flush()
        store.flush()  # a second flush adds nothing
        assert value("wsgate_tunnel_bytes_total", "to_upstream") == 150
        t.bytes_to_client, t.messages_to_client = 20, 3
        store.tunnel_closed(t)
        store.tunnel_closed(t)  # once only
        t.bytes_to_client = 1000
        store.flush()  # a closed tunnel is no longer read
        assert value("wsgate_tunnel_bytes_total", "to_client") == 20
        assert value("wsgate_tunnel_messages_total", "to_upstream") == 2
        assert value("wsgate_tunnel_messages_total", "to_client") == 3
        assert parse(page(store)).value("wsgate_tunnels_open", **ls) == 0
    finally:
        store.close()


class FakeLoop:
    """``call_later`` recorded, run by hand: the flush timer without waiting."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeHandle:
        self.calls.append((delay, callback))
        return FakeHandle()


class FakeHandle:
    def cancel(self) -> None:
        pass


def test_periodic_flush_only_with_a_prometheus_location(tmp_path: Path) -> None:
    without = conf(tmp_path, "server { listen 127.0.0.1:0; location / { return 204; } }")
    with_it = conf(
        tmp_path, "server { listen 127.0.0.1:0; location /m { location /m/x { prometheus; } } }"
    )
    assert not prometheus_enabled(without) and prometheus_enabled(with_it)
    store = MetricsStore.single_process()
    try:
        t = FakeTunnel()
        store.tunnel_opened(t, ("", "", "u", "p"), 0.0)
        current = [without]
        loop = FakeLoop()
        store.start_flush(loop, lambda: current[0], interval=5.0)  # type: ignore[arg-type]
        t.bytes_to_upstream = 10

        def tick() -> None:
            delay, callback = loop.calls.pop()
            assert delay == 5.0 and not loop.calls
            callback()

        def flushed() -> float:
            return parse(page(store)).value(
                "wsgate_tunnel_bytes_total",
                server="",
                location="",
                upstream="u",
                peer="p",
                direction="to_upstream",
            )

        tick()
        assert flushed() == 0
        current[0] = with_it  # a reload added a prometheus location
        tick()
        assert flushed() == 10
        assert len(loop.calls) == 1  # it keeps running
    finally:
        store.close()


def test_without_prometheus_a_tunnel_is_kept_nowhere_and_counted_when_it_closes(
    tmp_path: Path,
) -> None:
    without = conf(tmp_path, "server { listen 127.0.0.1:0; location / { return 204; } }")
    with_it = conf(tmp_path, "server { listen 127.0.0.1:0; location /m { prometheus; } }")
    store = MetricsStore.single_process()
    try:
        current = [without]
        store.start_flush(FakeLoop(), lambda: current[0])  # type: ignore[arg-type]
        labels = ("s", "/ws", "u", "p:1")
        ls = dict(zip(TUNNELS_OPEN.labels, labels, strict=True))
        a, b = FakeTunnel(), FakeTunnel()
        series = store.tunnel_opened(a, labels, 0.0)
        assert store.tunnel_opened(b, labels, 0.0) is series  # one record per label set
        assert not store._live  # nothing per tunnel
        assert parse(page(store)).value("wsgate_tunnels_open", **ls) == 2
        a.bytes_to_client, a.messages_to_client = 30, 2
        store.flush()  # not kept: not read before it closes
        result = parse(page(store))
        assert result.value("wsgate_tunnel_bytes_total", **ls, direction="to_client") == 0
        store.tunnel_closed(a, series)
        result = parse(page(store))
        assert result.value("wsgate_tunnel_bytes_total", **ls, direction="to_client") == 30
        assert result.value("wsgate_tunnel_messages_total", **ls, direction="to_client") == 2
        assert result.value("wsgate_tunnels_open", **ls) == 1

        current[0] = with_it  # tunnels opened from now on are flushed while open
        c = FakeTunnel()
        assert store.tunnel_opened(c, labels, 0.0) is series and c in store._live
        c.bytes_to_upstream = 5
        store.flush()
        c.bytes_to_upstream = 7
        store.flush()
        store.tunnel_closed(c, series)
        store.tunnel_closed(b, series)
        result = parse(page(store))
        assert result.value("wsgate_tunnel_bytes_total", **ls, direction="to_upstream") == 7
        assert result.value("wsgate_tunnels_open", **ls) == 0
        assert not store._live
    finally:
        store.close()


def test_a_full_region_drops_series_and_counts_them() -> None:
    store = MetricsStore(1, 4096)
    store.attach(0)
    try:
        for i in range(200):
            store.upstream_failed("u", f"10.0.0.{i}:80", "error")
            store.upstream_failed("u", f"10.0.0.{i}:80", "error")
        result = parse(page(store))
        kept = result.series("wsgate_upstream_failures_total")
        dropped = result.value("wsgate_metrics_series_dropped_total")
        assert 0 < len(kept) < 200 and len(kept) + dropped == 200
        assert set(kept.values()) == {2}
        # Histograms that do not fit are dropped whole, and recording them is harmless.
        store.observe(REQUEST_SECONDS, ("s", "/"), 1.0)
        assert parse(page(store)).value("wsgate_metrics_series_dropped_total") == dropped + 1
    finally:
        store.close()


def test_store_arguments_and_unattached_use() -> None:
    with pytest.raises(ValueError):
        MetricsStore(0)
    store = MetricsStore(2, SMALL)
    try:
        with pytest.raises(ValueError):
            store.attach(2)
        with pytest.raises(RuntimeError):
            store.add(UPSTREAM_FAILURES, ("u", "p", "error"))
        assert parse(page(store)).value("wsgate_metrics_series_dropped_total") == 0
    finally:
        store.close()


# -- the directive ------------------------------------------------------------------------------
def conf(tmp_path: Path, body: str) -> Config:
    (tmp_path / "nginx.conf").write_text(f"events {{}}\nhttp {{\n{body}\n}}\n")
    return load("nginx.conf", prefix=str(tmp_path))


def test_directive_in_locations_not_inherited(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        "server { listen 127.0.0.1:0;\n"
        "  location = /metrics { prometheus; }\n"
        "  location ~ ^/m { prometheus; location /m/x { return 204; } } }",
    )
    exact, regex = config.http.servers[0].locations
    assert exact.settings.prometheus and regex.settings.prometheus
    assert not regex.locations[0].settings.prometheus
    assert not config.http.servers[0].settings.prometheus
    assert [location_label(loc) for loc in (exact, regex, regex.locations[0], None)] == [
        "= /metrics",
        "~ ^/m",
        "/m/x",
        "",
    ]


def test_directive_content_handlers_the_last_wins(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        "server { listen 127.0.0.1:0;\n"
        "  location /a { proxy_pass http://127.0.0.1:9; prometheus; }\n"
        "  location /b { prometheus; proxy_pass http://127.0.0.1:9; }\n"
        "  location /c { prometheus; stub_status; }\n"
        "  location /d { stub_status; prometheus; } }",
    )
    a, b, c, d = (loc.settings for loc in config.http.servers[0].locations)
    assert a.prometheus and a.proxy_pass is None
    assert not b.prometheus and b.proxy_pass is not None
    assert c.stub_status and not c.prometheus
    assert d.prometheus and not d.stub_status


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "server { location / { prometheus on; } }",
            'invalid number of arguments in "prometheus" directive',
        ),
        ("server { prometheus; }", '"prometheus" directive is not allowed here'),
        ("prometheus;", '"prometheus" directive is not allowed here'),
        ("server { location / { prometheus_metrics; } }", 'unknown directive "prometheus_metrics"'),
    ],
)
def test_directive_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        conf(tmp_path, body)
    assert message in str(info.value) and "nginx.conf:" in str(info.value)
