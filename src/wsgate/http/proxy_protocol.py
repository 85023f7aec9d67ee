"""The PROXY protocol header a load balancer sends before the client's bytes (``listen ...
proxy_protocol``); pure: bytes in, a header and a length out.

https://nginx.org/en/docs/http/ngx_http_core_module.html#listen: "The proxy_protocol
parameter (1.5.12) allows specifying that all connections accepted on this port should use
the PROXY protocol."  Versions 1 (text) and 2 (binary) are read as nginx's
``ngx_proxy_protocol_read`` reads them (``src/core/ngx_proxy_protocol.c``), with its words for
what it refuses:

- v1: ``PROXY TCP4|TCP6 SRC DST SRCPORT DSTPORT\\r\\n``; an address is any run of hex digits,
  ``:`` and ``.`` (nginx checks nothing more), a port a decimal 0..65535.  ``PROXY UNKNOWN
  ...\\r\\n`` is skipped and leaves no address.  Anything else is ``broken header: "..."``
  (the bytes up to the first CR or LF).
- v2: the 12-byte signature, version 2 (else ``unknown PROXY protocol version: N``), a length
  that must fit in what was read (else ``header is too large``).  Only the ``PROXY`` command
  over ``STREAM`` with ``AF_INET``/``AF_INET6`` gives an address; ``LOCAL``, other transports
  and families are skipped, leaving none.  An address block shorter than its family needs
  closes the connection without a log line, as in nginx.  What follows the addresses is the
  TLVs (:func:`tlv`).

nginx reads the header from the connection's first read and closes the connection if it is
not complete there; wsgate reads on until the header is complete or ``limit`` bytes are read
(:func:`complete`), then parses the same way, so a header split across TCP segments is read,
and anything nginx refuses is still refused.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "MAX_HEADER",
    "SIGNATURE",
    "TLV_NAMES",
    "TLV_SSL_NAMES",
    "ProxyHeader",
    "ProxyProtocolError",
    "complete",
    "parse",
    "tlv",
]

#: ``NGX_PROXY_PROTOCOL_MAX_HEADER``: what nginx peeks for a header on an ``ssl`` port.
MAX_HEADER = 4096
#: ``ngx_proxy_protocol_signature``: the first 12 bytes of a v2 header.
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED = 16
_HEX = frozenset(b"0123456789abcdefABCDEF:.")

#: ``ngx_proxy_protocol_tlv_entries``: ``$proxy_protocol_tlv_NAME``.
TLV_NAMES = {"alpn": 0x01, "authority": 0x02, "unique_id": 0x05, "ssl": 0x20, "netns": 0x30}
#: ``ngx_proxy_protocol_tlv_ssl_entries``: ``$proxy_protocol_tlv_ssl_NAME`` (sub-TLVs of
#: ``ssl``), plus ``verify``, the ``ssl`` TLV's 32-bit verify field.
TLV_SSL_NAMES = {"version": 0x21, "cn": 0x22, "cipher": 0x23, "sig_alg": 0x24, "key_alg": 0x25}


class ProxyProtocolError(Exception):
    """The header is refused and the connection closed; ``message`` is nginx's error-level
    line, empty where nginx closes without one."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """``ngx_proxy_protocol_t``: ``$proxy_protocol_addr``, ``$proxy_protocol_port``,
    ``$proxy_protocol_server_addr``, ``$proxy_protocol_server_port``, and the raw TLVs."""

    src_addr: str
    dst_addr: str
    src_port: int
    dst_port: int
    tlvs: bytes = b""


def complete(buf: bytes | bytearray, limit: int) -> bool:
    """Whether :func:`parse` can decide on ``buf``: a whole header is there, or ``buf`` can no
    longer become one (it begins as no header does, or ``limit`` bytes are read)."""
    b = bytes(buf)
    n = len(b)
    if n >= limit:
        return True
    if n < _V2_FIXED and b[: len(SIGNATURE)] == SIGNATURE[: min(n, len(SIGNATURE))]:
        return False
    if b.startswith(SIGNATURE):
        total: int = _V2_FIXED + int.from_bytes(b[14:16], "big")
        return n >= total or total > limit
    if b[:6] == b"PROXY "[: min(n, 6)]:
        return b"\n" in b
    return True


def _broken(buf: bytes) -> ProxyProtocolError:
    end = len(buf)
    for i, ch in enumerate(buf):
        if ch in (0x0D, 0x0A):
            end = i
            break
    return ProxyProtocolError(f'broken header: "{buf[:end].decode("latin-1")}"')


def parse(data: bytes | bytearray) -> tuple[ProxyHeader | None, int]:
    """``ngx_proxy_protocol_read``: the header (None: ``UNKNOWN``, ``LOCAL`` or unsupported,
    no address) and how many bytes it took; raises :class:`ProxyProtocolError`."""
    buf = bytes(data)
    if len(buf) >= _V2_FIXED and buf.startswith(SIGNATURE):
        return _v2(buf)
    if len(buf) < 8 or not buf.startswith(b"PROXY "):
        raise _broken(buf)
    p = 6
    if buf.startswith(b"UNKNOWN", p):
        crlf = buf.find(b"\r\n", p + 7)
        if crlf == -1:
            raise _broken(buf)
        return None, crlf + 2
    if not (buf.startswith(b"TCP", p) and buf[p + 3 : p + 4] in (b"4", b"6")):
        raise _broken(buf)
    if buf[p + 4 : p + 5] != b" ":
        raise _broken(buf)
    p += 5
    src, p = _addr(buf, p)
    dst, p = _addr(buf, p)
    src_port, p = _port(buf, p, 0x20)
    dst_port, p = _port(buf, p, 0x0D)
    if p >= len(buf) or buf[p] != 0x0A:
        raise _broken(buf)
    return ProxyHeader(src, dst, src_port, dst_port), p + 1


def _addr(buf: bytes, p: int) -> tuple[str, int]:
    """``ngx_proxy_protocol_read_addr``: hex digits, ``:`` and ``.`` up to a space."""
    end = buf.find(b" ", p)
    if end == -1 or not all(ch in _HEX for ch in buf[p:end]):
        raise _broken(buf)
    return buf[p:end].decode("ascii"), end + 1


def _port(buf: bytes, p: int, sep: int) -> tuple[int, int]:
    """``ngx_proxy_protocol_read_port``: ``ngx_atoi`` of what comes before ``sep``."""
    end = buf.find(bytes((sep,)), p)
    if end == -1:
        raise _broken(buf)
    text = buf[p:end]
    if not text or not text.isdigit() or int(text) > 65535:
        raise _broken(buf)
    return int(text), end + 1


def _v2(buf: bytes) -> tuple[ProxyHeader | None, int]:
    """``ngx_proxy_protocol_v2_read``."""
    version_command, family_transport, length = struct.unpack_from("!BBH", buf, 12)
    version = version_command >> 4
    if version != 2:
        raise ProxyProtocolError(f"unknown PROXY protocol version: {version}")
    end = _V2_FIXED + length
    if len(buf) < end:
        raise ProxyProtocolError("header is too large")
    # "only PROXY is supported", "only STREAM is supported": the rest is skipped.
    if version_command & 0x0F != 1 or family_transport & 0x0F != 1:
        return None, end
    family = family_transport >> 4
    body = buf[_V2_FIXED:end]
    if family == 1:
        size, ip = 12, ipaddress.IPv4Address
    elif family == 2:
        size, ip = 36, ipaddress.IPv6Address  # type: ignore[assignment]
    else:
        return None, end
    if len(body) < size:
        raise ProxyProtocolError("")  # nginx: "return NULL" without a log line
    n = (size - 4) // 2
    src, dst = str(ip(body[:n])), str(ip(body[n : 2 * n]))
    src_port, dst_port = struct.unpack_from("!HH", body, 2 * n)
    return ProxyHeader(src, dst, src_port, dst_port, body[size:]), end


def _lookup(tlvs: bytes, kind: int) -> bytes | None:
    """``ngx_proxy_protocol_lookup_tlv``: the first TLV of ``kind``; a TLV that overruns the
    block ends the search (nginx: "broken PROXY protocol TLV", the variable is not found)."""
    p = 0
    while len(tlvs) - p >= 3:
        t, n = tlvs[p], struct.unpack_from("!H", tlvs, p + 1)[0]
        p += 3
        if len(tlvs) - p < n:
            return None
        if t == kind:
            return tlvs[p : p + n]
        p += n
    return None


def tlv(header: ProxyHeader, name: str) -> str | None:
    """``ngx_proxy_protocol_get_tlv``: ``$proxy_protocol_tlv_NAME`` -- a name of
    :data:`TLV_NAMES`, ``0xHH`` (a type in hex), or ``ssl_`` and a name of
    :data:`TLV_SSL_NAMES`, ``ssl_0xHH`` or ``ssl_verify``; None when absent."""
    tlvs, names = header.tlvs, TLV_NAMES
    if name.startswith("ssl_"):
        ssl = _lookup(tlvs, 0x20)
        if ssl is None or len(ssl) < 5:
            return None
        name = name[4:]
        if name == "verify":
            return str(struct.unpack_from("!I", ssl, 1)[0])
        tlvs, names = ssl[5:], TLV_SSL_NAMES
    if name.startswith("0x"):
        digits = name[2:]
        if not digits or not all(c in "0123456789abcdefABCDEF" for c in digits):
            return None  # ngx_hextoi: NGX_ERROR, "invalid PROXY protocol TLV"
        value = _lookup(tlvs, int(digits, 16))
    elif name in names:
        value = _lookup(tlvs, names[name])
    else:
        return None
    return None if value is None else value.decode("latin-1")
