"""The hash functions of nginx's ``ip_hash``, ``hash KEY`` and ``hash KEY consistent``.

Pure functions, byte for byte what ``src/http/modules/ngx_http_upstream_ip_hash_module.c``
and ``ngx_http_upstream_hash_module.c`` compute, so that a fleet mixing nginx and wsgate
sends each key to the same server (https://nginx.org/en/docs/http/ngx_http_upstream_module.html#hash,
NGINX-SEMANTICS.md §7).  ``crc32`` is nginx's ``ngx_crc32_*``: the IEEE/zlib CRC-32.

The selection loops that use these (eligibility, retries, the round-robin fallback) are in
:mod:`wsgate.upstream.methods`.
"""

from __future__ import annotations

import bisect
import ipaddress
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "IP_HASH_SEED",
    "KETAMA_POINTS",
    "Ring",
    "build_ring",
    "hash_step",
    "ip_hash_key",
    "ip_hash_step",
    "key_bytes",
    "ketama_base",
]

#: ``iphp->hash = 89`` in ``ngx_http_upstream_init_ip_hash_peer``.
IP_HASH_SEED = 89
#: "ketama consistent hashing": ``npoints = peer->weight * 160``.
KETAMA_POINTS = 160

_PSEUDO_ADDR = b"\0\0\0"  # ngx_http_upstream_ip_hash_pseudo_addr, for non-IP clients


def key_bytes(key: str) -> bytes:
    """The bytes nginx hashes for a rendered key.

    wsgate decodes request bytes as latin-1, so encoding back as latin-1 restores the bytes
    the client sent; characters beyond latin-1 can only come from the configuration text,
    which nginx reads as UTF-8 bytes.
    """
    try:
        return key.encode("latin-1")
    except UnicodeEncodeError:
        return key.encode("utf-8")


def ip_hash_key(remote_addr: str) -> bytes:
    """The bytes ``ip_hash`` hashes for a client address (``$remote_addr`` text).

    "The first three octets of the client IPv4 address, or the entire IPv6 address, are used
    as a hashing key."  nginx takes the socket address: 3 bytes of ``sin_addr`` for AF_INET,
    16 of ``sin6_addr`` for AF_INET6 (an IPv4-mapped ``::ffff:a.b.c.d`` client on a dual-stack
    socket is AF_INET6), and 3 zero bytes otherwise (unix-domain clients).  Text that is not
    an IP address gets the 3 zero bytes too.
    """
    text = remote_addr
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return _PSEUDO_ADDR
    if addr.version == 4:
        return addr.packed[:3]
    return addr.packed


def ip_hash_step(h: int, addr: bytes) -> int:
    """One round of ``hash = (hash * 113 + addr[i]) % 6271`` over the key bytes."""
    for b in addr:
        h = (h * 113 + b) % 6271
    return h


def hash_step(key: bytes, rehash: int) -> int:
    """One round of ``hash KEY`` ("compatible with Cache::Memcached"):
    ``(crc32([REHASH] KEY) >> 16) & 0x7fff``, with REHASH (decimal) omitted when 0."""
    data = str(rehash).encode("ascii") + key if rehash > 0 else key
    return (zlib.crc32(data) >> 16) & 0x7FFF


def ketama_base(server: str) -> bytes:
    """``HOST \\0 PORT`` for a ``server`` address as written ("compatible with
    Cache::Memcached::Fast: crc32(HOST \\0 PORT PREV_HASH)").

    The port is the run of digits after the last ``:`` (none written: empty, not 80); for
    ``unix:PATH`` (``unix:`` matched case-insensitively) the host is PATH and the port is
    empty.  ``[::1]:80`` keeps its brackets in the host, as nginx does.
    """
    raw = server.encode("utf-8")
    if raw[:5].lower() == b"unix:":
        return raw[5:] + b"\0"
    j = len(raw)
    while j > 0 and 0x30 <= raw[j - 1] <= 0x39:
        j -= 1
    if j > 0 and raw[j - 1] == 0x3A:  # ':' right before the digits (or at the very end)
        return raw[: j - 1] + b"\0" + raw[j:]
    return raw + b"\0"


@dataclass(frozen=True, slots=True)
class Ring:
    """The sorted ketama points: ``hashes[i]`` belongs to the server written ``names[i]``."""

    hashes: tuple[int, ...]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.hashes)

    def find(self, key: bytes) -> int:
        """``ngx_http_upstream_find_chash_point``: the first point with a hash ``>=``
        ``crc32(key)``; may be ``len(self)``, which the caller wraps to 0."""
        return bisect.bisect_left(self.hashes, zlib.crc32(key))


def build_ring(servers: Iterable[tuple[str, int]]) -> Ring:
    """``ngx_http_upstream_init_chash``: ``weight * 160`` points per ``(name, weight)``.

    Every peer contributes, ``down`` ones included, in configuration order; a name that
    resolved to several addresses contributes once per address (the duplicates collapse).
    Points are ``crc32(base + prev_hash as 4 little-endian bytes)`` chained from
    ``prev_hash = 0``, sorted by unsigned value, and for equal hashes only the first is kept
    (nginx uses an unstable qsort there; a stable sort keeps the earlier server: such a
    32-bit collision between different servers is the only case where the two may differ).
    """
    points: list[tuple[int, int, str]] = []
    seq = 0
    for name, weight in servers:
        base = ketama_base(name)
        base_crc = zlib.crc32(base)
        prev = 0
        for _ in range(weight * KETAMA_POINTS):
            h = zlib.crc32(struct.pack("<I", prev), base_crc)
            points.append((h, seq, name))
            seq += 1
            prev = h
    points.sort()
    hashes: list[int] = []
    names: list[str] = []
    for h, _, name in points:
        if hashes and hashes[-1] == h:
            continue
        hashes.append(h)
        names.append(name)
    return Ring(tuple(hashes), tuple(names))
