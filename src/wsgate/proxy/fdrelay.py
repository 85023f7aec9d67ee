"""A tunnel's sockets taken from the event loop's transports and relayed by compiled code.

Issue 16's "tunnel that leaves the Python event loop".  After the 101, a tunnel of two plain
TCP connections (no TLS, not an HTTP/2 stream, uvloop's own TCP transports) gives each socket
to an :class:`FdTransport` of ``wsgate.proxy._relay`` (src/wsgate/proxy/_relay.c): the
worker's :class:`Poller` holds them all in one epoll set, which the event loop watches as a
single descriptor; when it is ready, one call relays every ready socket (one read, the side's
compiled ``data_received``, one ``send`` to the peer), with no uvloop stream, handle or write
queue per message.  FdTransport is an ``asyncio.Transport`` with asyncio's semantics, so the
tunnel's Python logic (Close frames at boundaries, half-close, timers, flow control, limits,
pings) is the same code whichever transport it drives.

The handover (:func:`take_over`): the socket's descriptor is duplicated, the uvloop
transport is given a protocol that ignores everything and closed (it closes its own
descriptor; the connection lives on in the duplicate), and the FdTransport owns the
duplicate from then on.  The tunnel hands over only once both uvloop transports have sent
everything queued (the 101 is queued until the end of the loop's iteration), so no byte can
overtake another.  Where the extension was not built, or ``WSGATE_PURE`` is set, or either
transport is another kind, the tunnel keeps the loop's transports (:data:`AVAILABLE`);
``WSGATE_LOOP_RELAY=1`` keeps them too (the compiled scanner and sides still run), to compare.
"""

from __future__ import annotations

import asyncio
import os
import socket
import weakref
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

__all__ = ["AVAILABLE", "RELAY", "eligible", "prepare", "take_over"]

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
    """``_relay.FdTransport`` with ``get_extra_info`` (asked rarely: read from the socket)."""

    __slots__ = ()

    def get_extra_info(self, name: str, default: object = None) -> object:
        fd = self.fileno()
        if fd < 0 or name not in ("peername", "sockname"):
            return default
        sock = socket.socket(fileno=fd)
        try:
            return sock.getpeername() if name == "peername" else sock.getsockname()
        except OSError:
            return default
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
    """Whether ``transport``'s socket can be taken over: uvloop's plain TCP transport."""
    return AVAILABLE and type(transport) is _TCP


def take_over(
    loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, protocol: asyncio.Protocol
) -> asyncio.Transport | None:
    """``transport``'s socket as an FdTransport of ``protocol``, not reading yet; the uvloop
    transport is closed.  ``None`` if the worker's descriptor budget has no room for the
    duplicate (held until uvloop has closed its own), or it cannot be made: the tunnel then
    keeps ``transport``."""
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
