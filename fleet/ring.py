"""Where ``hash $arg_user consistent`` should send each key, from the ketama ring.

The ring is built as wsgate builds it (:func:`wsgate.upstream.hashing.build_ring`, which
``tests/integration/test_nginx_hash.py`` checks against a real nginx): 160 points per
server.  The nodes' servers are ``server NAME resolve`` lines, and wsgate gives each address
of a resolved name its own points, hashed as ``IP:PORT`` (nginx would hash the name for all
of them: docs/load-balancing.md), so the ring here is the one of the backends' addresses
that are in DNS (a name with no address has no peer and so no point).  It is the same ring
for the per-backend names of ``/ws`` and the one name of every backend of ``/single``.  What
the simulation checks against it is the fleet: that every node sends each key to the
backend the ring names, and that a change of DNS moves exactly the keys whose owner the
ring changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fleet.conf import BACKEND_PORT, BACKENDS
from fleet.net import host
from wsgate.upstream.hashing import build_ring, key_bytes

__all__ = ["moved", "owners", "point_name"]


def point_name(backend: str) -> str:
    """What the ring hashes for ``backend``: its address and port (``198.18.0.21:9000``)."""
    return f"{host(backend).addr}:{BACKEND_PORT}"


def owners(keys: Iterable[str], backends: Iterable[str]) -> dict[str, str]:
    """``{key: backend}`` for the ring of ``backends`` (in configuration order)."""
    present = [b for b in BACKENDS if b in set(backends)]
    ring = build_ring((point_name(b), 1) for b in present)
    by_name = {point_name(b): b for b in present}
    out = {}
    for key in keys:
        i = ring.find(key_bytes(key)) % len(ring)
        out[key] = by_name[ring.names[i]]
    return out


def moved(before: Mapping[str, str], after: Mapping[str, str]) -> set[str]:
    """The keys whose backend differs between two maps (keys of ``before``)."""
    return {k for k, b in before.items() if after.get(k) != b}
