"""Moving WebSocket tunnels off upstream servers: the arithmetic, with no socket or loop.

A *drain* (the ``drain`` parameter of ``server``, or ``upstream_control``'s ``drain``) closes
every open tunnel to a server with a Close 1012 "service restart" (RFC 6455 §7.4.1, IANA
registry), so that clients reconnect and land on another server.  A *rebalance* (the group
grew: a reload added a server, ``resolve`` found a new address, or ``upstream_control``'s
``rebalance``) closes the share of tunnels the old servers hold beyond what their weight
entitles them to.  Both spread the closes over a window, so that the reconnects come at a
steady rate instead of all at once: :func:`moments` gives each tunnel its moment.

Drain state is a set of keys ``UPSTREAM|ADDRESS`` (:func:`key`): the servers written with
``drain`` in the configuration, changed at run time by ``drain``/``undrain`` commands
(:func:`drained`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping

__all__ = ["drained", "excess", "key", "moments", "rebalance_window"]


def key(upstream: str, address: str) -> str:
    """The name of one server of one group in the shared drain state."""
    return f"{upstream}|{address}"


def drained(configured: Iterable[str], runtime: Mapping[str, bool]) -> frozenset[str]:
    """The servers draining now: those written with ``drain``, then each run-time command
    (``True``: drain, ``False``: undrain) overriding the configuration for its server."""
    found = set(configured)
    for k, on in runtime.items():
        if on:
            found.add(k)
        else:
            found.discard(k)
    return frozenset(found)


def moments(n: int, window: float, rng: random.Random | None = None) -> list[float]:
    """Delays (seconds from now) for ``n`` closes spread over ``window``: the window is cut
    into ``n`` equal slices and each close falls at a uniform point of its own slice, the
    slices dealt to the tunnels in a random order.  So every tunnel's moment is uniform over
    the window, and any stretch of the window gets its share of closes (no cluster, as
    ``n`` independent uniform draws would give)."""
    if n <= 0:
        return []
    if window <= 0:
        return [0.0] * n
    r = rng if rng is not None else random.Random()
    step = window / n
    out = [(i + r.random()) * step for i in range(n)]
    r.shuffle(out)
    return out


def excess(counts: Mapping[str, int], weights: Mapping[str, int]) -> dict[str, int]:
    """How many tunnels each server should give up so that the group's tunnels are shared
    by weight: a server of the group keeps ``ceil(total * weight / sum of weights)``; one
    no longer in ``weights`` (removed, down or draining) gives up all of its tunnels.
    Servers under their share give up none (they are where the reconnects should go)."""
    total = sum(counts.values())
    weight_sum = sum(w for w in weights.values() if w > 0)
    out: dict[str, int] = {}
    for address, n in counts.items():
        w = weights.get(address, 0)
        keep = math.ceil(total * w / weight_sum) if weight_sum and w > 0 else 0
        if n > keep:
            out[address] = n - keep
    return out


def rebalance_window(moved: int, total: int, per_minute: float) -> float:
    """Seconds to spread ``moved`` closes over so that at most ``per_minute`` of the group's
    ``total`` tunnels are closed in any minute (``websocket_rebalance FRACTION/m``)."""
    if moved <= 0 or total <= 0 or per_minute <= 0:
        return 0.0
    return 60.0 * moved / (per_minute * total)
