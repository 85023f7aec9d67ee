"""The running instance: listening sockets, open connections, peer groups, signals, reload.

This is the thin asyncio layer around the pure modules.  One process serves everything
(``worker_processes`` is accepted and recorded; the process-model issue adds workers).

Listening sockets (opened by :mod:`wsgate.server.listening`) follow nginx's
``ngx_http_optimize_servers``: on a port where a wildcard address (``0.0.0.0``/``[::]``) is
listened on, specific addresses of the same family are served by the wildcard socket (unless
their ``listen`` has socket options), and each connection's local address picks the
candidate servers.  ``listen ADDR:0`` (a wsgate extension for tests) binds an ephemeral
port; the real address is logged at ``notice``: ``listening on 127.0.0.1:40123
(FILE:LINE)``.  A reload keeps the Nth ``ADDR:0`` socket as the new configuration's Nth one,
so its port does not change.

Signals (https://nginx.org/en/docs/control.html): TERM/INT stop at once; QUIT stops
accepting, closes idle keep-alive connections, lets requests and tunnels finish (up to
``worker_shutdown_timeout``, then closes them); HUP re-reads the configuration and keeps every
open connection on the old one (a bad configuration is logged and the old one stays); USR1
reopens the log files.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import os
import random
import resource
import signal
import socket
from collections.abc import Callable
from typing import Any

from wsgate.config.model import Config, ProxyPass, Upstream
from wsgate.config.model import Resolver as ResolverConf
from wsgate.errors import ConfigError
from wsgate.limits import LimitRegistry
from wsgate.observability.logs import (
    AccessLogs,
    ErrorLogger,
    access_log_paths,
    location_error_logs,
)
from wsgate.observability.metrics import MetricsStore
from wsgate.observability.status import (
    ACCEPTS,
    ACTIVE,
    HANDLED,
    ConnectionCounters,
    StatusCounters,
)
from wsgate.proxy import fdrelay
from wsgate.proxy.context import UpstreamCaches
from wsgate.proxy.endpoint import Endpoint
from wsgate.proxy.front import FrontConnection
from wsgate.proxy.tunnel import Tunnel
from wsgate.resolver import Resolver
from wsgate.server.control import Control
from wsgate.server.health import HealthChecks, upstream_target
from wsgate.server.listening import (
    BindKey,
    ListenGroup,
    addr_text,
    bind_keys,
    close_dropped,
    close_group,
    delete_dropped_unix_sockets,
    dropped_sockets,
    open_groups,
    remove_unix_sockets,
)
from wsgate.server.resolved import SharedResolved
from wsgate.server.resolving import UpstreamResolving
from wsgate.upstream.methods import Balancer, make_group
from wsgate.upstream.roundrobin import Peer, PeerGroup, peers_from_config

__all__ = [
    "BindKey",
    "Gateway",
    "ListenGroup",
    "announce",
    "bind_keys",
    "check_error_logs",
    "delete_dropped_unix_sockets",
    "dropped_sockets",
    "open_access_logs",
    "open_groups",
    "pid_write",
    "remove_unix_sockets",
]

#: Connections taken from a listening socket per readiness event with ``multi_accept on``
#: (wsgate's default), at most: the rest are taken on the next turn of the loop, after the ones
#: accepted have been started.  ``multi_accept off`` (nginx's default) takes one.
ACCEPT_BATCH = 32

#: Seconds a worker holding more connections than another worker (by more than an eighth, and
#: two) leaves a listening socket unpolled, once, so that the other takes what waits: every
#: worker is woken for each new connection, and the one already running (the busy one) would
#: take it first (the benchmark's 100 tunnels went 89/11 to two workers with batches of 32,
#: 100/0 with one accept per event; 51/53 and 49/55 with this check).  After the pause it
#: accepts whatever is still waiting, so a stalled peer delays a connection by this much at
#: most.  (nginx gets the same spreading from EPOLLEXCLUSIVE, which wakes a worker blocked in
#: epoll_wait, i.e. an idle one; its ``accept_mutex`` is off by default.)
ACCEPT_DEFER = 0.002

#: Descriptors kept free beyond those counted (see :meth:`Gateway._fd_room`).
FD_SPARE = 1

#: After ``accept4()`` failed with EMFILE/ENFILE, how long accepting stays off unless a
#: connection closes first (nginx re-arms the listener after ``accept_mutex_delay``, 500 ms).
ACCEPT_RETRY_DELAY = 0.5


class Gateway:
    """Everything one running wsgate holds."""

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        error_log: ErrorLogger,
        access_logs: AccessLogs | None = None,
        reload_config: Callable[[], Config] | None = None,
        announce: bool = True,
    ) -> None:
        self.config = config
        self.loop = loop
        #: ``loop.time``, bound once: every tunnel's clock (one each: 64 bytes per tunnel).
        self.clock = loop.time
        self.error_log = error_log
        self.access_logs = access_logs or AccessLogs()
        self.access_logs.error_log = error_log
        self.reload_config = reload_config
        #: Called with a new configuration before it is applied (``master_process off``:
        #: the shared zones for it).
        self.on_reload: Callable[[Config], None] | None = None
        #: Log ``listening on`` for sockets started here (the master logs them instead).
        self.announce = announce
        #: No room for another client and the upstream connection it may open
        #: (``worker_connections``, or the descriptors ``worker_rlimit_nofile`` leaves): the
        #: listening sockets are not polled until a connection ends (the socket stays open, so
        #: new clients wait in its backlog or are taken by another worker).
        self.accept_paused = False
        #: Sockets accepted whose protocol has not started yet (they hold a descriptor).
        self.accepting = 0
        #: Upstream connections outside tunnels: open (idle in a keep-alive pool too) or
        #: being opened; a tunnel's upstream connection is counted by :attr:`tunnel_count`.
        self.upstreams = 0
        #: Descriptors this process holds that are not connections (logs, the event loop's,
        #: the listening sockets), measured when serving starts.
        self.fd_base = 0
        self._fds_measured = False
        #: The soft ``RLIMIT_NOFILE``, read once per :meth:`serve` and at each pause, not per
        #: connection (a ``prlimit64`` system call each): only ``worker_rlimit_nofile``, at
        #: the worker's start, changes it (nginx reads it once, at start, too).
        self._nofile: int | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self.groups: dict[BindKey, ListenGroup] = {}
        self.peer_groups: dict[object, PeerGroup] = {}
        self.connections: set[FrontConnection] = set()
        #: Tasks a fast stop cancels: connections' and accepted sockets' being started.
        self.tasks: set[asyncio.Task[Any]] = set()
        #: Open tunnels (each holds an upstream connection: ``worker_connections``), counted;
        #: :attr:`tunnels` finds them through their connections.
        self.tunnel_count = 0
        self.counter = 0
        #: ``stub_status`` counters: here, not on the configuration, so they survive reloads.
        self.stub_status: StatusCounters = ConnectionCounters()
        #: With workers sharing listening sockets: this worker's client connections and the
        #: fewest of any other worker's (:meth:`wsgate.shm.SharedState.accept_share`).
        self.accept_share: Callable[[], tuple[int, int] | None] | None = None
        #: ``prometheus`` metrics (one slot; a master passes its shared store per worker).
        self.metrics = MetricsStore.single_process()
        self.metrics.start_flush(loop, lambda: self.config)
        #: ``limit_conn``/``limit_req`` zone state, kept across reloads by zone name.
        self.limits = LimitRegistry()
        #: Retiring or stopping: not accepting, ending when the last connection does.
        self.stopping = False
        #: QUIT received (tunnels get their 1001 once ``shutdown_grace`` is over; a retiring
        #: worker may get it later).
        self.quitting = False
        #: Loop time of the QUIT (``worker_shutdown_timeout`` counts from it).
        self.quit_at: float | None = None
        #: The end of ``shutdown_grace`` to come (None: none pending).
        self._grace: asyncio.TimerHandle | None = None
        self.stopped: asyncio.Future[None] = loop.create_future()
        self.exit_code = 0
        #: Idle keep-alive upstream connections and upstream TLS contexts, closed at the end.
        self.upstream_caches = UpstreamCaches(loop)
        self.upstream_caches.proxy_caches.configure(config, error_log)
        self.stopped.add_done_callback(lambda _: self.upstream_caches.close())
        #: ``resolver`` clients (with their caches) of the current configuration.
        self.resolvers: dict[ResolverConf, Resolver] = {}
        self._resolvers_for: Config | None = None
        #: ``server ... resolve`` addresses shared by every worker (None: this process's).
        self.resolved_store: SharedResolved | None = None
        #: ``server ... resolve``: the addresses found, re-resolved while running.
        self.resolving = self._new_resolving()
        #: The address version each group with ``resolve`` servers was built from.
        self._built: dict[object, tuple[int]] = {}
        #: Active ``health_check`` probing for the current configuration (None until serve).
        self.health: HealthChecks | None = None
        #: Drains and rebalancing shared with the other workers (:mod:`wsgate.server.control`;
        #: None without shared memory: ``server ... drain`` then only keeps new connections off).
        self.control: Control | None = None

    # -- peers ----------------------------------------------------------------------------------
    def peer_group(self, pp: ProxyPass) -> Balancer:
        """The balancing state for a ``proxy_pass`` target, shared by all requests using it:
        the ``upstream`` block's method, or round robin for an implicit upstream.  A group
        with ``server ... resolve`` is built anew when the shared addresses changed (its
        peers whose address stayed keep their state; open tunnels keep the old group)."""
        key: object = ("upstream", pp.upstream) if pp.upstream else ("implicit", pp.url)
        group = self.peer_groups.get(key)
        built = self._built.get(key)
        if built is not None and group is not None and built[0] != self.resolving.version():
            old = group
            group = None
        else:
            old = None
        if not isinstance(group, Balancer):
            up = None
            if pp.upstream is not None:
                up = self.config.http.upstreams[pp.upstream]
                servers, name = up.servers, up.name
            else:
                servers = pp.servers
                name = pp.host if not pp.port_given else f"{pp.host}:{pp.port}"
            peers = peers_from_config(servers)
            if up is not None and any(s.resolve for s in up.servers):
                self._built[key] = (self.resolving.version(),)
                servers = tuple(self.resolving.servers(up))
                peers = _keep_state(peers_from_config(servers), old)
            # A group whose names resolved to nothing (yet) has no peers: "no live upstreams".
            group = make_group(name, peers, up if peers else None, clock=self.loop.time)
            self.peer_groups[key] = group
            if self.control is not None:
                if up is not None and old is not None:
                    self.control.grown(up, old, group)
                else:
                    self.control.apply(group)
        return group

    def resolver(self, conf: ResolverConf) -> Resolver:
        """The worker's client for the ``resolver`` directive ``conf``: one cache per
        directive per worker, as nginx keeps one ``ngx_resolver_t`` per directive in each
        worker; a reload's new configuration starts new ones."""
        found = self.resolvers.get(conf)
        if found is None:
            if self._resolvers_for is not self.config:
                # Queries in flight finish for the requests of the old configuration.
                self.resolvers.clear()
                self._resolvers_for = self.config
            found = self.resolvers[conf] = Resolver(conf, self.loop, self.error_log.log)
        return found

    # -- listening ------------------------------------------------------------------------------
    def bind(self, config: Config) -> dict[BindKey, ListenGroup]:
        """Open the sockets ``config`` needs, reusing the ones already open; raise on failure."""
        return open_groups(config, self.groups)

    async def serve(self, groups: dict[BindKey, ListenGroup]) -> None:
        """Start accepting on every group that is not yet accepting; close dropped ones."""
        # The compiled relay's epoll descriptor, before the descriptors are counted.
        fdrelay.prepare(self.loop)
        self.restart_health()
        if self.control is not None:
            self.control.start()
        self._fds_measured = False  # measured at the first accept, with the loop running
        self._nofile = None
        for group in groups.values():
            if group.acceptor is not None:
                # A socket kept across a reload: new connections get the new servers and
                # the new TLS contexts; open ones keep what they started with.
                group.acceptor.group = group
            if group.server is None:
                assert group.sock is not None
                group.acceptor = _Acceptor(self, group)
                if not self.accept_paused:
                    group.server = await self._start_server(group)
                if self.announce:
                    announce(self.error_log, group)
        for key, old in self.groups.items():
            if key not in groups or groups[key].sock is not old.sock:
                close_group(old)
            else:
                close_dropped(old, groups[key])
        self.groups = groups

    async def _start_server(self, group: ListenGroup) -> _Listener:
        """Accept on the group's socket.  Pausing stops polling it and leaves the socket
        itself open and listening (clients wait in its backlog)."""
        assert group.sock is not None and group.acceptor is not None
        listener = _Listener(self, group.sock, group.acceptor)
        listener.start()
        return listener

    def _load(self) -> int:
        """Connections open now that count against ``worker_connections``: client
        connections, and upstream connections (being opened, in use, idle in a keep-alive
        pool, or held by a tunnel): nginx counts every connection."""
        return len(self.connections) + self.accepting + self.upstreams + self.tunnel_count

    def room(self) -> bool:
        """Whether one more client fits, with the upstream connection it may open.

        Each client is counted twice (itself and the upstream connection it may hold, now or
        later) unless more upstream connections than clients are open (idle keep-alive ones),
        then those are counted; and the total must fit both ``worker_connections`` and the
        descriptors ``RLIMIT_NOFILE`` (``worker_rlimit_nofile``) leaves for connections."""
        if not self._fds_measured:
            self._measure_fds()
        clients = len(self.connections) + self.accepting
        need = clients + max(clients, self.upstreams + self.tunnel_count) + 2
        return need <= self.config.worker_connections and need <= self._fd_room()

    def upstream_room(self) -> int:
        """How many idle kept upstream connections must close before one more upstream
        connection fits (0: it fits); the limit holds at every moment, not only at accept."""
        over = max(
            self._load() + 1 - self.config.worker_connections,
            self._load() + 1 - self._fd_room(),
        )
        return max(over, 0)

    def _fd_room(self) -> int:
        soft = self._nofile
        if soft is None:
            soft = self._nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            return 1 << 62
        # One spare: the runtime opens a descriptor or two of its own lazily, after the
        # first measurement (a /dev/null on the first request); a pause measures again.
        return soft - self.fd_base - FD_SPARE

    def _measure_fds(self) -> None:
        """:attr:`fd_base`, from the descriptors open now (Linux ``/proc``; elsewhere an
        ``accept4()`` EMFILE still stops accepting); never lowered while serving."""
        self._nofile = None  # read again
        try:
            open_fds = len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor
        except OSError:
            return
        self._fds_measured = True
        self.fd_base = max(self.fd_base, open_fds - self._load())

    def _pause_accepting(self, reason: str | None = None) -> None:
        """Stop polling the listening sockets.  With no ``reason``, the limit that stopped it
        (``worker_connections`` or the descriptors) is logged; a given one was logged already."""
        self.accept_paused = True
        self._measure_fds()
        if reason is None:
            limit = self.config.worker_connections
            if self._fd_room() < limit:
                soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
                reason = (
                    f"{soft} open files (worker_rlimit_nofile) are not enough "
                    f"({errno.EMFILE}: {os.strerror(errno.EMFILE)})"
                )
            else:
                reason = f"{limit} worker_connections are not enough"
            self.error_log.log("warn", f"{reason}, not accepting new connections until some close")
        for group in self.groups.values():
            if group.server is not None:
                group.server.close()
                group.server = None

    async def _resume_accepting(self) -> None:
        for group in self.groups.values():
            if group.server is None and group.sock is not None and group.acceptor is not None:
                group.server = await self._start_server(group)

    def _maybe_resume(self) -> None:
        """A connection ended: accept again if a client (and its upstream) now fits."""
        if self.accept_paused and not self.stopping and self.room():
            self.accept_paused = False
            if self._retry_timer is not None:
                self._retry_timer.cancel()
                self._retry_timer = None
            self.loop.create_task(self._resume_accepting())

    def accept_failed(self, exc: OSError) -> None:
        """``accept4()`` failed: as ``ngx_event_accept``, EMFILE/ENFILE is logged at ``crit``
        and accepting stops on every listener until a connection closes or
        ``ACCEPT_RETRY_DELAY`` passes; ECONNABORTED is the client's (``error``)."""
        code = exc.errno or errno.EIO
        text = f"accept4() failed ({code}: {os.strerror(code)})"
        if code in (errno.EMFILE, errno.ENFILE):
            self.error_log.log("crit", text)
            if not self.accept_paused:
                self._pause_accepting(text)
            if self._retry_timer is None:
                self._retry_timer = self.loop.call_later(ACCEPT_RETRY_DELAY, self._retry_accept)
        elif code == errno.ECONNABORTED:
            self.error_log.log("error", text)
        else:
            self.error_log.log("alert", text)

    def _retry_accept(self) -> None:
        self._retry_timer = None
        self._maybe_resume()
        if self.accept_paused and not self.stopping and not self.room():
            self._pause_accepting()  # now held by a limit: say which

    def upstream_closed(self) -> None:
        """An upstream connection outside a tunnel closed (see :attr:`upstreams`)."""
        self.upstreams -= 1
        if self.accept_paused:
            self._maybe_resume()

    @property
    def tunnels(self) -> list[Tunnel]:
        """The open tunnels: those of connections whose tunnel's request has not ended (not a
        set of their own, which would cost each tunnel an entry)."""
        tunnels = [
            t for c in self.connections if (t := c.tunnel) is not None and c.tunnel_end is not None
        ]
        for c in self.connections:
            if c.h2 is not None:  # RFC 8441 tunnels on HTTP/2 streams
                tunnels += c.h2.tunnels()
        return tunnels

    def add_tunnel(self) -> None:
        """A tunnel opened: it holds an upstream connection too (``worker_connections``)."""
        self.tunnel_count += 1

    def tunnel_closed(self) -> None:
        """An open tunnel ended (or a fast stop abandoned it)."""
        self.tunnel_count -= 1
        if self.stopping and self._drained():
            self._finish()

    def upstream_opening(self) -> None:
        """An upstream connection is being opened: counted from now, as nginx counts the
        socket being connected (``worker_connections``, a descriptor)."""
        self.upstreams += 1

    def accepted(self, ep: Endpoint, group: ListenGroup) -> None:
        """A new client connection (the budget for it was checked before ``accept()``)."""
        self.counter += 1
        stats = self.stub_status
        stats.increment(ACCEPTS)
        stats.increment(HANDLED)  # no resource limit can refuse a connection yet
        stats.increment(ACTIVE)
        conn = FrontConnection(self, ep, group, self.counter)
        self.connections.add(conn)
        task = self.loop.create_task(conn.run())
        self.tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                self.error_log.log("alert", f"unexpected error: {exc!r}", conn.number)
                if conn.tunnel is not None:  # it may not have started: end it here
                    conn.tunnel.abort()
                    conn.abandon_tunnel()
                ep.abort()
            if not conn.task_ended():
                self.connection_closed(conn)

        task.add_done_callback(done)

    def connection_closed(self, conn: FrontConnection) -> None:
        """A client connection has ended: its task, or the tunnel it became, which outlives
        the task (a graceful stop waits for it; it counts against ``worker_connections``
        until then).  Called once per connection."""
        self.connections.discard(conn)
        self.stub_status.decrement(ACTIVE)
        if self.stopping and self._drained():
            self._finish()
        else:
            self._maybe_resume()

    def _drained(self) -> bool:
        """No connection left: none open, none accepted whose protocol has yet to start (a
        retiring worker must serve those too: the kernel gave them to it), and no tunnel: an
        RFC 8441 tunnel learns that its HTTP/2 connection ended a moment after the connection
        itself, and its end (the access-log line, the counts) must not be cut off."""
        return not self.connections and not self.accepting and not self.tunnel_count

    def accept_settled(self, started: bool) -> None:
        """An accepted socket has its protocol (``started``), or never will (a fast stop)."""
        self.accepting -= 1
        if self.stopping:
            if self._drained():
                self._finish()
        elif not started:
            self._maybe_resume()

    # -- active health checks -------------------------------------------------------------------
    def restart_health(self) -> None:
        """(Re)start the ``health_check`` probes for the current configuration and its peer
        groups (a reload rebuilds the groups, so the old checkers must go), first probes now."""
        self.stop_health()
        old = self.resolving
        old.stop()
        self.resolving = self._new_resolving()
        self.resolving.found = old.found  # preresolve: a reload starts from what was found
        self.resolving.start(self.config)
        self.health = HealthChecks(self.loop, self.error_log, self.tasks)
        self.health.start(self.config, lambda name: self.peer_group(upstream_target(name)))

    def stop_health(self) -> None:
        """Cancel every probe of the running checkers (at exit and before a restart)."""
        if self.health is not None:
            self.health.stop()
            self.health = None
        self.resolving.stop()

    def _new_resolving(self) -> UpstreamResolving:
        """The ``server ... resolve`` timers of the current configuration (not started)."""
        return UpstreamResolving(
            self.loop,
            self._upstream_resolver,
            self.error_log.log,
            self.resolved_store,
            self.tasks,
        )

    def _upstream_resolver(self, up: Upstream) -> Resolver:
        assert up.resolver is not None  # the loader requires one with ``resolve``
        return self.resolver(up.resolver)

    # -- signals ------------------------------------------------------------------------------
    def install_signals(self) -> None:
        self.loop.add_signal_handler(signal.SIGTERM, self.stop_now)
        self.loop.add_signal_handler(signal.SIGINT, self.stop_now)
        self.loop.add_signal_handler(signal.SIGQUIT, self.stop_gracefully)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.loop.add_signal_handler(signal.SIGUSR1, self.reopen)

    def _close_listeners(self) -> None:
        for group in self.groups.values():
            close_group(group)

    def stop_now(self) -> None:
        self.error_log.log("notice", "exiting")
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self.stopping = True
        self.stop_health()
        self._close_listeners()
        for conn in list(self.connections):
            if conn.tunnel is not None:  # its client transport is the tunnel's (no ``ep``)
                conn.tunnel.abort()
                conn.abandon_tunnel()
            else:
                if conn.h2 is not None:  # its streams' RFC 8441 tunnels
                    conn.h2.abandon_tunnels()
                conn.ep.abort()
        for task in list(self.tasks):
            task.cancel()
        self._finish()

    def stop_gracefully(self) -> None:
        """QUIT: stop accepting, let HTTP requests finish, and end every WebSocket tunnel as
        an endpoint would, with a 1001 (going away) close frame both ways (spread over
        ``close_spread_time``).  ``worker_shutdown_timeout`` still bounds the whole.

        ``shutdown_grace T`` (wsgate's, HAProxy's ``grace``: "a delay between SIGUSR1 and
        real soft-stop") comes first: for ``T`` seconds the worker goes on accepting and
        serving as before, only ``readiness`` answers 503, so that a layer-4 balancer's
        health check takes the node out of its pool before its listeners close (a client
        the balancer still sends meanwhile is served, not refused).  A worker already
        winding down (retired by a reload) has no listener left and skips it.
        ``worker_shutdown_timeout`` counts from the QUIT, the grace included, as a
        Kubernetes ``terminationGracePeriodSeconds`` does.

        A worker retired by a reload gets it too (the master's QUIT reaches every
        generation): its tunnels are the ones that outlived the reload."""
        if self.quitting or self.stopped.done():
            return
        self.quitting = True
        self.quit_at = self.loop.time()
        grace = self.config.shutdown_grace
        if grace > 0 and not self.stopping:
            self.error_log.log("notice", f"shutdown grace: stopping in {grace:g}s")
            self._grace = self.loop.call_later(grace, self._quit)
            return
        self._quit()

    def _quit(self) -> None:
        """The graceful stop proper (after ``shutdown_grace``, if any)."""
        self._grace = None
        if self.stopped.done():
            return
        self._wind_down()
        self._close_tunnels(1001)

    def retire(self) -> None:
        """Reload, in an old worker: stop accepting and keep every open request and tunnel
        until it ends; at ``worker_shutdown_timeout`` (if set), tunnels get a 1012 (service
        restart) close frame and remaining requests are closed."""
        self._wind_down()

    def _wind_down(self) -> None:
        if self.stopping:
            return
        self.error_log.log("notice", "gracefully shutting down")
        self.stopping = True
        self.stop_health()
        self._close_listeners()
        for conn in list(self.connections):
            conn.wind_down()
        timeout = self.config.worker_shutdown_timeout
        if timeout is not None:
            if self.quit_at is not None:  # counted from the QUIT (shutdown_grace included)
                timeout = max(0.0, timeout - (self.loop.time() - self.quit_at))
            self.loop.call_later(timeout, self._shutdown_timeout)
        if self._drained():
            self._finish()

    def _shutdown_timeout(self) -> None:
        """``worker_shutdown_timeout``: tunnels get 1012 and a few seconds for the closing
        handshake; everything else is closed now (nginx closes all connections)."""
        if self.stopped.done():
            return
        self.error_log.log("notice", "worker_shutdown_timeout expired, closing connections")
        for conn in list(self.connections):
            # An HTTP/2 connection carrying RFC 8441 tunnels stays for their 1012.
            if conn.tunnel is None and not (conn.h2 is not None and conn.h2.tunnels()):
                conn.ep.abort()
        self._close_tunnels(1012, spread=False)

    def _close_tunnels(self, code: int, spread: bool = True) -> None:
        """Send ``code`` on every open tunnel, spread evenly over ``close_spread_time`` (so
        that clients do not all reconnect at once), each tunnel at a random point."""
        window = self.config.close_spread_time if spread else 0.0
        for tunnel in self.tunnels:
            if window > 0:
                self.loop.call_later(random.uniform(0, window), tunnel.going_away, code)
            else:
                tunnel.going_away(code)

    def _finish(self) -> None:
        if self.control is not None:
            self.control.stop()
        if not self.stopped.done():
            self.stopped.set_result(None)

    def reload(self) -> None:
        """HUP: build everything the new configuration needs first; apply it only if all of
        it worked (nginx keeps the old cycle when parsing, opening files or binding fails)."""
        self.error_log.log("notice", "signal 1 (SIGHUP) received, reconfiguring")
        if self.reload_config is None:
            return
        access_logs = AccessLogs()
        try:
            config = self.reload_config()
            check_error_logs(config)
            access_logs = open_access_logs(config)
            if self.on_reload is not None:
                self.on_reload(config)
            groups = self.bind(config)
        except ConfigError as exc:
            access_logs.close()
            self.error_log.log("emerg", str(exc))
            return
        self.config = config
        self.upstream_caches.proxy_caches.configure(config, self.error_log)
        self.peer_groups = {}
        self._built = {}
        self.error_log.configure(config)
        self.access_logs.close()
        self.access_logs = access_logs
        access_logs.error_log = self.error_log
        delete_dropped_unix_sockets(self.groups, groups, self.error_log)
        self.loop.create_task(self.serve(groups))

    def reopen(self) -> None:
        """USR1: reopen every log file (logrotate's ``postrotate``)."""
        self.error_log.log("notice", "signal 10 (SIGUSR1) received, reopening logs")
        self.error_log.open()
        try:
            self.access_logs.open(access_log_paths(self.config))
        except OSError as exc:
            self.error_log.log(
                "alert", f'open() "{exc.filename}" failed ({exc.errno}: {exc.strerror})'
            )


