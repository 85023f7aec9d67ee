"""TLS to upstream servers (``proxy_pass https://``): contexts, names, sessions, messages.

No sockets: this module turns a location's :class:`~wsgate.config.model.SslUpstream` into an
:class:`ssl.SSLContext` (cached per settings object), decides the SNI and the name to verify,
checks a peer certificate against that name, and words failures as nginx does.  The handshake
itself is done by :class:`wsgate.proxy.connect.UpstreamOpen`.

Follows https://nginx.org/en/docs/http/ngx_http_proxy_module.html#proxy_ssl_verify and its
neighbours, and ``ngx_http_upstream_ssl_name``/``ngx_http_upstream_ssl_handshake``:

* ``proxy_ssl_name``: "Allows overriding the server name used to verify the certificate of the
  proxied HTTPS server and to be passed through SNI when establishing a connection with the
  proxied HTTPS server.  By default, the host part of the proxy_pass URL is used."  nginx strips
  a ``:port`` from the name ("ssl name here may contain port ... we have to strip it").
* ``proxy_ssl_server_name``: "Enables or disables passing of the server name through TLS Server
  Name Indication extension (SNI, RFC 6066)"; off by default, and "as per RFC 6066, literal
  IPv4 and IPv6 addresses are not permitted", so an IP literal is never sent.
* ``proxy_ssl_verify``: "Enables or disables verification of the proxied HTTPS server
  certificate."  nginx verifies the chain during the handshake but checks the *name* after it
  (``ngx_ssl_check_host``), whether or not SNI was sent.  Python ties ``server_hostname`` to
  both SNI and the name check, so wsgate does what nginx does: the context never checks names
  (``check_hostname = False``), the chain is verified by OpenSSL (``CERT_REQUIRED``), and the
  name is checked by :func:`match_name` right after the handshake, before a byte of the request
  is sent.  This also gives nginx's log text for a mismatch.
* ``proxy_ssl_verify_depth`` (default 1): Python's ``SSLContext`` cannot set a depth, so the
  verified chain is measured after the handshake (OpenSSL's rule: the depth counts the
  intermediate certificates, "a maximal depth chain contains 2 more certificates than the
  limit").
* ``proxy_ssl_session_reuse``: "Determines whether SSL sessions can be reused when working with
  the proxied server."  nginx keeps one session per upstream peer.  asyncio's loops take no
  ``session=``, so the context class here (:class:`UpstreamContext`) sets the session in
  ``wrap_bio`` from a context variable that the caller sets, in its own task, around the
  connection (:data:`PENDING_SESSION`); both asyncio's and uvloop's SSL protocols call
  ``wrap_bio`` in a copy of that task's context.  If a loop ever did not, the only effect
  would be a full handshake.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Hashable
from contextvars import ContextVar
from typing import Any

from wsgate.config.model import SslUpstream
from wsgate.config.tls import PROTOCOLS

__all__ = [
    "PENDING_SESSION",
    "TlsContexts",
    "UpstreamContext",
    "UpstreamTls",
    "build_context",
    "chain_too_long",
    "handshake_error",
    "match_name",
    "sni_name",
    "ssl_name",
]

#: The session :class:`UpstreamContext` offers to the next ``wrap_bio`` in this task.
PENDING_SESSION: ContextVar[ssl.SSLSession | None] = ContextVar(
    "wsgate_upstream_session", default=None
)

#: X509_V_ERR_CERT_CHAIN_TOO_LONG.
_CHAIN_TOO_LONG = (22, "certificate chain too long")


class UpstreamContext(ssl.SSLContext):
    """An ``SSLContext`` whose ``wrap_bio`` resumes :data:`PENDING_SESSION` when one is set."""

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if session is None and not server_side:
            session = PENDING_SESSION.get()
        return super().wrap_bio(
            incoming,
            outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
        )


def build_context(settings: SslUpstream) -> UpstreamContext:
    """The client context for ``settings``; certificate files are read now.

    ``proxy_ssl_protocols`` becomes a minimum and a maximum version (a list with a gap, such as
    ``TLSv1 TLSv1.2``, allows the versions in between too); ``proxy_ssl_ciphers`` is given to
    OpenSSL as is (it does not touch TLS 1.3 suites, as in nginx).
    """
    ctx = UpstreamContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the name is checked after the handshake, as nginx does
    if settings.verify:
        ctx.verify_mode = ssl.CERT_REQUIRED
        if settings.trusted_certificate:
            ctx.load_verify_locations(cafile=settings.trusted_certificate)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    versions = sorted(PROTOCOLS[p] for p in settings.protocols)
    if versions:
        if versions[0] < ssl.TLSVersion.TLSv1_2:
            # OpenSSL 3 refuses TLS 1.0/1.1 at the default security level.
            ctx.set_ciphers(f"{settings.ciphers}:@SECLEVEL=0")
        else:
            ctx.set_ciphers(settings.ciphers)
        ctx.minimum_version = versions[0]
        ctx.maximum_version = versions[-1]
    else:
        ctx.set_ciphers(settings.ciphers)
    if settings.certificate and settings.certificate_key:
        ctx.load_cert_chain(settings.certificate, settings.certificate_key)
    return ctx


class UpstreamTls:
    """One settings object's context and the sessions saved per peer."""

    __slots__ = ("settings", "context", "_sessions")

    def __init__(self, settings: SslUpstream) -> None:
        self.settings = settings
        self.context = build_context(settings)
        self._sessions: dict[Hashable, ssl.SSLSession] = {}

    def session(self, peer: Hashable) -> ssl.SSLSession | None:
        """The session to resume with ``peer``, if ``proxy_ssl_session_reuse`` is on."""
        if not self.settings.session_reuse:
            return None
        return self._sessions.get(peer)

    def save(self, peer: Hashable, session: ssl.SSLSession | None) -> None:
        """Keep ``session`` for the next connection to ``peer`` (nginx's ``save_session``)."""
        if self.settings.session_reuse and session is not None:
            self._sessions[peer] = session

    def forget(self, peer: Hashable) -> None:
        """Drop the session of ``peer`` (after a failed handshake)."""
        self._sessions.pop(peer, None)


