"""Active health checks, the asyncio part: one probing task per checked peer.

For every ``upstream`` with a ``health_check``, each peer (primaries and backups; ``down`` ones
are skipped, they are out of rotation anyway) is probed as soon as the checks start and then
every ``interval``, on the gateway's loop.  A probe costs one connection (TCP, or a Unix socket
for ``server unix:/path``), is bounded as a whole by ``timeout``, and its result goes to a
:class:`~wsgate.upstream.health.HealthState` whose transitions set ``Peer.healthy``.

Log lines follow nginx Plus (``ngx_http_upstream_hc_module``); the check has no ``match``
block, so its name is always ``""``::

    [error] connect() failed (111: Connection refused) while connecting to upstream,
            health check "" of peer 127.0.0.1:8081 in upstream "u"
    [warn]  peer is unhealthy while connecting to upstream, health check "" of peer
            127.0.0.1:8081 in upstream "u"
    [notice] peer is healthy while checking status code, health check "" of peer
            127.0.0.1:8081 in upstream "u"

Probes use TLS when every location that proxies to the upstream does so with ``proxy_pass
https://``, with the ``proxy_ssl_*`` settings of the first such location (nginx Plus probes with
the settings of the location holding ``health_check``; wsgate's ``health_check`` sits in the
``upstream`` block).  An upstream used over both ``http://`` and ``https://`` is probed in
plain TCP.  A failed handshake is a failed probe, logged as nginx logs it for a request.

Unlike nginx Plus, the cause of a failed probe is logged at ``error`` only while the peer is
still in rotation; once it is unhealthy, the repeated causes go to ``info`` so a server that
stays down does not fill the log.

The gateway starts a :class:`HealthChecks` for each configuration (at start and after every
reload, because a reload rebuilds the peer groups) and stops it on reload and exit; stopping
cancels every task, and a cancelled probe aborts its connection, so nothing leaks.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable

from wsgate.config.model import Config, HealthCheck, Location, ProxyPass, SslUpstream
from wsgate.errors import HttpError
from wsgate.http.response import ResponseHead, ResponseParser
from wsgate.observability.logs import ErrorLogger
from wsgate.proxy.connect import HandshakeFailed, UpstreamOpen
from wsgate.proxy.endpoint import Endpoint
from wsgate.upstream.health import (
    HealthState,
    close_frame,
    probe_request,
    response_problem,
    websocket_key,
)
from wsgate.upstream.roundrobin import Peer, PeerGroup
from wsgate.upstream.tls import UpstreamTls, ssl_name

__all__ = ["HealthChecks", "PeerChecker", "Probe", "probe_tls", "upstream_target"]

#: The largest response head a probe reads (nginx's default ``proxy_buffer_size``).
MAX_HEAD = 4096

_CONNECTING = "connecting to upstream"
_READING = "reading response header from upstream"
_TIMED_OUT = "upstream timed out (110: Connection timed out) while "


def upstream_target(name: str) -> ProxyPass:
    """A ``proxy_pass http://NAME`` for upstream ``name``: what :meth:`Gateway.peer_group`
    takes to find (or build) that upstream's shared :class:`PeerGroup`."""
    return ProxyPass(
        url=f"http://{name}", scheme="http", host=name, port=80, uri=None, upstream=name
    )


class Probe:
    """The outcome of one probe: ``phase`` is ``None`` when it passed, else the tail of
    "peer is unhealthy while ..."; ``cause`` is an nginx-style error message, if any."""

    __slots__ = ("phase", "cause")

    def __init__(self, phase: str | None = None, cause: str | None = None) -> None:
        self.phase = phase
        self.cause = cause

    @property
    def ok(self) -> bool:
        return self.phase is None


