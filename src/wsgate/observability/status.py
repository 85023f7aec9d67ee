"""``stub_status``: connection and request counters, and the page nginx prints from them.

https://nginx.org/en/docs/http/ngx_http_stub_status_module.html and
``ngx_http_stub_status_handler`` (NGINX-SEMANTICS.md §9).  nginx keeps six atomic counters in
shared memory (``ngx_stat_accepted``, ``handled``, ``requests``, ``active``, ``reading``,
``writing``) and derives ``Waiting`` as ``active - (reading + writing)``.
:class:`ConnectionCounters` holds them in a plain list for one process;
:class:`wsgate.shm.SharedCounters` keeps one row per worker in shared memory and sums the rows.
Both have the ``increment``/``decrement``/``snapshot`` methods of :class:`StatusCounters`.

Who moves which counter (one connection is in at most one of Reading and Writing):

* :class:`~wsgate.server.gateway.Gateway` on accept: ``accepts``, ``handled`` and ``active``
  up; ``active`` down when the connection ends (its task, or the tunnel it became, which
  outlives the task; ``Gateway.connection_closed``).  "handled: ... Generally, the parameter
  value is the same as accepts unless some resource limits have been reached" — wsgate has no
  such limit yet, so they are always equal.
* :class:`~wsgate.proxy.front.FrontConnection`: ``requests`` and ``reading`` up when a
  request's first bytes arrive; ``reading`` → ``writing`` once its head is complete;
  ``writing`` down when the request is done (a tunnel: when it closes, so a live tunnel is
  Writing for its whole life, and nothing is counted on its hot path).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

__all__ = [
    "ACCEPTS",
    "ACTIVE",
    "HANDLED",
    "READING",
    "REQUESTS",
    "WRITING",
    "ConnectionCounters",
    "StatusCounters",
    "StatusSnapshot",
    "stub_status_page",
]

#: Counter indexes, in the order of nginx's ``ngx_stat_*`` variables.
ACCEPTS, HANDLED, REQUESTS, ACTIVE, READING, WRITING = range(6)


class StatusSnapshot(NamedTuple):
    """The numbers of one ``stub_status`` page (and the ``$connections_*`` variables)."""

    active: int
    accepts: int
    handled: int
    requests: int
    reading: int
    writing: int
    waiting: int


class StatusCounters(Protocol):
    """What the gateway and the handler call: :class:`ConnectionCounters` or
    :class:`wsgate.shm.SharedCounters`."""

    def increment(self, index: int, n: int = 1) -> None: ...

    def decrement(self, index: int, n: int = 1) -> None: ...

    def snapshot(self) -> StatusSnapshot: ...


class ConnectionCounters:
    """nginx's ``ngx_stat_*`` counters for one process.

    Kept on the :class:`~wsgate.server.gateway.Gateway`, not on the configuration, because
    nginx's counters "live in shared memory" and survive reloads.
    """

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values = [0, 0, 0, 0, 0, 0]

    def increment(self, index: int, n: int = 1) -> None:
        """``ngx_atomic_fetch_add(ngx_stat_X, n)``."""
        self._values[index] += n

    def decrement(self, index: int, n: int = 1) -> None:
        """``ngx_atomic_fetch_add(ngx_stat_X, -n)``."""
        self._values[index] -= n

    def snapshot(self) -> StatusSnapshot:
        """All counters at once; Waiting is "ac - (rd + wr)" as nginx computes it."""
        accepts, handled, requests, active, reading, writing = self._values
        return StatusSnapshot(
            active, accepts, handled, requests, reading, writing, active - (reading + writing)
        )


def stub_status_page(s: StatusSnapshot) -> bytes:
    """The body nginx writes, byte for byte (LF line ends, a space before each LF and a leading
    space on the third line: ``" %uA %uA %uA \\n"``)."""
    return (
        f"Active connections: {s.active} \n"
        "server accepts handled requests\n"
        f" {s.accepts} {s.handled} {s.requests} \n"
        f"Reading: {s.reading} Writing: {s.writing} Waiting: {s.waiting} \n"
    ).encode("ascii")
