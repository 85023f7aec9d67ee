"""Prometheus metrics kept in shared memory, so a scrape on any worker sees every worker.

Why shared memory: wsgate runs several worker processes (and, after a reload, several
generations of them with different configurations), and the kernel hands a scrape to whichever
worker accepts it.  nginx solves the same problem for ``stub_status`` with counters in a shared
zone; here the master creates one anonymous ``MAP_SHARED`` mapping before ``fork()`` and every
worker inherits it.

Why it needs no lock: the mapping is cut into one region per worker *slot*, and only the worker
holding a slot writes to that region (one thread, its event loop).  A scrape reads all regions
and sums each series over them.  Within a region:

* a 16-byte header: the number of published directory entries, and of series dropped because
  the region was full;
* the directory, growing up from the header: per series a ``<HBBI`` record (key length, kind,
  number of 8-byte cells, index of its first cell in the region) followed by the key
  (``name NUL label-body``, the label body already escaped for the text format);
* the values, growing down from the region's end: int64 cells (counters, gauges, histogram
  buckets) and one float64 cell per histogram (the sum).

An entry is written completely, its cells zeroed, and only then is the count bumped, so a reader
never sees half an entry.  Values are updated in place: aligned 8-byte stores, and a reader
tolerates one series being a few increments behind another.

Slots are reused: a worker that takes a slot (:meth:`MetricsStore.attach`) adopts the entries
already there, so its counters continue from where the previous holder left them and totals
never go down.  When a worker dies (even ``SIGKILL``), the master calls
:meth:`MetricsStore.worker_exited`, which zeroes the slot's gauges (its tunnels are gone) and
keeps its counters.

Nothing here runs on the tunnel's hot path: bytes and messages are read from the tunnel's own
counters when it closes, and every :data:`FLUSH_INTERVAL` seconds while a ``prometheus``
location exists (:meth:`MetricsStore.start_flush`), so long tunnels show before they end; so
is the message-size histogram of a tunnel that keeps one (``websocket_metrics on``, the only
per-message work, done by the tunnel's sides).  The close codes and the duration are counted
when a tunnel ends.

Exposition: https://prometheus.io/docs/instrumenting/exposition_formats/ (text format 0.0.4).
"""

from __future__ import annotations

import asyncio
import bisect
import mmap
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from wsgate.config.model import Config, Location
from wsgate.proxy.frames import SIZE_BUCKETS

__all__ = [
    "CONTENT_TYPE",
    "COUNTER",
    "FLUSH_INTERVAL",
    "GAUGE",
    "HISTOGRAM",
    "LATENCY_BUCKETS",
    "MAX_SLOTS",
    "METRICS",
    "REGION_SIZE",
    "Metric",
    "MetricsStore",
    "SIZE_BUCKETS",
    "TUNNEL_BUCKETS",
    "TunnelCounts",
    "TunnelSeries",
    "location_label",
    "prometheus_enabled",
]

#: The ``Content-Type`` of text format 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Worker slots a store made by the master can hold (the master assigns and reuses them).
MAX_SLOTS = 256
#: Bytes per slot: untouched pages of an anonymous mapping cost no memory.
REGION_SIZE = 1 << 20
#: Seconds between flushes of live tunnels' bytes and messages.
FLUSH_INTERVAL = 5.0
#: Upper bounds (seconds) of the latency histograms' buckets; ``+Inf`` is added.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

#: Upper bounds (seconds) of the tunnel-duration histogram: from a tenth of a second (a
#: refused or probing connection) to a day.
TUNNEL_BUCKETS = (
    0.1,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    21600.0,
    86400.0,
)

COUNTER, GAUGE, HISTOGRAM = 1, 2, 3
_TYPE_NAMES = {COUNTER: "counter", GAUGE: "gauge", HISTOGRAM: "histogram"}