class TlsContexts:
    """Contexts built once per :class:`SslUpstream` object (one per configuration level).

    Keyed by identity, not equality, so a reload that re-reads a changed certificate file gets
    a new context: the caller makes a new :class:`TlsContexts` per configuration.
    """

    __slots__ = ("_by_id",)

    def __init__(self) -> None:
        self._by_id: dict[int, UpstreamTls] = {}

    def get(self, settings: SslUpstream) -> UpstreamTls:
        tls = self._by_id.get(id(settings))
        if tls is None or tls.settings is not settings:
            tls = self._by_id[id(settings)] = UpstreamTls(settings)
        return tls


def ssl_name(settings: SslUpstream, proxy_host: str, lookup: Callable[[str], str]) -> str:
    """``proxy_ssl_name`` rendered (default ``$proxy_host``), without a ``:port``."""
    name = settings.name.render(lookup) if settings.name is not None else proxy_host
    start = 0
    if name.startswith("["):
        end = name.find("]")
        start = end if end != -1 else 0
    colon = name.find(":", start)
    return name if colon == -1 else name[:colon]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def sni_name(settings: SslUpstream, name: str) -> str | None:
    """The SNI to send: ``name`` when ``proxy_ssl_server_name`` is on and it is no IP literal."""
    if not settings.server_name or not name or name.startswith("[") or _is_ip(name):
        return None
    return name


def _dns_match(pattern: str, name: str) -> bool:
    """X509_check_host's rule: a ``*`` only in the leftmost label, which may be partial
    (``f*.example.org``), never matching a dot, and not on a bare public suffix."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if "*" not in pattern:
        return pattern == name
    left, _, rest = pattern.partition(".")
    if "*" in rest or rest.count(".") < 1 or left.count("*") > 1:
        return False
    nleft, _, nrest = name.partition(".")
    if nrest != rest or not nleft:
        return False
    prefix, _, suffix = left.partition("*")
    return (
        len(nleft) >= len(prefix) + len(suffix)
        and nleft.startswith(prefix)
        and nleft.endswith(suffix)
    )


def match_name(cert: dict[str, Any], name: str) -> bool:
    """Whether the peer certificate (``getpeercert()``) is valid for ``name``.

    nginx calls ``X509_check_host(cert, name)``: DNS subject alternative names, or the subject's
    common name when there are none.  wsgate also accepts an IP literal ``name`` that equals an
    IP address entry (nginx compares it with the DNS entries only).
    """
    if not name:
        return False
    sans = cert.get("subjectAltName", ())
    if _is_ip(name):
        want = ipaddress.ip_address(name.strip("[]"))
        for kind, value in sans:
            if kind == "IP Address":
                try:
                    if ipaddress.ip_address(value.strip()) == want:
                        return True
                except ValueError:
                    continue
    dns = [value for kind, value in sans if kind == "DNS"]
    if dns:
        return any(_dns_match(p, name) for p in dns)
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and _dns_match(value, name):
                return True
    return False


def chain_too_long(chain_length: int, depth: int) -> tuple[int, str] | None:
    """nginx's verify error for a verified chain (leaf to anchor) deeper than ``depth``."""
    if chain_length > depth + 2:
        return _CHAIN_TOO_LONG
    return None


_OPENSSL_TEXT = re.compile(r"^\[[^\]]*\] (.*?)(?: \(_ssl\.c:\d+\))?$")


def handshake_error(exc: BaseException) -> str:
    """nginx's text for a failed handshake (without "while SSL handshaking to upstream").

    ``upstream SSL certificate verify error: (20:unable to get local issuer certificate)`` for
    a chain that does not verify; ``SSL_do_handshake() failed (SSL: error:...)`` for a protocol
    error (Python does not expose OpenSSL's packed error code, so it is left out); ``peer closed
    connection in SSL handshake`` for an EOF.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"upstream SSL certificate verify error: ({exc.verify_code}:{exc.verify_message})"
    if isinstance(exc, ssl.SSLEOFError) or isinstance(exc, EOFError):
        return "peer closed connection in SSL handshake"
    if isinstance(exc, ssl.SSLError):
        text = str(exc.strerror or exc)
        m = _OPENSSL_TEXT.match(text)
        reason = m.group(1) if m else text
        library = "SSL routines" if exc.library in (None, "SSL") else f"{exc.library} routines"
        return f"SSL_do_handshake() failed (SSL: error:{library}::{reason})"
    if isinstance(exc, OSError) and exc.errno:
        return f"SSL_do_handshake() failed ({exc.errno}: {os.strerror(exc.errno)})"
    if isinstance(exc, ConnectionError):
        return "peer closed connection in SSL handshake"
    return f"SSL_do_handshake() failed ({exc})"
