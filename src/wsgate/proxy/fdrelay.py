"""Plain TCP connections on compiled transports, outside the event loop's (issue 16).

``wsgate.proxy._relay`` (src/wsgate/proxy/_relay.c) has one :class:`Poller` per worker, an
epoll set that the event loop watches as a single descriptor, and :class:`FdTransport`, an
``asyncio.Transport`` with asyncio's semantics for one socket of that set: when the set is
ready, one call serves every ready socket (for a tunnel: one read, the side's compiled
``data_received``, one ``send`` to the peer), with no uvloop stream, handle or write queue.

Since the handshake work of issue 16, a plain TCP connection is on an FdTransport from its
start (:data:`DIRECT`): the listener accepts with the extension's :func:`accept` (``accept4``
gives the peer's address; the local one is the listener's when it is bound to one address, as
nginx asks the kernel only for a wildcard's) and :func:`serve_accepted` starts the protocol;
an upstream connection to a numeric address is made by :func:`open_connection` (``connect``
in the set, ``SO_ERROR`` when writable).  The HTTP phase, the 101 and the tunnel then run on
the same transport: no uvloop transport is made (each asked the kernel for both addresses)
and nothing is handed over.  TLS listeners and upstreams, Unix sockets, and names that are not
numeric addresses stay on the loop's transports.

Where both are still uvloop's plain TCP transports (``WSGATE_LOOP_CONNECT=1``), the tunnel
hands them over after the 101 (:func:`take_over`): the socket's descriptor is duplicated, the
uvloop transport is given a protocol that ignores everything and closed (it closes its own
descriptor; the connection lives on in the duplicate), and the FdTransport owns the
duplicate from then on.  The tunnel hands over only once both uvloop transports have sent
everything queued (the 101 is queued until the end of the loop's iteration), so no byte can
overtake another.  Where the extension was not built, or ``WSGATE_PURE`` is set, or either
transport is another kind, the tunnel keeps the loop's transports (:data:`AVAILABLE`);
``WSGATE_LOOP_RELAY=1`` keeps them too (the compiled scanner and sides still run), to compare.

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

__all__ = [
    "AVAILABLE",
    "DIRECT",
    "RELAY",
    "accept",
    "direct",
    "eligible",
    "open_connection",
    "prepare",
    "serve_accepted",
    "take_over",
]

_relay: ModuleType | None = None
#: ``WSGATE_LOOP_RELAY=1`` keeps tunnels on the loop's transports (to compare the two).
_KEEP = "WSGATE_PURE" if os.environ.get("WSGATE_PURE") else ""
_KEEP = _KEEP or ("WSGATE_LOOP_RELAY" if os.environ.get("WSGATE_LOOP_RELAY") else "")
if not _KEEP:
    try:
        from wsgate.proxy import _relay
    except ImportError:  # built without a compiler: the extension is optional
        _relay = None

_TCP: type | None
try:
    import uvloop.loop

    _TCP = uvloop.loop.TCPTransport  # type: ignore[attr-defined]  # not in uvloop's stubs
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    _TCP = None

#: Tunnels can leave the loop's transports here.
AVAILABLE = _relay is not None and _TCP is not None
#: Plain TCP connections are on FdTransports from their accept or connect (no uvloop transport
#: and no handover); ``WSGATE_LOOP_CONNECT=1`` keeps the handover after the 101, to compare.
DIRECT = AVAILABLE and not os.environ.get("WSGATE_LOOP_CONNECT")
#: accept4() on a listening TCP socket: ``(fd, peer address)`` (the extension's).
accept: Callable[[int], tuple[int, Any]] | None = _relay.accept if AVAILABLE and _relay else None
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
        fd = self.fileno()
        if fd < 0:
            return default
        sock = socket.socket(fileno=fd)
        try:
            return sock.getpeername() if name == "peername" else sock.getsockname()
        except OSError:
            return default
        finally:
            sock.detach()


class _SocketView:
    """What callers ask of a transport's socket (``family``, ``fileno()``, ``setsockopt``,
    ``getsockopt``), for a socket the transport owns: never closes it."""

    __slots__ = ("transport", "family")

    def __init__(self, transport: FdTransport) -> None:
        self.transport = transport
        peer = getattr(transport, "peername", None)
        if peer is None:
            peer = transport.get_extra_info("peername")
        six = isinstance(peer, tuple) and len(peer) == 4
        self.family = socket.AF_INET6 if six else socket.AF_INET

    def fileno(self) -> int:
        return int(self.transport.fileno())

    def _sock(self) -> socket.socket:
        fd = self.fileno()
        if fd < 0:
            raise OSError(9, os.strerror(9))
        # family, type and proto given: the socket module asks the kernel for none of them.
        return socket.socket(self.family, socket.SOCK_STREAM, 0, fd)

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


class _Handed(asyncio.Protocol):
    """The protocol of a uvloop transport whose socket was taken over: hears nothing but
    its end, after which uvloop closes its descriptor (the duplicate's budget is released)."""

    __slots__ = ("release",)

    def __init__(self, release: Callable[[int], bool] | None) -> None:
        self.release = release

    def connection_lost(self, exc: Exception | None) -> None:
        release, self.release = self.release, None
        if release is not None:
            release(-1)


_POLLERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
#: Per loop, the worker's descriptor budget: ``reserve(n)`` holds n more (False: no room),
#: ``reserve(-n)`` gives them back (wsgate.server.gateway.Gateway.reserve_fds).
_BUDGETS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Callable[[int], bool]] = (
    weakref.WeakKeyDictionary()
)