_HEADER = struct.Struct("<II")  # published entries, dropped series
_HEADER_SIZE = 16
_ENTRY = struct.Struct("<HBBI")  # key length, kind, cells, first cell (index in the region)


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family: its name, type, help text, label names and histogram buckets."""

    name: str
    kind: int
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] | tuple[int, ...] = ()

    @property
    def cells(self) -> int:
        """8-byte cells per series: one value, or every bucket, ``+Inf`` and the sum."""
        return len(self.buckets) + 2 if self.kind == HISTOGRAM else 1


_WHERE = ("server", "location")
_PEER = ("server", "location", "upstream", "peer")

TUNNELS_OPEN = Metric("wsgate_tunnels_open", GAUGE, "WebSocket tunnels open now.", _PEER)
HANDSHAKES = Metric(
    "wsgate_handshakes_total",
    COUNTER,
    "Requests carrying Upgrade, by the status they got (101: a tunnel opened).",
    (*_WHERE, "status"),
)
REQUESTS = Metric(
    "wsgate_http_requests_total",
    COUNTER,
    "Requests by status class (1xx for a tunnel, counted when the 101 is sent).",
    (*_WHERE, "status_class"),
)
TUNNEL_BYTES = Metric(
    "wsgate_tunnel_bytes_total",
    COUNTER,
    "Bytes relayed through tunnels after the 101, per direction.",
    (*_PEER, "direction"),
)
TUNNEL_MESSAGES = Metric(
    "wsgate_tunnel_messages_total",
    COUNTER,
    "WebSocket messages relayed through tunnels, per direction.",
    (*_PEER, "direction"),
)
TUNNEL_SECONDS = Metric(
    "wsgate_tunnel_duration_seconds",
    HISTOGRAM,
    "From the 101 sent to the tunnel's end.",
    _PEER,
    TUNNEL_BUCKETS,
)
CLOSE_CODES = Metric(
    "wsgate_tunnel_close_codes_total",
    COUNTER,
    "WebSocket tunnels ended, by the status code of the first Close frame each side sent "
    '(side="client" or "upstream"; code "none": no Close, "3xxx"/"4xxx": registered or '
    'private codes, "invalid": a code RFC 6455 does not allow).',
    (*_PEER, "side", "code"),
)
MESSAGE_SIZES = Metric(
    "wsgate_tunnel_message_size_bytes",
    HISTOGRAM,
    "WebSocket message payload sizes on the wire, per direction (websocket_metrics on).",
    (*_PEER, "direction"),
    SIZE_BUCKETS,
)
UPSTREAM_FAILURES = Metric(
    "wsgate_upstream_failures_total",
    COUNTER,
    "Failed tries counted against an upstream server, by proxy_next_upstream's kind.",
    ("upstream", "peer", "type"),
)
HANDSHAKE_SECONDS = Metric(
    "wsgate_handshake_duration_seconds",
    HISTOGRAM,
    "From the request head read to the 101 sent, for tunnels that opened.",
    _WHERE,
    LATENCY_BUCKETS,
)
REQUEST_SECONDS = Metric(
    "wsgate_request_duration_seconds",
    HISTOGRAM,
    "From the request head read to the response done, for requests that did not tunnel.",
    _WHERE,
    LATENCY_BUCKETS,
)
DROPPED = Metric(
    "wsgate_metrics_series_dropped_total",
    COUNTER,
    "Series not recorded because a worker's metrics region was full.",
    (),
)

#: Every metric, in exposition order.
METRICS: tuple[Metric, ...] = (
    TUNNELS_OPEN,
    HANDSHAKES,
    REQUESTS,
    TUNNEL_BYTES,
    TUNNEL_MESSAGES,
    MESSAGE_SIZES,
    CLOSE_CODES,
    TUNNEL_SECONDS,
    UPSTREAM_FAILURES,
    HANDSHAKE_SECONDS,
    REQUEST_SECONDS,
    DROPPED,
)
_BY_NAME = {m.name: m for m in METRICS}

_TO_UPSTREAM, _TO_CLIENT = "to_upstream", "to_client"


class TunnelCounts(Protocol):
    """What the store reads from a tunnel (:class:`wsgate.proxy.tunnel.Tunnel`)."""

    @property
    def bytes_to_upstream(self) -> int: ...

    @property
    def bytes_to_client(self) -> int: ...

    @property
    def messages_to_upstream(self) -> int: ...

    @property
    def messages_to_client(self) -> int: ...

    @property
    def websocket(self) -> bool: ...

    @property
    def sized(self) -> bool: ...

    @property
    def close_code_client(self) -> int | None: ...

    @property
    def close_code_upstream(self) -> int | None: ...

    def take_sizes(self) -> tuple[list[int], list[int]] | None: ...


def location_label(location: Location | None) -> str:
    """The ``location`` label: the pattern as written (``/ws``, ``= /x``, ``~ ^/api``)."""
    if location is None:
        return ""
    named = location.is_named  # "@name"
    return (
        f"{location.modifier} {location.name}" if location.modifier and not named else location.name
    )


def prometheus_enabled(config: Config) -> bool:
    """Whether any location of ``config`` has ``prometheus``."""

    def walk(locations: tuple[Location, ...]) -> bool:
        return any(loc.settings.prometheus or walk(loc.locations) for loc in locations)

    return any(walk(server.every_location) for server in config.http.servers)


def _escape(value: str) -> str:
    """Label values: "backslash, double-quote, and line feed must be escaped"."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _series_key(metric: Metric, values: tuple[str, ...]) -> bytes:
    body = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(metric.labels, values, strict=True))
    return f"{metric.name}\0{body}".encode()


