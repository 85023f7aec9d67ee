"""An asynchronous DNS client with nginx's resolver policy, one per ``resolver`` directive
per worker.

Why not a library's resolver: dnspython's ``dns.asyncresolver`` and c-ares (aiodns/pycares)
each bring their own policy (every server tried in turn on ``SERVFAIL``, their own retry
timers, their own cache with no ``valid=`` override, ``/etc/resolv.conf`` search lists),
and nginx documents and tests its own: name servers "queried in a round-robin fashion", a
query resent every 5 seconds to the next server until ``resolver_timeout``, an error answer
final and never cached, answers cached for their TTL or ``valid=``, both ``A`` and ``AAAA``
asked unless ``ipv4=off``/``ipv6=off``, a truncated answer asked again over TCP.  So the
policy is here, in a few lines of asyncio, and the wire format is dnspython's (maintained,
typed, pure Python: names, compression and rdata are where a hand-written parser goes
wrong); see :mod:`wsgate.resolver.answers`.  Nothing here blocks the event loop: every
query is a datagram or stream endpoint of the loop, and no ``getaddrinfo`` is called.

Concurrent lookups of one name share one query (nginx's ``rn->waiting``): a request that
goes away does not cancel it for the others.
"""

from __future__ import annotations

import asyncio
import functools
import random
import socket
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.rdatatype

from wsgate.config.model import Resolver as ResolverConf
from wsgate.errors import WsgateError
from wsgate.resolver.answers import (
    TIMEDOUT,
    Answer,
    Verdict,
    combine,
    make_query,
    read_answer,
    strerror,
)

__all__ = ["EXPIRE", "RESEND_TIMEOUT", "TCP_TIMEOUT", "ResolveError", "Resolved", "Resolver"]

#: ``r->resend_timeout``: a query unanswered this long goes to the next server.
RESEND_TIMEOUT = 5.0
#: ``r->tcp_timeout``.
TCP_TIMEOUT = 5.0
#: ``r->expire``: a cached name unused this long is dropped (so that names a client makes up,
#: ``proxy_pass http://$host``, cannot fill the cache).
EXPIRE = 30.0
#: CNAMEs followed at most (nginx: ``NGX_RESOLVER_MAX_RECURSION``).
MAX_RECURSION = 50

Log = Callable[[str, str], None]


class ResolveError(WsgateError):
    """A name could not be resolved: ``code`` is nginx's (3 "Host not found", 110
    "Operation timed out"...); ``str()`` is nginx's ``(3: Host not found)``."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"({code}: {strerror(code)})")


@dataclass(frozen=True, slots=True)
class Service:
    """One address of a service (``server ... service=``): from an SRV record's target."""

    address: str
    port: int
    weight: int
    #: Not of the smallest priority: nginx makes it a backup server.
    backup: bool
    #: The SRV target (the peer's server name).
    target: str


@dataclass(frozen=True, slots=True)
class Resolved:
    """A name's addresses and the loop time until which they may be used."""

    addresses: tuple[str, ...]
    expires: float


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable: the query waits for its resend, as in nginx