def open_access_logs(config: Config) -> AccessLogs:
    """Every access log ``config`` names, open; a failure is nginx's ``open() "PATH" failed``
    as a :class:`ConfigError` (a reload keeps the old configuration)."""
    logs = AccessLogs()
    try:
        logs.open(access_log_paths(config))
    except OSError as exc:
        logs.close()
        raise ConfigError(f'open() "{exc.filename}" failed ({exc.errno}: {exc.strerror})') from exc
    return logs


def check_error_logs(config: Config) -> None:
    """Every ``error_log`` file ``config`` names opens (a reload keeps the old configuration
    otherwise, as nginx's new cycle fails): ``open() "PATH" failed`` as a ConfigError."""
    try:
        ErrorLogger(config.error_logs, False, location_error_logs(config)).close()
    except OSError as exc:
        raise ConfigError(f'open() "{exc.filename}" failed ({exc.errno}: {exc.strerror})') from exc


def announce(error_log: ErrorLogger, group: ListenGroup) -> None:
    """``listening on HOST:PORT (FILE:LINE)``: the address a socket was bound to (tests read
    the ports of ``listen ADDR:0`` from it)."""
    host, _, index = group.key
    src = group.pairs[0][1].source if group.pairs else None
    where = addr_text((host, group.port, index))
    error_log.log("notice", f"listening on {where}" + (f" ({src})" if src else ""))


