"""bench/sockmap.py, issue 16's kernel-splicing experiment, still does what its figures say:
the hand-written eBPF verdict program loads, and two spliced sockets pass each other's bytes
with no user-space read, counting them per socket.

Skips where the kernel refuses ``bpf()`` (not root, or no sockmap support).
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.helpers import recv_exactly, tcp_pair

pytestmark = pytest.mark.timeout(60)


def _pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair: (outside end, the end a proxy would hold)."""
    outside, inside = tcp_pair()
    for s in (outside, inside):
        s.settimeout(10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return outside, inside


def test_spliced_sockets_relay_in_the_kernel() -> None:
    from bench.sockmap import Splicer

    try:
        splicer = Splicer(slots=16)
    except OSError as exc:
        pytest.skip(f"the kernel refuses the sockmap experiment here: {exc}")
    client, client_side = _pair()
    server, server_side = _pair()
    try:
        slots = splicer.splice(client_side, server_side)
        before = time.monotonic_ns()
        client.sendall(b"to the server" * 100)
        assert recv_exactly(server, 1300) == b"to the server" * 100
        server.sendall(b"and back")
        assert recv_exactly(client, 8) == b"and back"
        # Nothing reached the proxy's ends: the kernel relayed it.
        client_side.setblocking(False)
        server_side.setblocking(False)
        with pytest.raises(BlockingIOError):
            client_side.recv(1)
        with pytest.raises(BlockingIOError):
            server_side.recv(1)
        nbytes, last = splicer.counters(client_side)
        assert nbytes == 1300 and last >= before
        assert splicer.counters(server_side)[0] == 8
        # Taken out of the map, the sockets are ordinary again: bytes reach user space.
        splicer.unsplice(client_side, server_side, slots)
        client.sendall(b"plain")
        client_side.settimeout(10)
        assert recv_exactly(client_side, 5) == b"plain"
    finally:
        for s in (client, client_side, server, server_side):
            s.close()
