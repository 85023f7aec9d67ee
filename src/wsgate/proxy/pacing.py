"""Sending a response at ``limit_rate``: the I/O half of :mod:`wsgate.http.rate`.

:func:`response_rate` is the moment nginx sets ``r->limit_rate`` (the first write of the
response): ``$limit_rate`` if ``set`` or ``X-Accel-Limit-Rate`` gave it, else the directive.
:func:`send_paced` writes one buffer as nginx's write filter would, in slices no larger than
the allowance, sleeping between them; a response without a rate never comes here (one
``write`` per chunk, as before).  Tunnels are never paced (nginx: ``r->limit_rate = 0`` on
upgrade), nor are proxied responses with ``proxy_buffering off`` or ``X-Accel-Buffering: no``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from wsgate.config.template import Template
from wsgate.config.units import parse_size
from wsgate.http.rate import WriteRate
from wsgate.proxy.endpoint import PeerClosed

if TYPE_CHECKING:
    from wsgate.config.model import LocationSettings
    from wsgate.config.variables import RequestContext
    from wsgate.proxy.endpoint import Endpoint

__all__ = ["accel_limit_rate", "response_rate", "send_paced"]

#: Called with an ``[error]`` text (the request's error log).
LogError = Callable[[str], None]


def _size(value: int | Template, ctx: RequestContext, log: LogError) -> int:
    """``ngx_http_complex_value_size(r, value, 0)``."""
    if isinstance(value, int):
        return value
    text = value.render(ctx.lookup)
    n = parse_size(text)
    if n is None:
        log(f'invalid size "{text}"')
        return 0
    return n


def accel_limit_rate(headers: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> int | None:
    """``X-Accel-Limit-Rate`` of an upstream response (the first one; ``ngx_atoi``: digits
    only, anything else ignored), or None."""
    for name, value in headers:
        if name.lower() == "x-accel-limit-rate":
            return int(value) if value.isascii() and value.isdigit() else None
    return None


def response_rate(
    settings: LocationSettings, ctx: RequestContext, log: LogError
) -> WriteRate | None:
    """The response's rate, read once (``r->limit_rate_set``); None: unlimited."""
    if ctx.limit_rate is None:
        ctx.limit_rate = _size(settings.limit_rate, ctx, log)
    if not ctx.limit_rate:
        return None
    after = _size(settings.limit_rate_after, ctx, log)
    return WriteRate(ctx.limit_rate, after, int(ctx.start))


async def send_paced(
    ep: Endpoint,
    data: bytes,
    rate: WriteRate,
    sent: int,
    clock: Callable[[], float] = time.time,
    tally: Callable[[int], None] | None = None,
) -> int:
    """Write ``data`` no faster than ``rate`` allows, ``sent`` bytes of the response (its head
    included) having gone before; returns the new count.  ``tally`` is told of each slice as
    it is written (a response cut short then counts what went)."""
    view = memoryview(data)
    while view:
        allowance = rate.allowance(sent, clock())
        if allowance <= 0:
            await _pause(ep, rate.wait(allowance))
            continue
        piece = view[:allowance]
        ep.write(bytes(piece))
        if tally is not None:
            tally(len(piece))
        await ep.drain()
        view = view[len(piece) :]
        pause = rate.pause_after(sent, sent + len(piece))
        sent += len(piece)
        if pause > 0:
            await _pause(ep, pause, last=not view)
    return sent


async def _pause(ep: Endpoint, seconds: float, last: bool = False) -> None:
    """Wait ``seconds``; :class:`PeerClosed` when the client closes (or sends EOF) first.
    nginx watches the client's side of a delayed response too (``ngx_http_test_reading``,
    ``ngx_http_upstream_check_broken_connection``) and ends the request at once, so a client
    gone during a long pause is not counted as writing until the pause ends.  ``last``: the
    pause after the buffer's last slice, which was written whole: it just ends (a client that
    has the whole response and closes is no error, and its bytes are counted)."""
    gone = ep.gone()
    if not gone.done():
        pause = asyncio.ensure_future(asyncio.sleep(seconds))
        await asyncio.wait((pause, gone), return_when=asyncio.FIRST_COMPLETED)
        if not gone.done():
            return
        pause.cancel()
    if not last:
        raise PeerClosed("the client closed the connection while the response was delayed")