def close_code_label(code: int | None) -> str:
    """The ``code`` label of a close code: the code for those RFC 6455 and the IANA registry
    define (1000-1015), ``3xxx`` and ``4xxx`` for the registered and private-use ranges
    (§7.4.2), ``none`` without a Close, ``invalid`` otherwise.  A peer chooses the codes it
    sends, so the label takes few values whatever it sends (one series each)."""
    if code is None:
        return "none"
    if 1000 <= code <= 1015:
        return str(code)
    if 3000 <= code <= 4999:
        return "3xxx" if code < 4000 else "4xxx"
    return "invalid"


class TunnelSeries:
    """The cells of the tunnels of one label set (server, location, upstream, peer), shared
    by all of them: an idle tunnel costs the store no object of its own."""

    __slots__ = ("gauge", "cells", "labels", "duration", "sizes")

    def __init__(
        self, gauge: int, cells: tuple[int, int, int, int], labels: tuple[str, ...] = ()
    ) -> None:
        self.gauge = gauge
        #: bytes to upstream, bytes to client, messages to upstream, messages to client.
        self.cells = cells
        #: (server, location, upstream, peer).
        self.labels = labels
        #: The first cell of the duration histogram (-1: not made yet).
        self.duration = -1
        #: The first cells of the size histograms to upstream and to client (made when the
        #: first tunnel that keeps them opens).
        self.sizes: tuple[int, int] | None = None


_NOTHING_SEEN = (0, 0, 0, 0)


class _Live:
    """A tunnel some of whose counts were added while it was open: what was added."""

    __slots__ = ("series", "seen")

    def __init__(self, series: TunnelSeries, seen: tuple[int, int, int, int]) -> None:
        self.series = series
        self.seen = seen


@dataclass(slots=True)
class _Entry:
    key: bytes
    kind: int
    cells: int
    first: int  # absolute cell index in the mapping