class PeerChecker:
    """Probes one peer every ``interval`` and keeps ``peer.healthy`` up to date."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        upstream: str,
        check: HealthCheck,
        peer: Peer,
        error_log: ErrorLogger,
        tls: UpstreamTls | None = None,
    ) -> None:
        self.tls = tls
        self.tls_name = "" if tls is None else ssl_name(tls.settings, upstream, lambda _: "")
        self.loop = loop
        self.upstream = upstream
        self.check = check
        self.peer = peer
        self.error_log = error_log
        self.state = HealthState(check.fails, check.passes, clock=loop.time)

    def _where(self) -> str:
        return f'health check "" of peer {self.peer.address} in upstream "{self.upstream}"'

    async def run(self) -> None:
        """Probe now, then every ``interval`` (measured start to start; a probe that overruns
        the interval is followed by the next one at once), until cancelled."""
        interval = self.check.interval
        due = self.loop.time()
        while True:
            result = await self.probe()
            self.account(result)
            due += interval
            now = self.loop.time()
            if due < now:
                due = now
            await asyncio.sleep(due - now)

    def account(self, result: Probe) -> None:
        """Feed one result to the state machine; log the cause and any transition."""
        was_healthy = self.state.healthy
        if result.cause is not None:
            self.error_log.log(
                "error" if was_healthy else "info", f"{result.cause}, {self._where()}"
            )
        changed = self.state.record(result.ok)
        if changed is None:
            return
        self.peer.healthy = changed
        if changed:
            phase = (
                "checking websocket handshake"
                if self.check.kind == "websocket"
                else "checking status code"
            )
            self.error_log.log("notice", f"peer is healthy while {phase}, {self._where()}")
        else:
            self.error_log.log("warn", f"peer is unhealthy while {result.phase}, {self._where()}")

    async def probe(self) -> Probe:
        """One connection, one request, one response head (and, for ``type=websocket``, a
        close frame), all within ``timeout``."""
        loop = self.loop
        deadline = loop.time() + self.check.timeout
        ep: Endpoint | None = None
        clean = False
        opening = UpstreamOpen(loop, self.peer, self.tls, self.tls_name)
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    ep = await opening.run()
            except TimeoutError:
                ep = opening.ep
                return Probe(opening.phase, _TIMED_OUT + opening.phase)
            except HandshakeFailed as exc:
                ep = opening.ep
                phase = opening.phase
                return Probe(phase, f"{exc.args[0]} while {phase}")
            except OSError as exc:
                code = exc.errno or errno.ECONNREFUSED
                reason = os.strerror(code)  # asyncio's strerror is "Connect call failed (...)"
                return Probe(
                    _CONNECTING, f"connect() failed ({code}: {reason}) while {_CONNECTING}"
                )
            key = websocket_key(os.urandom(16)) if self.check.kind == "websocket" else None
            ep.write(probe_request(self.check, self.upstream, key))
            try:
                async with asyncio.timeout_at(deadline):
                    head = await _read_head(ep)
            except TimeoutError:
                return Probe(_READING, _TIMED_OUT + _READING)
            except HttpError as exc:
                return Probe(_READING, exc.log)
            problem = response_problem(self.check, head.status, head.headers, key)
            if problem is not None:
                return Probe(problem)
            if key is not None and head.status == 101:
                clean = await _close_websocket(ep, deadline)
            else:
                clean = True
            return Probe()
        finally:
            if ep is not None:
                if clean:
                    ep.close()
                else:
                    ep.abort()


async def _read_head(ep: Endpoint) -> ResponseHead:
    """The response head, or :class:`HttpError` with nginx's message (the parser's)."""
    parser = ResponseParser(head_request=False, max_head=MAX_HEAD)
    while True:
        data = await ep.read()
        events = parser.feed(data) if data else parser.feed_eof()
        for event in events:
            if isinstance(event, ResponseHead):
                return event
        if not data:  # feed_eof raises before a head; this is belt and braces
            raise HttpError(502, f"upstream prematurely closed connection while {_READING}")


async def _close_websocket(ep: Endpoint, deadline: float) -> bool:
    """Send close 1000 and wait (until ``deadline``) for the server to close the TCP
    connection, as RFC 6455 §7.1.1 has the server do first; True when it did.  Whatever the
    server sends meanwhile (its echoed close frame, messages) is discarded."""
    ep.write(close_frame(os.urandom(4)))
    try:
        async with asyncio.timeout_at(deadline):
            while await ep.read():
                pass
    except TimeoutError:
        return False
    return True


def _locations(locations: tuple[Location, ...]) -> list[Location]:
    out: list[Location] = []
    for loc in locations:
        out.append(loc)
        out.extend(_locations(loc.locations))
    return out


def probe_tls(config: Config, upstream: str) -> SslUpstream | None:
    """The ``proxy_ssl_*`` settings to probe ``upstream`` with, or None for plain TCP: TLS only
    when every ``proxy_pass`` to it says ``https://`` (the first one's settings are used)."""
    found: SslUpstream | None = None
    for server in config.http.servers:
        for settings in (
            server.settings,
            *(loc.settings for loc in _locations(server.every_location)),
        ):
            pp = settings.proxy_pass
            if pp is None or pp.upstream != upstream:
                continue
            if pp.scheme != "https":
                return None
            if found is None:
                found = settings.proxy_ssl
    return found


class HealthChecks:
    """The checkers of one configuration: :meth:`start` them, :meth:`stop` them.

    ``registry``, when given, also holds every task while it runs (the gateway passes its
    ``tasks`` set, which the command line cancels and awaits at exit).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        error_log: ErrorLogger,
        registry: set[asyncio.Task[None]] | None = None,
    ) -> None:
        self.loop = loop
        self.error_log = error_log
        self.registry = registry
        self.checkers: list[PeerChecker] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, config: Config, group_for: Callable[[str], PeerGroup]) -> None:
        """Start a checker for every peer of every upstream with a ``health_check``;
        ``group_for(name)`` returns the upstream's live :class:`PeerGroup`."""
        for name, upstream in config.http.upstreams.items():
            check = upstream.health_check
            if check is None:
                continue
            group = group_for(name)
            settings = probe_tls(config, name)
            tls = None
            if settings is not None:
                try:
                    tls = UpstreamTls(settings)
                except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                    self.error_log.log("error", f"health check of upstream {name!r}: {exc}")
            for peer in (*group.peers, *group.backups):
                if peer.down:
                    continue
                checker = PeerChecker(self.loop, name, check, peer, self.error_log, tls)
                self.checkers.append(checker)
                self._spawn(checker)

    def _spawn(self, checker: PeerChecker) -> None:
        task = self.loop.create_task(checker.run())
        self.tasks.add(task)
        if self.registry is not None:
            self.registry.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            if self.registry is not None:
                self.registry.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.error_log.log("alert", f"health check failed: {t.exception()!r}")

        task.add_done_callback(done)

    def stop(self) -> None:
        """Cancel every probe and timer; a probe in flight aborts its connection."""
        for task in list(self.tasks):
            task.cancel()
        self.checkers = []

    async def wait_stopped(self) -> None:
        """Wait until every cancelled task has finished (tests use this to count fds)."""
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