class _Listener:
    """Accepting on one listening socket, wsgate's own way rather than the event loop's
    ``create_server``: before each ``accept()`` the gateway's budget must have room for the
    client and the upstream connection it may open, and when it has none (or ``accept4()``
    fails with EMFILE) the socket is no longer polled, so clients wait in the backlog.  (libuv,
    under uvloop, answers EMFILE by accepting and closing every pending connection.)"""

    __slots__ = ("gw", "sock", "acceptor", "fd", "_on", "direct", "sockname", "_timer", "_take")

    def __init__(self, gw: Gateway, sock: socket.socket, acceptor: _Acceptor) -> None:
        self.gw = gw
        self.sock = sock
        self.acceptor = acceptor
        self.fd = sock.fileno()
        self._on = False
        #: While another worker is given the waiting connections (ACCEPT_DEFER): the timer
        #: that polls again; then ``_take``: the next event accepts without the check.
        self._timer: asyncio.TimerHandle | None = None
        self._take = False
        #: Plain TCP clients go on the compiled transport from their accept (fdrelay.py).
        self.direct = fdrelay.AVAILABLE and sock.family in (socket.AF_INET, socket.AF_INET6)
        #: The local address of every connection, if the socket is bound to a specific one
        #: (a wildcard's is read from the connection when asked, as nginx does).
        bound = sock.getsockname()
        wildcard = ipaddress.ip_address(bound[0]).is_unspecified if self.direct else True
        self.sockname: object = None if wildcard else bound

    def start(self) -> None:
        self.gw.loop.add_reader(self.fd, self._ready)
        self._on = True

    def close(self) -> None:
        if self._on:
            self._on = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._take = False
            self.gw.loop.remove_reader(self.fd)

    def _busier(self) -> bool:
        """Whether another worker holds fewer client connections than this one by more than
        an eighth of this one's, and two (see ACCEPT_DEFER)."""
        share = self.gw.accept_share
        if share is None or self.gw.config.worker_processes < 2:
            return False
        counts = share()
        if counts is None:
            return False
        mine, least = counts
        return mine > least + 2 + (mine >> 3)

    def _defer(self) -> None:
        loop = self.gw.loop
        loop.remove_reader(self.fd)
        self._timer = loop.call_later(ACCEPT_DEFER, self._poll_again)

    def _poll_again(self) -> None:
        self._timer = None
        self._take = True  # the next event accepts, busier or not
        if self._on:
            self.gw.loop.add_reader(self.fd, self._ready)

    def _ready(self) -> None:
        gw, loop, sock = self.gw, self.gw.loop, self.sock
        if self._take:
            self._take = False
        elif self._busier():
            self._defer()
            return
        for i in range(ACCEPT_BATCH if gw.config.multi_accept else 1):
            if not self._on:
                return
            if not gw.room():
                # Polled while full, the socket reports only a client actually kept waiting:
                # then stop polling it, and say so.
                if i == 0:
                    gw._pause_accepting()
                return
            # A plain TCP client is on the compiled transport from its accept (fdrelay.py).
            direct = self.direct and self.acceptor.group.tls is None
            try:
                if direct:
                    fd, peer = fdrelay.accept(self.fd)  # type: ignore[misc]  # set where AVAILABLE
                else:
                    conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                gw.accept_failed(exc)
                if exc.errno != errno.ECONNABORTED:
                    return
                continue
            if direct:
                fdrelay.serve_accepted(loop, fd, peer, self.sockname, self.acceptor())
                continue
            gw.accepting += 1
            task = loop.create_task(loop.connect_accepted_socket(self.acceptor, conn))
            gw.tasks.add(task)  # a fast stop cancels it
            task.add_done_callback(functools.partial(self._started, conn))

    def _started(self, conn: socket.socket, task: asyncio.Task[object]) -> None:
        self.gw.tasks.discard(task)
        started = not task.cancelled() and task.exception() is None
        if not started:
            conn.close()  # never reached a protocol (a stop cancelled it)
        self.gw.accept_settled(started)


class _Acceptor:
    """The protocol factory of one listening socket: front connections for the group the
    socket serves now (a reload that keeps the socket replaces ``group``, and with it the
    servers and TLS contexts new connections get)."""

    __slots__ = ("gw", "group")

    def __init__(self, gw: Gateway, group: ListenGroup) -> None:
        self.gw = gw
        self.group = group

    def __call__(self) -> Endpoint:
        return _Front(self.gw, self.group)


class _Front(Endpoint):
    """Accepted connections: an Endpoint that hands itself to the gateway."""

    __slots__ = ("gw", "group")

    def __init__(self, gw: Gateway, group: ListenGroup) -> None:
        super().__init__(gw.loop)
        self.gw = gw
        self.group = group

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.gw.accepted(self, self.group)


def pid_write(path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def _keep_state(peers: list[Peer], old: PeerGroup | None) -> list[Peer]:
    """The peers of a rebuilt group, with the old group's :class:`Peer` kept where the
    address stayed (failures, ``conns``, weights go on)."""
    if old is None:
        return peers
    by_addr = {(p.address, p.backup): p for p in (*old.peers, *old.backups)}
    return [by_addr.get((p.address, p.backup), p) for p in peers]
