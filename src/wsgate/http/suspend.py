"""Phase decisions that suspend a request and then run the same handler again.

nginx's access handlers return ``NGX_AGAIN`` while they wait (``auth_request`` for its
subrequest); the phase engine calls the same handler again when the wait is over, and the
handler then finds its result in the request's module context.  A handler of
:mod:`wsgate.http.phases` does the same by returning one of these decisions: the asyncio
layer (:class:`wsgate.proxy.exchange.Exchange`) performs it, stores what came out where the
decision says, and walks on from the handler that returned it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wsgate.config.variables import RequestContext

__all__ = ["Await", "Offload", "Pause", "Subrequest", "Suspend"]


@dataclass(frozen=True, slots=True)
class Offload:
    """Run ``job`` in the worker's bounded thread pool (file reads and password hashes, which
    would block the event loop), then call the handler again; ``job`` keeps its result."""

    job: Callable[[], None]


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait ``seconds`` (``auth_delay``), then call the handler again."""

    seconds: float


@dataclass(slots=True, eq=False)
class Subrequest:
    """Run a subrequest for ``uri`` (``ngx_http_subrequest``), then call the handler again.

    The performer fills ``status`` (the subrequest's response status, as
    ``ngx_http_auth_request_done`` reads ``r->headers_out.status``), ``www_authenticate``
    (the ``WWW-Authenticate`` fields of its upstream's response) and ``ctx`` (the
    subrequest's variables, for ``auth_request_set``), and sets ``done``.
    """

    uri: str
    status: int = 0
    www_authenticate: Sequence[tuple[str, str]] = ()
    ctx: RequestContext | None = None
    done: bool = field(default=False)


@dataclass(frozen=True, slots=True)
class Await:
    """Await ``call()`` on the event loop, then call the handler again; ``call`` keeps its
    result (a ``limit_conn``/``limit_req`` zone kept in Redis: :mod:`wsgate.limits_redis`).
    ``call`` never raises and bounds its own wait."""

    call: Callable[[], Awaitable[None]]


#: A decision after which the same handler runs again.
Suspend = Offload | Pause | Subrequest | Await