def prepare(loop: asyncio.AbstractEventLoop, reserve: Callable[[int], bool] | None = None) -> None:
    """Open the loop's epoll set now (a worker's descriptors are counted at its start) and
    take ``reserve`` as its descriptor budget."""
    if AVAILABLE:
        _poller(loop)
        if reserve is not None:
            _BUDGETS[loop] = reserve


def _poller(loop: asyncio.AbstractEventLoop) -> Any:
    """The loop's Poller, made (and its epoll descriptor watched) on first use."""
    poller = _POLLERS.get(loop)
    if poller is None:
        assert _relay is not None
        poller = _POLLERS[loop] = _relay.Poller(loop)
        loop.add_reader(poller.fileno(), poller.run)
    return poller


def eligible(transport: asyncio.BaseTransport) -> bool:
    """Whether ``transport``'s socket can be relayed by the compiled code: uvloop's plain TCP
    transport (taken over), or a connection that was on an FdTransport from the start."""
    return AVAILABLE and (type(transport) is _TCP or isinstance(transport, FdTransport))


def direct(transport: asyncio.BaseTransport) -> bool:
    """Whether ``transport`` is an FdTransport already (nothing to take over)."""
    return isinstance(transport, FdTransport)


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


def take_over(
    loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, protocol: asyncio.Protocol
) -> asyncio.Transport | None:
    """``transport``'s socket as an FdTransport of ``protocol``, not reading yet; the uvloop
    transport is closed.  ``None`` if the worker's descriptor budget has no room for the
    duplicate (held until uvloop has closed its own), or it cannot be made: the tunnel then
    keeps ``transport``.  An FdTransport already is given ``protocol`` and returned."""
    if isinstance(transport, FdTransport):
        transport.set_protocol(protocol)
        return transport
    reserve = _BUDGETS.get(loop)
    if reserve is not None and not reserve(1):
        return None  # the duplicate would take a descriptor a connection may need
    sock = transport.get_extra_info("socket")
    try:
        fd = os.dup(sock.fileno())
    except OSError:
        if reserve is not None:
            reserve(-1)
        return None
    new = FdTransport(_poller(loop), fd, protocol)
    transport.set_protocol(_Handed(reserve))
    transport.close()
    return cast(asyncio.Transport, new)  # an asyncio.Transport in all but its class
