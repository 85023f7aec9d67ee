"""A scriptable DNS server on loopback (UDP and TCP on one port) for the resolver tests.

Answers are built with dnspython from :attr:`FakeDns.zone`: name → :class:`Records`.  Every
question is recorded in :attr:`FakeDns.queries` as ``(name, type, transport)``.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from tests.integration.loopback import HOST, Loop

__all__ = ["FakeDns", "Records", "start_dns", "stop_dns"]


@dataclass
class Records:
    a: list[str] = field(default_factory=list)
    aaaa: list[str] = field(default_factory=list)
    cname: str = ""
    #: SRV records: (priority, weight, port, target).
    srv: list[tuple[int, int, int, str]] = field(default_factory=list)
    ttl: int = 3600
    rcode: int = dns.rcode.NOERROR
    #: The query types answered with :attr:`cname` (all when empty).
    cname_types: tuple[str, ...] = ()
    #: The rcode for one query type only ("AAAA": SERVFAIL), over :attr:`rcode`.
    rcode_of: dict[str, int] = field(default_factory=dict)
    #: Set TC on UDP answers (the full answer comes over TCP).
    truncate: bool = False
    #: Never answer.
    silent: bool = False


@dataclass
class FakeDns:
    zone: dict[str, Records] = field(default_factory=dict)
    queries: list[tuple[str, str, str]] = field(default_factory=list)
    port: int = 0
    closers: list[object] = field(default_factory=list)

    def count(self, name: str, rdtype: str = "A") -> int:
        return sum(1 for n, t, _ in self.queries if n == name and t == rdtype)

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        query = dns.message.from_wire(wire)
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        self.queries.append((name, dns.rdatatype.to_text(q.rdtype), transport))
        rec = self.zone.get(name)
        resp = dns.message.make_response(query)
        if rec is None:
            resp.set_rcode(dns.rcode.NXDOMAIN)
            return resp.to_wire()
        if rec.silent:
            return None
        rcode = rec.rcode_of.get(dns.rdatatype.to_text(q.rdtype), rec.rcode)
        resp.set_rcode(rcode)
        if rec.truncate and transport == "udp":
            resp.flags |= dns.flags.TC
            return resp.to_wire()
        if rcode == dns.rcode.NOERROR:
            if rec.cname and (
                not rec.cname_types or dns.rdatatype.to_text(q.rdtype) in rec.cname_types
            ):
                resp.answer.append(
                    dns.rrset.from_text(q.name, rec.ttl, "IN", "CNAME", rec.cname + ".")
                )
            elif q.rdtype == dns.rdatatype.A and rec.a:
                resp.answer.append(dns.rrset.from_text_list(q.name, rec.ttl, "IN", "A", rec.a))
            elif q.rdtype == dns.rdatatype.SRV and rec.srv:
                texts = [f"{p} {w} {port} {t}." for p, w, port, t in rec.srv]
                resp.answer.append(dns.rrset.from_text_list(q.name, rec.ttl, "IN", "SRV", texts))
            elif q.rdtype == dns.rdatatype.AAAA and rec.aaaa:
                resp.answer.append(
                    dns.rrset.from_text_list(q.name, rec.ttl, "IN", "AAAA", rec.aaaa)
                )
        return resp.to_wire()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, dns_: FakeDns) -> None:
        self.dns = dns_
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.dns.answer(data, "udp")
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


def start_dns(bg: Loop) -> FakeDns:
    """A :class:`FakeDns` listening on ``127.0.0.1:PORT`` over UDP and TCP."""
    server = FakeDns()

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                reply = server.answer(await reader.readexactly(length), "tcp")
                if reply is not None:
                    writer.write(struct.pack("!H", len(reply)) + reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def start() -> None:
        # One port number for TCP and UDP: take a free TCP port, then the same UDP port (on a
        # busy machine it may be taken: try another).
        loop = asyncio.get_running_loop()
        for _ in range(20):
            stream = await asyncio.start_server(tcp, HOST, 0)
            port = stream.sockets[0].getsockname()[1]
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Udp(server), local_addr=(HOST, port)
                )
            except OSError:
                stream.close()
                continue
            server.port = port
            server.closers += [transport, stream]
            return
        raise OSError("no port free for both TCP and UDP")

    asyncio.run_coroutine_threadsafe(start(), bg.loop).result(5)
    return server


def stop_dns(bg: Loop, server: FakeDns) -> None:
    """Close the server's sockets (before the loop closes)."""

    async def stop() -> None:
        for c in server.closers:
            c.close()  # type: ignore[attr-defined]

    asyncio.run_coroutine_threadsafe(stop(), bg.loop).result(5)