class Resolver:
    """The worker's client for one ``resolver`` directive: its cache and queries."""

    def __init__(
        self,
        conf: ResolverConf,
        loop: asyncio.AbstractEventLoop,
        log: Log,
        *,
        resend: float = RESEND_TIMEOUT,
        rng: random.Random | None = None,
    ) -> None:
        self.conf = conf
        self.loop = loop
        self.log = log
        self.resend = resend
        self.rng = rng or random.Random()
        self._next = 0
        #: name -> (answer, loop time of its last use), least recently used first.
        self._cache: OrderedDict[str, tuple[Resolved, float]] = OrderedDict()
        self._pending: dict[str, asyncio.Task[Resolved]] = {}

    # -- public -------------------------------------------------------------------------------
    async def resolve(self, name: str, timeout: float) -> tuple[str, ...]:
        """The addresses of ``name``: IPv4 first as received when the answer is fresh, in a
        random rotation when it came from the cache (``ngx_resolver_export`` with ``rotate``
        0 and 1); raises :class:`ResolveError`.  The addresses of one answer keep the
        order of the wire, repeated ones included (nginx makes each record a peer)."""
        entry = self._cache.get(name.lower())
        cached = entry is not None and entry[0].expires > self.loop.time()
        found = await self.lookup(name, timeout)
        addrs = found.addresses
        if cached and len(addrs) > 1:
            d = self.rng.randrange(len(addrs))
            addrs = addrs[d:] + addrs[:d]
        return addrs

    async def lookup(self, name: str, timeout: float, depth: int = 0) -> Resolved:
        """``name``'s cached or freshly resolved addresses (may be empty only for a
        ``service`` lookup's caller to decide; an empty answer is NXDOMAIN here)."""
        key = name.lower()
        now = self.loop.time()
        self._expire(now)
        entry = self._cache.get(key)
        if entry is not None:
            hit = entry[0]
            if hit.expires > now:
                self._cache[key] = (hit, now)
                self._cache.move_to_end(key)
                return hit
            del self._cache[key]
        task = self._pending.get(key)
        if task is None:
            task = self.loop.create_task(self._query_name(key, now + timeout, depth))
            self._pending[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            raise ResolveError(TIMEDOUT) from None

    async def lookup_service(
        self, name: str, service: str, timeout: float
    ) -> tuple[tuple[Service, ...], float]:
        """``ngx_resolve_name`` with ``ctx->service``: the SRV records of ``_SERVICE._tcp.NAME``
        (``SERVICE.NAME`` when the service has a dot), then each target's addresses; the
        smallest priority gives the primary servers, the others are backups.  Returns the
        addresses and when they expire; a ``CNAME`` alone is followed (its target asked for SRV
        records); a target that cannot be resolved is logged and left out; raises
        :class:`ResolveError` when the SRV lookup itself fails, or when no target gave an
        address and one failed (with that error, "Host not found" first)."""
        qname = f"{service}.{name}" if "." in service else f"_{service}._tcp.{name}"
        deadline = self.loop.time() + timeout
        first = self._server()
        expires = float("inf")
        for _ in range(MAX_RECURSION + 1):
            try:
                answer = await asyncio.wait_for(
                    self._query(qname, dns.rdatatype.SRV, first, deadline),
                    max(0.0, deadline - self.loop.time()),
                )
            except TimeoutError:
                raise ResolveError(TIMEDOUT) from None
            if answer.verdict is Verdict.ERROR:
                raise ResolveError(answer.code)
            expires = min(expires, self.loop.time() + self._valid(answer.ttl))
            if answer.verdict is not Verdict.CNAME:
                break
            qname = answer.cname  # a CNAME alone: its target is asked for SRV records
        else:
            raise ResolveError(3)
        if not answer.services:
            raise ResolveError(3)
        lowest = min(p for p, _, _, _ in answer.services)
        found: list[Service] = []
        codes: list[int] = []
        for priority, weight, port, target in answer.services:
            try:
                got = await self.lookup(target, max(0.0, deadline - self.loop.time()))
            except ResolveError as exc:
                self.log(
                    "error",
                    f"{target} could not be resolved {exc} while resolving service "
                    f"{service} of {name}",
                )
                codes.append(exc.code)
                continue
            expires = min(expires, got.expires)
            found += [Service(a, port, weight, priority != lowest, target) for a in got.addresses]
        if not found and codes:
            # ngx_resolver_report_srv: no address at all is the first target's error, or
            # "Host not found" when any target had it (so a SERVFAIL keeps the servers).
            raise ResolveError(3 if 3 in codes else codes[0])
        return tuple(found), expires

    # -- internals ----------------------------------------------------------------------------
    def _done(self, key: str, task: asyncio.Task[Resolved]) -> None:
        if self._pending.get(key) is task:
            del self._pending[key]
        if not task.cancelled():
            task.exception()  # retrieved: a waiter that left must not leave it unlogged

    def _server(self) -> int:
        """``rn->last_connection = r->last_connection++``: each name starts at the next
        server."""
        i = self._next
        self._next = (i + 1) % len(self.conf.servers)
        return i

    async def _query_name(self, name: str, deadline: float, depth: int) -> Resolved:
        conf = self.conf
        first = self._server()
        types: list[dns.rdatatype.RdataType] = []
        if conf.ipv4:
            types.append(dns.rdatatype.A)
        if conf.ipv6:
            types.append(dns.rdatatype.AAAA)
        answers = await asyncio.gather(*(self._query(name, t, first, deadline) for t in types))
        answer = combine(answers)
        now = self.loop.time()
        if answer.verdict is Verdict.ERROR:
            raise ResolveError(answer.code)
        if answer.verdict is Verdict.CNAME:
            if depth >= MAX_RECURSION:
                raise ResolveError(3)
            target = await self.lookup(answer.cname, max(0.0, deadline - now), depth + 1)
            expires = min(target.expires, now + self._valid(answer.ttl))
            resolved = Resolved(target.addresses, expires)
        else:
            resolved = Resolved(answer.addresses, now + self._valid(answer.ttl))
        if resolved.expires > self.loop.time():
            self._cache[name] = (resolved, self.loop.time())
            self._cache.move_to_end(name)
        return resolved

    def _expire(self, now: float) -> None:
        """``ngx_resolver_expire``: drop up to two names unused for :data:`EXPIRE` seconds
        (or expired), the least recently used first."""
        for _ in range(2):
            if not self._cache:
                return
            key, (found, used) = next(iter(self._cache.items()))
            if used + EXPIRE > now and found.expires > now:
                return
            del self._cache[key]

    def _valid(self, ttl: int) -> float:
        """``valid=`` "allows overriding" the TTL."""
        return self.conf.valid if self.conf.valid is not None else float(ttl)

    async def _query(
        self, name: str, rdtype: dns.rdatatype.RdataType, first: int, deadline: float
    ) -> Answer:
        """One question, resent to the next server every :attr:`resend` seconds until
        ``deadline`` (then :class:`ResolveError` 110)."""
        try:
            query = make_query(name, rdtype)
            wire = query.to_wire()
        except (dns.exception.DNSException, UnicodeError, ValueError):
            # ngx_resolver_create_name_query: a name that cannot be asked (an empty label,
            # more than 255 bytes) is NGX_DECLINED, which nginx reports as "Host not found".
            raise ResolveError(3) from None
        servers = self.conf.servers
        i = first
        while True:
            window = min(self.resend, deadline - self.loop.time())
            if window <= 0:
                raise ResolveError(TIMEDOUT)
            host, port = servers[i % len(servers)]
            answer = await self._udp(host, port, wire, query, window)
            if answer is not None and answer.verdict is Verdict.TRUNCATED:
                answer = await self._tcp(host, port, wire, query, min(TCP_TIMEOUT, window))
            if answer is not None:
                return answer
            i += 1

    async def _udp(
        self, host: str, port: int, wire: bytes, query: dns.message.Message, window: float
    ) -> Answer | None:
        end = self.loop.time() + window
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            transport, proto = await self.loop.create_datagram_endpoint(
                _Datagrams, remote_addr=(host, port), family=family
            )
        except OSError as exc:
            self.log("error", f"connect() to {host}:{port} failed ({exc.errno}: {exc.strerror})")
            await asyncio.sleep(max(0.0, end - self.loop.time()))
            return None
        try:
            transport.sendto(wire)
            while True:
                left = end - self.loop.time()
                if left <= 0:
                    return None
                try:
                    data = await asyncio.wait_for(proto.queue.get(), left)
                except TimeoutError:
                    return None
                answer = read_answer(data, query)
                if answer.verdict is not Verdict.IGNORE:
                    return answer
                self.log("error", answer.log)
        finally:
            transport.close()

    async def _tcp(
        self, host: str, port: int, wire: bytes, query: dns.message.Message, timeout: float
    ) -> Answer | None:
        async def ask() -> Answer:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(struct.pack("!H", len(wire)) + wire)
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                return read_answer(await reader.readexactly(length), query, tcp=True)
            finally:
                writer.close()

        try:
            answer = await asyncio.wait_for(ask(), timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return None
        if answer.verdict is Verdict.IGNORE:
            self.log("error", answer.log)
            return None
        return answer
