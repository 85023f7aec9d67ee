"""One DNS response read as nginx's resolver reads it (pure: bytes in, a verdict out).

``ngx_resolver_process_response`` and ``ngx_resolver_process_a``
(src/core/ngx_resolver.c): a response that is not a standard query's answer, carries a
wrong id, ``FORMERR``, an rcode above ``REFUSED`` or cannot be parsed is logged and
*ignored* (the query is sent again after the resend timeout, or times out);
``SERVFAIL``/``NXDOMAIN``/``NOTIMP``/``REFUSED`` end the lookup with that code; a truncated
UDP answer is asked again over TCP.  The addresses are the answer's ``A``/``AAAA`` records
reached from the name through its ``CNAME`` chain; with none, a ``CNAME`` is resolved next.
The cache time is the smallest TTL met on the way.  Every record counts, in the order of
the wire: an address repeated in the answer is repeated in the result (nginx makes each one a
peer, so ``proxy_next_upstream_tries`` can try it again), which is why the message is read
with one record per record set (dnspython would merge equal records).

The wire format (names, compression, rdata) is dnspython's (:mod:`dns.message`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype

__all__ = [
    "TIMEDOUT",
    "Answer",
    "Verdict",
    "combine",
    "make_query",
    "read_answer",
    "strerror",
]

#: nginx's ``NGX_RESOLVE_TIMEDOUT`` (``NGX_ETIMEDOUT``).
TIMEDOUT = 110

_ERRORS = ("Format error", "Server failure", "Host not found", "Unimplemented", "Operation refused")


def strerror(code: int) -> str:
    """``ngx_resolver_strerror``."""
    if 0 < code < 6:
        return _ERRORS[code - 1]
    if code == TIMEDOUT:
        return "Operation timed out"
    return "Unknown error"


class Verdict(enum.Enum):
    ADDRESSES = "addresses"  # addresses (possibly none) and a TTL
    SERVICES = "services"  # SRV records (possibly none) and a TTL
    CNAME = "cname"  # no address: resolve ``cname`` next
    ERROR = "error"  # the lookup fails with ``code``
    IGNORE = "ignore"  # logged, then the query waits on
    TRUNCATED = "truncated"  # ask again over TCP


@dataclass(frozen=True, slots=True)
class Answer:
    verdict: Verdict
    addresses: tuple[str, ...] = ()
    ttl: int = 0
    cname: str = ""
    code: int = 0
    #: For :attr:`Verdict.IGNORE`: nginx's error-log text.
    log: str = ""
    #: For :attr:`Verdict.SERVICES`: (priority, weight, port, target) per SRV record.
    services: tuple[tuple[int, int, int, str], ...] = ()


def make_query(name: str, rdtype: dns.rdatatype.RdataType) -> dns.message.QueryMessage:
    """A standard recursive query (nginx sets RD and sends no EDNS)."""
    return dns.message.make_query(name, rdtype, use_edns=False)


def read_answer(wire: bytes, query: dns.message.Message, *, tcp: bool = False) -> Answer:
    """What the response ``wire`` to ``query`` means for the lookup."""
    try:
        msg = dns.message.from_wire(wire, ignore_trailing=True, one_rr_per_rrset=True)
    except (dns.exception.DNSException, ValueError, UnicodeError) as exc:
        kind = type(exc).__name__
        return Answer(Verdict.IGNORE, log=f"invalid DNS response ({kind})")
    flags = msg.flags
    trunc = bool(flags & dns.flags.TC)
    # "if ((flags & 0xf870) != 0x8000 || (trunc && tcp))": a response, opcode QUERY.
    if not flags & dns.flags.QR or msg.opcode() != dns.opcode.QUERY or (trunc and tcp):
        return Answer(
            Verdict.IGNORE,
            log=f"invalid {'TCP' if tcp else 'UDP'} DNS response {msg.id} fl:{flags:04X}",
        )
    code = msg.rcode()
    if code == dns.rcode.FORMERR or code > dns.rcode.REFUSED:
        return Answer(
            Verdict.IGNORE, log=f"DNS error ({code}: {strerror(code)}), query id:{msg.id}"
        )
    qname = query.question[0].name
    if len(msg.question) != 1:
        return Answer(Verdict.IGNORE, log="invalid number of questions in DNS response")
    if msg.question[0].name != qname or msg.question[0].rdtype != query.question[0].rdtype:
        return Answer(Verdict.IGNORE, log=f"unexpected DNS response for {qname.to_text(True)}")
    if msg.id != query.id:
        return Answer(
            Verdict.IGNORE,
            log=f"wrong ident {msg.id} in DNS response for {qname.to_text(True)}, "
            f"expect {query.id}",
        )
    if trunc:
        return Answer(Verdict.TRUNCATED)
    if code != dns.rcode.NOERROR:
        return Answer(Verdict.ERROR, code=code)
    return _addresses(msg, qname, query.question[0].rdtype)


def combine(answers: Sequence[Answer]) -> Answer:
    """The lookup's outcome from the answers to its ``A`` and ``AAAA`` queries, taken in the
    order nginx sends them (``A`` first), as ``ngx_resolver_process_a`` folds them into one
    node (``rn->naddrs``/``rn->naddrs6`` unknown until answered, ``rn->code``):

    * an error answer to either query ends the lookup with that error, even when the other
      one brought addresses (the first error's code is kept unless the last answer carries
      its own);
    * otherwise the addresses of both answers, ``A`` first; a ``CNAME`` is not followed then;
    * with no address at all, the ``CNAME`` of the *last* answer is resolved next (a
      ``CNAME`` in an earlier answer is forgotten: nginx "goto next" while the other query is
      outstanding); with no ``CNAME`` there either, the lookup fails with "Host not found"
      (``code == 0 && nan == 0`` ... ``NGX_RESOLVE_NXDOMAIN``).

    Each answer is :attr:`Verdict.ADDRESSES` (possibly empty), :attr:`Verdict.CNAME` or
    :attr:`Verdict.ERROR`; the result is one of these three.
    """
    code = 0
    addresses: list[str] = []
    ttls: list[int] = []
    for i, ans in enumerate(answers):
        last = i == len(answers) - 1
        mine = ans.code if ans.verdict is Verdict.ERROR else 0
        if not mine and code:
            mine = code
        if mine:
            if not last:
                code = mine
                continue
            return Answer(Verdict.ERROR, code=mine)
        if ans.addresses or ans.verdict is Verdict.CNAME:
            ttls.append(ans.ttl)
        addresses.extend(ans.addresses)
        if not last:
            continue
        if addresses:
            return Answer(Verdict.ADDRESSES, tuple(addresses), min(ttls))
        if ans.verdict is Verdict.CNAME:
            return Answer(Verdict.CNAME, ttl=min(ttls), cname=ans.cname)
    return Answer(Verdict.ERROR, code=3)


def _addresses(msg: dns.message.Message, qname: dns.name.Name, rdtype: int) -> Answer:
    name = qname
    ttls: list[int] = []
    seen: set[dns.name.Name] = set()
    if rdtype == dns.rdatatype.SRV:
        return _services(msg, qname)
    while True:
        addrs = [
            (rrset.ttl, rd.address)
            for rrset in msg.answer
            if rrset.name == name and rrset.rdtype == rdtype and rrset.rdclass == dns.rdataclass.IN
            for rd in rrset
        ]
        if addrs:
            ttl = min([t for t, _ in addrs] + ttls)
            return Answer(Verdict.ADDRESSES, tuple(a for _, a in addrs), ttl)
        cname = next(
            (
                rrset
                for rrset in msg.answer
                if rrset.name == name and rrset.rdtype == dns.rdatatype.CNAME
            ),
            None,
        )
        if cname is None or name in seen:
            break
        seen.add(name)
        ttls.append(cname.ttl)
        name = cname[0].target
    if ttls:
        return Answer(Verdict.CNAME, ttl=min(ttls), cname=name.to_text(omit_final_dot=True))
    return Answer(Verdict.ADDRESSES)


def _services(msg: dns.message.Message, qname: dns.name.Name) -> Answer:
    """SRV records of ``qname`` (``ngx_resolver_process_srv``: a weight of 0 counts as 1);
    with none, the ``CNAME`` of ``qname`` to ask next."""
    found: list[tuple[int, int, int, str]] = []
    ttls: list[int] = []
    for rrset in msg.answer:
        if rrset.name == qname and rrset.rdtype == dns.rdatatype.SRV:
            ttls.append(rrset.ttl)
            for rd in rrset:
                target = rd.target.to_text(omit_final_dot=True)
                found.append((rd.priority, rd.weight or 1, rd.port, target))
    if not found:
        # ngx_resolver_process_srv: no SRV record but a CNAME: its target is asked for SRV.
        cname = next(
            (r for r in msg.answer if r.name == qname and r.rdtype == dns.rdatatype.CNAME), None
        )
        if cname is not None:
            target = cname[0].target.to_text(omit_final_dot=True)
            return Answer(Verdict.CNAME, ttl=cname.ttl, cname=target)
    return Answer(Verdict.SERVICES, ttl=min(ttls, default=0), services=tuple(found))