class MetricsStore:
    """The shared mapping: written by the worker :meth:`attach`-ed to a slot, read by any.

    The master makes one (``MetricsStore(MAX_SLOTS)``) before forking; each worker calls
    :meth:`attach` with its slot; the master calls :meth:`worker_exited` after reaping one.
    A single process uses :meth:`single_process`.
    """

    def __init__(self, max_slots: int, region_size: int = REGION_SIZE) -> None:
        if max_slots < 1 or region_size < 4096 or region_size % 8:
            raise ValueError("a metrics store needs at least one slot of 4096+ bytes")
        self.max_slots = max_slots
        self.region_size = region_size
        # One region per slot, then a scratch page where series that did not fit are written
        # (never read), so recording never needs a branch for a full region.
        self._mm = mmap.mmap(-1, max_slots * region_size + 4096, flags=mmap.MAP_SHARED)
        self._scratch = max_slots * region_size // 8
        self._q = memoryview(self._mm).cast("q")
        self._d = memoryview(self._mm).cast("d")
        #: The slot this process writes, or None (the master, or not attached yet).
        self.slot: int | None = None
        self._base = 0
        self._dir_end = 0
        self._cells_used = 0
        #: (metric name, label values) -> first cell: the recording fast path.
        self._index: dict[tuple[str, tuple[str, ...]], int] = {}
        #: Series found in the slot when it was adopted: key -> first cell.
        self._adopted: dict[bytes, int] = {}
        #: Per slot: the entries parsed so far (they never change once published).
        self._seen: dict[int, tuple[int, int, list[_Entry]]] = {}
        #: The tunnels flushed while open: their series, or what was already added.
        self._live: dict[TunnelCounts, TunnelSeries | _Live] = {}
        #: (server, location, upstream, peer) -> its tunnels' cells.
        self._series: dict[tuple[str, str, str, str], TunnelSeries] = {}
        self._flusher: asyncio.TimerHandle | None = None
        #: The configuration :meth:`start_flush` reads (None: not started, flush everything),
        #: the last one checked and whether it has a ``prometheus`` location.
        self._config: Callable[[], Config] | None = None
        self._checked: Config | None = None
        self._enabled = False

    @classmethod
    def single_process(cls) -> MetricsStore:
        """One slot, attached: ``master_process off`` and tests."""
        store = cls(1)
        store.attach(0)
        return store

    # -- slots (master and worker) --------------------------------------------------------------
    def attach(self, slot: int) -> None:
        """Make this process the writer of ``slot`` (in the child, after ``fork()``).

        The entries a previous holder published are adopted: their counters continue.
        """
        if not 0 <= slot < self.max_slots:
            raise ValueError(f"metrics slot {slot} out of range 0..{self.max_slots - 1}")
        self.slot = slot
        self._base = slot * self.region_size
        self._index.clear()
        self._live.clear()
        self._series.clear()
        self._seen.pop(slot, None)
        entries, end = self._parse(slot)
        self._adopted = {e.key: e.first for e in entries}
        self._dir_end = end
        first_cell = self._base // 8
        self._cells_used = max(
            (first_cell + self.region_size // 8 - e.first for e in entries), default=0
        )

    def worker_exited(self, slot: int) -> None:
        """The worker of ``slot`` is gone (reaped by the master): its gauges drop to zero,
        its counters stay, so sums over workers never go down.  Call it before handing the
        slot to a new worker."""
        entries, _ = self._parse(slot)
        for e in entries:
            if e.kind == GAUGE:
                self._q[e.first] = 0

    def close(self) -> None:
        """Release the mapping (tests; processes just exit)."""
        self.stop_flush()
        self._q.release()
        self._d.release()
        self._mm.close()

    # -- recording (the attached worker) --------------------------------------------------------
    def cell(self, metric: Metric, values: tuple[str, ...]) -> int:
        """The first cell of a series, created (and published) on first use."""
        index = self._index.get((metric.name, values))
        if index is None:
            index = self._create(metric, values)
            self._index[(metric.name, values)] = index
        return index

    def add(self, metric: Metric, values: tuple[str, ...], n: int = 1) -> None:
        """Add ``n`` to a counter or gauge."""
        self._q[self.cell(metric, values)] += n

    def observe(self, metric: Metric, values: tuple[str, ...], seconds: float) -> None:
        """One observation of a histogram (negative values, from a clock step, count as 0)."""
        self._observe_at(self.cell(metric, values), metric.buckets, seconds)

    def _observe_at(
        self, first: int, buckets: tuple[float, ...] | tuple[int, ...], value: float
    ) -> None:
        value = max(value, 0.0)
        self._q[first + bisect.bisect_left(buckets, value)] += 1
        self._d[first + len(buckets) + 1] += value

    def request_done(
        self, server: str, location: str, status: int, upgrade: bool, seconds: float
    ) -> None:
        """A request that did not become a tunnel ended (one call per access-log line)."""
        where = (server, location)
        self.add(REQUESTS, (*where, f"{status // 100}xx"))
        if upgrade:
            self.add(HANDSHAKES, (*where, str(status)))
        self.observe(REQUEST_SECONDS, where, seconds)

    def tunnel_opened(
        self, tunnel: TunnelCounts, labels: tuple[str, str, str, str], seconds: float
    ) -> TunnelSeries:
        """A 101 was sent and ``tunnel`` started; ``labels`` are (server, location, upstream,
        peer), ``seconds`` the time since the request head was read.  Returns what
        :meth:`tunnel_closed` takes.

        The tunnel is kept for the periodic flush only while the configuration has a
        ``prometheus`` location (or before :meth:`start_flush`); otherwise its counts are
        added when it closes, and nothing is kept for it here."""
        where = labels[:2]
        self.add(REQUESTS, (*where, "1xx"))
        self.add(HANDSHAKES, (*where, "101"))
        self.observe(HANDSHAKE_SECONDS, where, seconds)
        series = self._series.get(labels)
        if series is None:
            cells = (
                self.cell(TUNNEL_BYTES, (*labels, _TO_UPSTREAM)),
                self.cell(TUNNEL_BYTES, (*labels, _TO_CLIENT)),
                self.cell(TUNNEL_MESSAGES, (*labels, _TO_UPSTREAM)),
                self.cell(TUNNEL_MESSAGES, (*labels, _TO_CLIENT)),
            )
            series = TunnelSeries(self.cell(TUNNELS_OPEN, labels), cells, labels)
            self._series[labels] = series
        if series.sizes is None and tunnel.sized:
            series.sizes = (
                self.cell(MESSAGE_SIZES, (*labels, _TO_UPSTREAM)),
                self.cell(MESSAGE_SIZES, (*labels, _TO_CLIENT)),
            )
        self._q[series.gauge] += 1
        if self._flushing():
            self._live[tunnel] = series
        return series

    def tunnel_closed(
        self,
        tunnel: TunnelCounts,
        series: TunnelSeries | None = None,
        seconds: float | None = None,
    ) -> None:
        """``tunnel`` ended: its last bytes, messages and message sizes are added, the gauge
        goes down, and a WebSocket tunnel's close codes are counted; ``seconds`` (the time
        since the 101) goes to the duration histogram.  ``series`` is what
        :meth:`tunnel_opened` returned (without it, only a tunnel kept for the periodic flush
        is found).  Call it once per tunnel."""
        live = self._live.pop(tunnel, None)
        if live is None:
            if series is None:
                return
            live = series
        self._flush_one(tunnel, live)
        found = live if isinstance(live, TunnelSeries) else live.series
        self._q[found.gauge] -= 1
        labels = found.labels
        if not labels:
            return
        if seconds is not None:
            if found.duration < 0:
                found.duration = self.cell(TUNNEL_SECONDS, labels)
            self._observe_at(found.duration, TUNNEL_SECONDS.buckets, seconds)
        if tunnel.websocket:
            for side, code in (
                ("client", tunnel.close_code_client),
                ("upstream", tunnel.close_code_upstream),
            ):
                self.add(CLOSE_CODES, (*labels, side, close_code_label(code)))

    def upstream_failed(self, upstream: str, peer: str, kind: str) -> None:
        """A try counted as failed (``error``, ``timeout``, ``invalid_header``, ``http_5xx``)."""
        self.add(UPSTREAM_FAILURES, (upstream, peer, kind))

    def flush(self) -> None:
        """Add what live tunnels relayed since the last flush."""
        first: list[tuple[TunnelCounts, _Live]] = []
        for tunnel, live in self._live.items():
            added = self._flush_one(tunnel, live)
            if added is not None:
                first.append((tunnel, added))
        self._live.update(first)

    def start_flush(
        self,
        loop: asyncio.AbstractEventLoop,
        config: Callable[[], Config],
        interval: float = FLUSH_INTERVAL,
    ) -> None:
        """Every ``interval`` seconds, :meth:`flush` if the current ``config()`` has a
        ``prometheus`` location (a timer, no task; :meth:`stop_flush` cancels it)."""

        def tick() -> None:
            if self._flushing():
                self.flush()
            self._flusher = loop.call_later(interval, tick)

        self.stop_flush()
        self._config = config
        self._flusher = loop.call_later(interval, tick)

    def stop_flush(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None

    def _flushing(self) -> bool:
        """Whether open tunnels are flushed now: the configuration :meth:`start_flush` reads
        has a ``prometheus`` location, or there is none."""
        if self._config is None:
            return True
        current = self._config()
        if current is not self._checked:
            self._checked, self._enabled = current, prometheus_enabled(current)
        return self._enabled

    def _flush_one(self, tunnel: TunnelCounts, live: TunnelSeries | _Live) -> _Live | None:
        """Add what ``tunnel`` relayed since ``live`` was taken; returns the record that
        replaces a bare series once something was added."""
        if isinstance(live, TunnelSeries):
            series, seen = live, _NOTHING_SEEN
        else:
            series, seen = live.series, live.seen
        if series.sizes is not None:
            self._add_sizes(tunnel, series.sizes)
        now = (
            tunnel.bytes_to_upstream,
            tunnel.bytes_to_client,
            tunnel.messages_to_upstream,
            tunnel.messages_to_client,
        )
        if now == seen:
            return None
        q = self._q
        for cell, n, before in zip(series.cells, now, seen, strict=True):
            if n != before:
                q[cell] += n - before
        if isinstance(live, _Live):
            live.seen = now
            return None
        return _Live(series, now)

    def _add_sizes(self, tunnel: TunnelCounts, cells: tuple[int, int]) -> None:
        """Add the message-size histograms ``tunnel`` kept since the last time."""
        taken = tunnel.take_sizes()
        if taken is None:
            return
        q, d = self._q, self._d
        for first, counts in zip(cells, taken, strict=True):
            if not counts[-1] and not counts[0]:
                continue  # no message (a message of size 0 is in the first bucket)
            for i, n in enumerate(counts[:-1]):
                if n:
                    q[first + i] += n
            d[first + len(counts) - 1] += counts[-1]

    def _create(self, metric: Metric, values: tuple[str, ...]) -> int:
        if self.slot is None:
            raise RuntimeError("MetricsStore.attach() was not called in this process")
        key = _series_key(metric, values)
        adopted = self._adopted.get(key)
        if adopted is not None:
            return adopted
        cells = metric.cells
        record = _ENTRY.size + len(key)
        start = self._base + self._dir_end
        first_cell = (self._base + self.region_size) // 8 - self._cells_used - cells
        if len(key) > 0xFFFF or start + record > first_cell * 8:
            # Full: count the loss; the series records into the scratch page nobody reads.
            count, dropped = self._header(self.slot)
            _HEADER.pack_into(self._mm, self._base, count, dropped + 1)
            return self._scratch
        self._q[first_cell : first_cell + cells] = memoryview(bytes(8 * cells)).cast("q")
        _ENTRY.pack_into(
            self._mm, start, len(key), metric.kind, cells, first_cell - self._base // 8
        )
        self._mm[start + _ENTRY.size : start + record] = key
        self._dir_end += record
        self._cells_used += cells
        # Published: readers parse up to this count.
        count, dropped = self._header(self.slot)
        _HEADER.pack_into(self._mm, self._base, count + 1, dropped)
        return first_cell

    # -- reading (any process) ------------------------------------------------------------------
    def _header(self, slot: int) -> tuple[int, int]:
        count, dropped = _HEADER.unpack_from(self._mm, slot * self.region_size)
        return int(count), int(dropped)

    def _parse(self, slot: int) -> tuple[list[_Entry], int]:
        """The published entries of ``slot`` and where its directory ends (cached: published
        entries never change)."""
        base = slot * self.region_size
        count = self._header(slot)[0]
        parsed, offset, entries = self._seen.get(slot, (0, _HEADER_SIZE, []))
        mm = self._mm
        while parsed < count:
            klen, kind, cells, first = _ENTRY.unpack_from(mm, base + offset)
            start = base + offset + _ENTRY.size
            entries.append(_Entry(bytes(mm[start : start + klen]), kind, cells, base // 8 + first))
            offset += _ENTRY.size + klen
            parsed += 1
        self._seen[slot] = (parsed, offset, entries)
        return entries, offset

    def collect(self) -> dict[bytes, tuple[int, list[float]]]:
        """Every series summed over all slots: key -> (kind, values).  Histogram values are
        the per-bucket counts (``+Inf`` last) followed by the sum."""
        totals: dict[bytes, tuple[int, list[float]]] = {}
        q, d = self._q, self._d
        for slot in range(self.max_slots):
            if self._header(slot)[0] == 0:
                continue
            for e in self._parse(slot)[0]:
                if e.kind == HISTOGRAM:
                    nums: list[float] = [*q[e.first : e.first + e.cells - 1]]
                    nums.append(d[e.first + e.cells - 1])
                else:
                    nums = [q[e.first]]
                hit = totals.get(e.key)
                if hit is None:
                    totals[e.key] = (e.kind, nums)
                elif hit[0] == e.kind and len(hit[1]) == len(nums):
                    hit[1][:] = [a + b for a, b in zip(hit[1], nums, strict=True)]
        return totals

    def dropped(self) -> int:
        """Series dropped by full regions, over all slots."""
        return sum(self._header(slot)[1] for slot in range(self.max_slots))

    def exposition(self) -> bytes:
        """The text format 0.0.4 page: ``# HELP``, ``# TYPE`` and the samples of every metric
        (families with no series yet are listed with no samples)."""
        families: dict[str, list[tuple[str, int, list[float]]]] = {}
        for key, (kind, values) in self.collect().items():
            name, _, body = key.decode().partition("\0")
            families.setdefault(name, []).append((body, kind, values))
        families.setdefault(DROPPED.name, []).append(("", COUNTER, [float(self.dropped())]))
        names = [m.name for m in METRICS] + sorted(set(families) - set(_BY_NAME))
        return "".join(_family(n, sorted(families.get(n, []))) for n in names).encode()


def _family(name: str, series: list[tuple[str, int, list[float]]]) -> str:
    metric = _BY_NAME.get(name)
    kind = metric.kind if metric else (series[0][1] if series else COUNTER)
    lines = [
        f"# HELP {name} {metric.help if metric else name}",
        f"# TYPE {name} {_TYPE_NAMES.get(kind, 'untyped')}",
    ]
    for body, skind, values in series:
        if skind == HISTOGRAM:
            lines.extend(_histogram(name, body, metric, values))
        else:
            labels = f"{{{body}}}" if body else ""
            lines.append(f"{name}{labels} {_number(values[0])}")
    return "\n".join(lines) + "\n"


def _histogram(name: str, body: str, metric: Metric | None, values: list[float]) -> Iterator[str]:
    buckets = metric.buckets if metric else ()
    counts, total = values[:-1], values[-1]
    if len(counts) != len(buckets) + 1:
        return
    sep = "," if body else ""
    cumulative = 0.0
    for le, n in zip((*(_number(b) for b in buckets), "+Inf"), counts, strict=True):
        cumulative += n
        yield f'{name}_bucket{{{body}{sep}le="{le}"}} {_number(cumulative)}'
    labels = f"{{{body}}}" if body else ""
    yield f"{name}_sum{labels} {total!r}"
    yield f"{name}_count{labels} {_number(cumulative)}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
