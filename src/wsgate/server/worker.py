"""A worker process: one event loop serving the listening sockets it inherited.

The master (:mod:`wsgate.server.master`) binds the sockets, then ``fork()``s; each worker
builds its own event loop and :class:`~wsgate.server.gateway.Gateway` and accepts on the
shared sockets (the kernel hands each new connection to one of the processes polling the
socket).  ``master_process off`` runs the same :func:`serve` in the one process.

The master talks to a worker over a socketpair, one byte a command (nginx's channel):

* ``Q`` graceful stop (QUIT): tunnels get a 1001 close frame, requests finish;
* ``R`` retire after a reload: stop accepting, keep open connections until they end (or
  ``worker_shutdown_timeout``, then 1012);
* ``T`` fast stop (TERM); ``O`` reopen the log files (USR1).

The worker writes ``1`` once it accepts.  When the master goes away (the channel reads EOF)
the worker retires: it stops accepting and finishes what it has, rather than serving on
with nobody to restart or stop it.  Workers also obey the signals themselves (``kill -QUIT``
on a worker stops that worker gracefully), as nginx's do.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
from collections.abc import Callable

from wsgate.config.model import Config
from wsgate.errors import ConfigError
from wsgate.loop import new_event_loop
from wsgate.observability.logs import AccessLogs, ErrorLogger, access_log_paths, location_error_logs
from wsgate.server.gateway import BindKey, Gateway, ListenGroup

__all__ = ["apply_limits", "run_worker", "serve"]


def serve(gw: Gateway, groups: dict[BindKey, ListenGroup], started: Callable[[], None]) -> None:
    """Run ``gw`` on the current event loop until it stops, then cancel what is left.

    Serving and waiting for the stop are one run of the loop, not two: uvloop opens a
    socketpair for signals at the start of each run and closes it at the end, so two runs
    left a moment, after the first clients were served, when the worker held two descriptors
    fewer than it does for the rest of its life (a test counting descriptors saw a "leak")."""
    loop = gw.loop

    async def run() -> None:
        await gw.serve(groups)
        started()
        await gw.stopped

    loop.run_until_complete(run())
    pending = [t for t in gw.tasks if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    if gw.limits.remote is not None:  # limit zones kept in Redis: give back what it held
        loop.run_until_complete(gw.limits.remote.close())


def apply_limits(config: Config, index: int, error_log: ErrorLogger) -> None:
    """``worker_rlimit_nofile`` and ``worker_cpu_affinity`` for worker number ``index``,
    logged as nginx logs a refused ``setrlimit``/``sched_setaffinity`` (the worker runs on)."""
    n = config.worker_rlimit_nofile
    if n is not None:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
        except (OSError, ValueError) as exc:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            try:
                # Unprivileged: the soft limit can still rise up to the hard one.
                resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
            except (OSError, ValueError):
                errno = getattr(exc, "errno", None) or 1
                error_log.log(
                    "alert",
                    f"setrlimit(RLIMIT_NOFILE, {n}) failed ({errno}: {os.strerror(errno)})",
                )
    masks = config.worker_cpu_affinity
    if masks is None:
        return
    allowed = sorted(os.sched_getaffinity(0))
    cpus = {allowed[index % len(allowed)]} if masks == () else set(masks[index % len(masks)])
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:
        error_log.log("alert", f"sched_setaffinity() failed ({exc.errno}: {exc.strerror})")


def run_worker(
    config: Config,
    groups: dict[BindKey, ListenGroup],
    channel: socket.socket,
    index: int,
    setup: Callable[[Gateway], None],
) -> int:
    """The body of a forked worker; returns its exit code.  ``setup`` attaches the shared
    state (counters, zones, metrics) to the new gateway before it accepts."""
    for sig in (signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL if sig == signal.SIGCHLD else signal.SIG_IGN)
    error_log = ErrorLogger(config.error_logs, scoped=location_error_logs(config))
    apply_limits(config, index, error_log)
    access_logs = AccessLogs()
    try:
        access_logs.open(access_log_paths(config))
    except OSError as exc:
        error_log.log("emerg", f'open() "{exc.filename}" failed ({exc.errno}: {exc.strerror})')
        return 2
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    gw = Gateway(config, loop, error_log, access_logs, announce=False)
    setup(gw)
    for sig, handler in (
        (signal.SIGTERM, gw.stop_now),
        (signal.SIGINT, gw.stop_now),
        (signal.SIGQUIT, gw.stop_gracefully),
        (signal.SIGUSR1, gw.reopen),
    ):
        loop.add_signal_handler(sig, handler)
    channel.setblocking(False)

    def command() -> None:
        try:
            data = channel.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the master is gone
            loop.remove_reader(channel.fileno())
            gw.retire()
            return
        for c in data:
            if c == ord("Q"):
                gw.stop_gracefully()
            elif c == ord("R"):
                gw.retire()
            elif c == ord("T"):
                gw.stop_now()
            elif c == ord("O"):
                gw.reopen()

    loop.add_reader(channel.fileno(), command)

    def started() -> None:
        try:
            channel.send(b"1")
        except OSError:
            pass

    try:
        serve(gw, groups, started)
    except ConfigError as exc:  # pragma: no cover - sockets are bound by the master
        error_log.log("emerg", str(exc))
        return 2
    finally:
        error_log.log("notice", "exit")
        gw.access_logs.close()
        error_log.close()
        loop.close()
    return gw.exit_code
