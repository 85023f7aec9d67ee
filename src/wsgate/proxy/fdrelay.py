"""Plain TCP connections on compiled transports, outside the event loop's (issue 16).

``wsgate.proxy._relay`` (src/wsgate/proxy/_relay.c) has one :class:`Poller` per worker, an
epoll set that the event loop watches as a single descriptor, and :class:`FdTransport`, an
``asyncio.Transport`` with asyncio's semantics for one socket of that set: when the set is
ready, one call serves every ready socket (for a tunnel: one read, the side's compiled
``data_received``, one ``send`` to the peer), with no uvloop stream, handle or write queue.

A plain TCP connection is on an FdTransport from its start: the listener accepts with the
extension's :func:`accept` (``accept4`` gives the peer's address; the local one is the
listener's when it is bound to one address, as nginx asks the kernel only for a wildcard's)
and :func:`serve_accepted` starts the protocol; an upstream connection to a numeric address is
made by :func:`open_connection` (``connect`` in the set, ``SO_ERROR`` when writable).  The
HTTP phase, the 101 and the tunnel run on the same transport: no uvloop transport is made
(each asked the kernel for both addresses) and nothing is handed over after the 101 (until
2026-12-08 the tunnel moved its two sockets from uvloop's transports to FdTransports then: a
``dup``, uvloop's close and four epoll operations per tunnel).  TLS listeners and upstreams,
Unix sockets, and names that are not numeric addresses stay on the loop's transports, and a
tunnel between such a connection and an FdTransport relays across the two kinds.

Where the extension was not built, or ``WSGATE_PURE`` is set, everything stays on the loop's
transports (:data:`AVAILABLE`); ``WSGATE_LOOP_RELAY=1`` keeps them too (the compiled scanner
and sides still run), to compare.

An FdTransport closes its socket as soon as it ends (uvloop's a callback later): code that
uses the descriptor itself across an ``await`` (``sendfile``) duplicates it first.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import weakref
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from wsgate.compiled import PURE, extension

__all__ = [
    "AVAILABLE",
    "RELAY",
    "accept",
    "open_connection",
    "prepare",
    "serve_accepted",
]

#: ``WSGATE_LOOP_RELAY=1`` keeps tunnels on the loop's transports (to compare the two).
_KEEP = PURE or ("WSGATE_LOOP_RELAY" if os.environ.get("WSGATE_LOOP_RELAY") else "")
_relay: ModuleType | None = None if _KEEP else extension("wsgate.proxy._relay")

#: Plain TCP connections go on compiled transports here.
AVAILABLE = _relay is not None
#: accept4() on a listening TCP socket: ``(fd, peer address)`` (the extension's).
accept: Callable[[int], tuple[int, Any]] | None = _relay.accept if _relay is not None else None
#: What ``wsgate -V`` says relays a tunnel's sockets.
RELAY = (
    "compiled, outside the event loop"
    if AVAILABLE
    else "the event loop's transports" + (f" ({_KEEP})" if _KEEP else "")
)

if TYPE_CHECKING:
    from wsgate.proxy._relay import FdTransport as _Base
elif _relay is not None:
    _Base = _relay.FdTransport
else:
    _Base = object


class FdTransport(_Base):
    """``_relay.FdTransport`` with ``get_extra_info``: the addresses the accept gave (or
    read from the socket when asked), and ``"socket"`` as a :class:`_SocketView`."""

    __slots__ = ("peername", "sockname")
    peername: object
    sockname: object

    def get_extra_info(self, name: str, default: object = None) -> object:
        if name == "socket":
            return _SocketView(self) if self.fileno() >= 0 else default
        if name not in ("peername", "sockname"):
            return default
        known = getattr(self, name, None)
        if known is not None:
            return known
        sock = self.socket_object()
        if sock is None:
            return default
        try:
            known = sock.getpeername() if name == "peername" else sock.getsockname()
        except OSError:
            return default
        finally:
            sock.detach()
        setattr(self, name, known)  # the addresses of a connection do not change
        return known

    def socket_object(self) -> socket.socket | None:
        """A ``socket.socket`` on the descriptor (the caller detaches it, never closes it), or
        None once closed.  An accepted client's family is its address's; otherwise the socket
        module asks the kernel."""
        fd = self.fileno()
        if fd < 0:
            return None
        peer = getattr(self, "peername", None)
        if peer is None:
            return socket.socket(fileno=fd)
        family = socket.AF_INET6 if len(peer) == 4 else socket.AF_INET
        return socket.socket(family, socket.SOCK_STREAM, 0, fd)


class _SocketView:
    """What callers ask of a transport's socket (``family``, ``fileno()``, ``setsockopt``,
    ``getsockopt``), for a socket the transport owns: never closes it."""

    __slots__ = ("transport", "family")

    def __init__(self, transport: FdTransport) -> None:
        self.transport = transport
        sock = transport.socket_object()
        self.family = socket.AF_INET if sock is None else sock.family
        if sock is not None:
            sock.detach()

    def fileno(self) -> int:
        return int(self.transport.fileno())

    def _sock(self) -> socket.socket:
        sock = self.transport.socket_object()
        if sock is None:
            raise OSError(9, os.strerror(9))
        return sock

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        sock = self._sock()
        try:
            sock.setsockopt(level, option, value)
        finally:
            sock.detach()

    def getsockopt(self, level: int, option: int) -> int:
        sock = self._sock()
        try:
            return sock.getsockopt(level, option)
        finally:
            sock.detach()


_POLLERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def prepare(loop: asyncio.AbstractEventLoop) -> None:
    """Open the loop's epoll set now (a worker's descriptors are counted at its start)."""
    if AVAILABLE:
        _poller(loop)


def _poller(loop: asyncio.AbstractEventLoop) -> Any:
    """The loop's Poller, made (and its epoll descriptor watched) on first use."""
    poller = _POLLERS.get(loop)
    if poller is None:
        assert _relay is not None
        poller = _POLLERS[loop] = _relay.Poller(loop)
        loop.add_reader(poller.fileno(), poller.run)
    return poller


def serve_accepted(
    loop: asyncio.AbstractEventLoop,
    fd: int,
    peername: object,
    sockname: object,
    protocol: asyncio.Protocol,
) -> None:
    """A socket from :func:`accept` on an FdTransport of ``protocol``, from the start: its
    ``connection_made`` now, then reading (as the loop's transports do).  ``sockname`` is the
    listener's address when it is a specific one (None: read from the socket when asked)."""
    transport = FdTransport(_poller(loop), fd, protocol)
    transport.peername = peername
    transport.sockname = sockname
    protocol.connection_made(cast(asyncio.BaseTransport, transport))
    transport.resume_reading()


def _settle(waiter: asyncio.Future[int], err: int) -> None:
    if not waiter.done():
        waiter.set_result(err)


async def open_connection(
    loop: asyncio.AbstractEventLoop, host: str, port: int, protocol: asyncio.Protocol
) -> bool:
    """Connect to ``host:port`` on an FdTransport of ``protocol`` (its ``connection_made``
    when connected); ``False`` if ``host`` is not a numeric address (the caller then uses the
    loop's ``create_connection``).  A failed connect raises ``OSError`` with its errno; a
    cancelled one closes the socket (the protocol hears nothing)."""
    waiter: asyncio.Future[int] = loop.create_future()
    transport = FdTransport.connect(
        _poller(loop), host, port, protocol, functools.partial(_settle, waiter)
    )
    if transport is None:
        return False
    try:
        err = await waiter
    except BaseException:
        transport.abort()
        raise
    if err:
        raise OSError(err, os.strerror(err))
    return True
