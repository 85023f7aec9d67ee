"""A listener of a worker holding more connections than another leaves a waiting connection
to that worker once (``ACCEPT_DEFER``), then takes what still waits (gateway.py ``_Listener``).

The listener runs on a real loop and a real listening socket; the gateway around it is a stub
whose ``accept_share`` says how loaded this worker and its least-loaded peer are."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace
from typing import Any

import pytest

from wsgate.loop import new_event_loop
from wsgate.server import gateway
from wsgate.server.gateway import _Listener

pytestmark = pytest.mark.timeout(20)


class _Proto(asyncio.Protocol):
    def __init__(self, made: asyncio.Future[None]) -> None:
        self.made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.made.done():
            self.made.set_result(None)
        transport.close()


class _Logged(_Listener):
    """A listener that says when it defers and polls again."""

    events: list[str]

    def _defer(self) -> None:
        self.events.append("defer")
        super()._defer()

    def _poll_again(self) -> None:
        self.events.append("poll again")
        super()._poll_again()


def _run(share: tuple[int, int] | None, multi_accept: bool = False, workers: int = 2) -> list[str]:
    """Start a listener with ``share``, connect one client, run until the client's protocol
    is made; returns what the listener did, in order ("defer", "poll again", "accepted")."""
    loop = new_event_loop()
    srv = socket.create_server(("127.0.0.1", 0))
    srv.setblocking(False)
    events: list[str] = []
    try:
        made: asyncio.Future[None] = loop.create_future()
        gw: Any = SimpleNamespace(
            loop=loop,
            room=lambda: True,
            config=SimpleNamespace(multi_accept=multi_accept, worker_processes=workers),
            accept_share=(lambda: share),
            accepting=0,
            tasks=set(),
            accept_settled=lambda started: events.append("accepted"),
            accept_failed=lambda exc: events.append(f"failed {exc}"),
        )

        def acceptor() -> _Proto:
            return _Proto(made)

        acceptor.group = SimpleNamespace(tls=None)  # type: ignore[attr-defined]
        listener = _Logged(gw, srv, acceptor)  # type: ignore[arg-type]
        listener.events = events
        listener.direct = False  # the loop's own transport: no compiled relay to set up
        listener.start()
        client = socket.create_connection(srv.getsockname())
        try:
            loop.run_until_complete(asyncio.wait_for(made, 10))
            loop.run_until_complete(asyncio.sleep(0))  # the accept task's done callback
        finally:
            client.close()
            listener.close()
    finally:
        srv.close()
        loop.close()
    return events


def test_a_busier_worker_leaves_the_connection_once_then_takes_it() -> None:
    # No other worker took it here (there is none): after the pause it is accepted anyway.
    assert _run((10, 0)) == ["defer", "poll again", "accepted"]
    assert _run((10, 0), multi_accept=True) == ["defer", "poll again", "accepted"]


@pytest.mark.parametrize(
    "share",
    [
        None,  # one worker, or none of its generation but it
        (0, 0),
        (4, 2),  # by two: within the slack
        (16, 13),  # 16 > 13 + 2 + 16/8 is false: within an eighth and two
        (3, 9),  # the least loaded never defers
    ],
)
def test_a_worker_within_the_slack_accepts_at_once(share: tuple[int, int] | None) -> None:
    assert _run(share) == ["accepted"]


def test_one_worker_never_defers() -> None:
    # (After a reload from two workers to one, the retiring ones' listeners are closed.)
    assert _run((50, 0), workers=1) == ["accepted"]


def test_the_slack_is_an_eighth_and_two() -> None:
    assert _run((18, 13)) == ["defer", "poll again", "accepted"]  # 18 > 13 + 2 + 18/8


def test_a_listener_closed_while_it_defers_does_not_poll_again() -> None:
    """A stop (or a pause at ``worker_connections``) during the pause: the timer is
    cancelled and the socket is not polled again by this listener."""

    class ClosedOnDefer(_Logged):
        def _defer(self) -> None:
            super()._defer()
            assert self._timer is not None
            self.close()

    loop = new_event_loop()
    srv = socket.create_server(("127.0.0.1", 0))
    srv.setblocking(False)
    try:
        gw: Any = SimpleNamespace(
            loop=loop,
            accept_share=lambda: (50, 0),
            config=SimpleNamespace(multi_accept=False, worker_processes=2),
        )
        acceptor: Any = SimpleNamespace(group=SimpleNamespace(tls=None))
        listener = ClosedOnDefer(gw, srv, acceptor)
        listener.events = []
        listener.start()
        client = socket.create_connection(srv.getsockname())
        try:
            deadline = loop.time() + 10
            while not listener.events and loop.time() < deadline:
                loop.run_until_complete(asyncio.sleep(0.001))
            assert listener.events == ["defer"]
            assert not listener._on and listener._timer is None
            loop.run_until_complete(asyncio.sleep(gateway.ACCEPT_DEFER * 5))
            assert listener.events == ["defer"]  # not polled again, nothing accepted
        finally:
            client.close()
    finally:
        srv.close()
        loop.close()
