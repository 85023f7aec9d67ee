"""TLS termination: server ``SSLContext``s from the ``ssl_*`` settings, SNI, the handshake.

https://nginx.org/en/docs/http/ngx_http_ssl_module.html and
https://nginx.org/en/docs/http/configuring_https_servers.html.

Contexts are built when a configuration is applied (start and HUP), one per ``server`` with
``listen ... ssl``, from the files as they are at that moment, so a reload picks up renewed
certificates.  Each listening address gets a *front* context (the default server's settings)
whose ``sni_callback`` switches the connection to the context of the server whose
``server_name`` matches the SNI name: "the SSL connection is established before the browser
sends an HTTP request ... the server name indication ... allows a browser to pass a requested
server name during the SSL handshake" (configuring_https_servers.html).  SNI only picks the
certificate; the request's ``Host`` still picks the server that answers, as in nginx.

Like nginx's ``ngx_http_ssl_handshake``, the first byte decides before any handshake: a TLS
record (0x16) or an SSLv2-style hello (high bit set) starts the handshake, anything else is
served as plain HTTP and answered with ``497`` ("400 The plain HTTP request was sent to HTTPS
port").

What Python's :mod:`ssl` cannot do (docs/tls.md lists these as differences from nginx):

* ``ssl_session_cache off``/``none``: OpenSSL's internal server session cache cannot be turned
  off from Python (no ``SSL_CTX_set_session_cache_mode``), so TLS 1.2 session-ID resumption
  stays possible.  With ``ssl_session_tickets off`` as well, no TLS 1.3 tickets are issued
  (``num_tickets = 0``), so TLS 1.3 resumption is off as in nginx.
* ``ssl_session_timeout``: no ``SSL_CTX_set_timeout`` in Python; OpenSSL's default lifetime
  applies (7200 s for TLS sessions) instead of nginx's 5m.
* ``ssl_verify_depth``: no ``SSL_CTX_set_verify_depth``; OpenSSL's default depth (100).
* ``ssl_verify_client``: Python has no verify callback, so a client certificate that does not
  verify fails the handshake (TLS alert ``unknown ca``) instead of reaching the HTTP layer
  as nginx's ``495``; ``optional_no_ca`` therefore behaves as ``optional``.  A missing
  certificate with ``on`` is answered with nginx's ``496`` page, as nginx does.
* ``ssl_client_certificate`` is not sent to the client as the list of acceptable CAs.
* After an SNI switch OpenSSL keeps the front context's verify mode and cipher list
  (Python's ``SSLObject.context`` setter does not copy them, nginx's callback does).
* ``ssl_stapling on`` staples nothing, ``ssl_session_ticket_key`` cannot install the keys
  (tickets use OpenSSL's random key per context), ``ssl_buffer_size`` cannot size records,
  and ``ssl_ecdh_curve`` with a list keeps OpenSSL's built-in list: each is a ``[warn]`` at
  load time (:mod:`wsgate.config.directives.ssl`).
* ALPN: ``http/1.1`` is advertised; a client offering only other protocols gets no ALPN
  instead of nginx's fatal ``no_application_protocol`` alert.
"""

from __future__ import annotations

import asyncio
import ssl
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import cast

from wsgate.config.model import Listen, Server, SslServer
from wsgate.config.tls import PROTOCOLS, load_cert_chain, read_passwords
from wsgate.errors import ConfigError
from wsgate.routing import select_server

__all__ = [
    "GroupTls",
    "build_context",
    "connection_variables",
    "handshake",
    "handshake_error",
    "is_tls_hello",
    "rfc2253",
]

_ORDER = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
_NO_VERSION = {
    "TLSv1": "OP_NO_TLSv1",
    "TLSv1.1": "OP_NO_TLSv1_1",
    "TLSv1.2": "OP_NO_TLSv1_2",
    "TLSv1.3": "OP_NO_TLSv1_3",
}
_SniCallback = Callable[[ssl.SSLObject | ssl.SSLSocket, str | None, ssl.SSLContext], None]
#: The SNI name each connection asked for (``$ssl_server_name``), by its SSLObject.
_SNI: weakref.WeakKeyDictionary[ssl.SSLObject, str] = weakref.WeakKeyDictionary()


def build_context(conf: SslServer, http2: bool = False) -> ssl.SSLContext:
    """One server's context; file and OpenSSL errors become :class:`ConfigError`.  ``http2``:
    ALPN offers ``h2`` before ``http/1.1`` (``ngx_http_ssl_alpn_select`` with ``http2 on``
    or ``listen ... http2``)."""
    src = conf.source
    where = f" in {src}" if src else ""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # "Specifies a file with the certificate in the PEM format ... can be specified multiple
    # times to load certificates of different types, for example, RSA and ECDSA."
    # ssl_password_file: "Passphrases are tried in turn when loading the key."
    try:
        passwords = read_passwords(conf.password_file) if conf.password_file else None
    except ValueError as exc:
        raise ConfigError(f"{exc}{where}") from exc
    for cert, key in conf.certificates:
        try:
            load_cert_chain(ctx, cert, key, passwords)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f'cannot load certificate "{cert}": {exc}{where}') from exc
    # ssl_dhparam: "Specifies a file with DH parameters for DHE ciphers.  By default no
    # parameters are set, and therefore DHE ciphers will not be used."
    if conf.dhparam is not None:
        try:
            ctx.load_dh_params(conf.dhparam)
        except OSError as exc:
            raise ConfigError(f'PEM_read_bio_DHparams("{conf.dhparam}") failed{where}') from exc
    # ssl_ecdh_curve: "The special value auto instructs nginx to use a list built into the
    # OpenSSL library".  One curve is set as nginx sets it; Python's set_ecdh_curve cannot
    # take a list, so a list keeps OpenSSL's built-in one (warned at load time).
    if conf.ecdh_curve != "auto" and ":" not in conf.ecdh_curve:
        ctx.set_ecdh_curve(conf.ecdh_curve)
    # "Enables the specified protocols."  Versions between the lowest and the highest that
    # are not listed are switched off one by one.
    listed = [p for p in _ORDER if p in conf.protocols]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1/1.1, OP_NO_TLS*
        ctx.minimum_version = PROTOCOLS[listed[0]]
        ctx.maximum_version = PROTOCOLS[listed[-1]]
        lo, hi = _ORDER.index(listed[0]), _ORDER.index(listed[-1])
        for name in _ORDER[lo : hi + 1]:
            if name not in listed:
                ctx.options |= getattr(ssl, _NO_VERSION[name])
    # "Specifies the enabled ciphers" (TLS 1.2 and lower; TLS 1.3 suites are OpenSSL's).
    try:
        ctx.set_ciphers(conf.ciphers)
    except ssl.SSLError as exc:
        raise ConfigError(f'SSL_CTX_set_cipher_list("{conf.ciphers}") failed{where}') from exc
    # "Specifies that server ciphers should be preferred over client ciphers when using the
    # SSLv3 and TLS protocols."  Python sets the flag by default; nginx's default is off.
    if conf.prefer_server_ciphers:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    # "Enables or disables session resumption through TLS session tickets."
    if not conf.session_tickets:
        ctx.options |= ssl.OP_NO_TICKET
        if conf.session_cache in ("off", "none"):
            ctx.num_tickets = 0  # no stateful TLS 1.3 tickets either: no resumption at all
    # "Enables verification of client certificates ... The optional parameter requests the
    # client certificate and verifies it if the certificate is present."  ``on`` is
    # CERT_OPTIONAL too: a missing certificate is answered at the HTTP layer (496), as nginx.
    # ssl_trusted_certificate: "trusted CA certificates ... used to verify client
    # certificates ... In contrast to the certificate set by ssl_client_certificate, the list
    # of these certificates will not be sent to clients" (wsgate sends neither list).
    if conf.verify_client != "off":
        ctx.verify_mode = ssl.CERT_OPTIONAL
        for what, path in (
            ("client certificate", conf.client_certificate),
            ("trusted certificate", conf.trusted_certificate),
        ):
            if path is None:
                continue
            try:
                ctx.load_verify_locations(cafile=path)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f'cannot load {what} "{path}": {exc}{where}') from exc
    ctx.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    return ctx


def _chosen(pairs: Sequence[tuple[Server, Listen]], local_addr: str) -> list[Listen]:
    # The same rule as ListenGroup.candidates: exact address first, then the wildcard.
    exact = [lst for _, lst in pairs if lst.host == local_addr]
    return exact or [lst for _, lst in pairs if lst.is_wildcard] or [lst for _, lst in pairs]


class GroupTls:
    """The TLS side of one listening socket, for one configuration.

    ``contexts`` maps each server (by identity) to its context; ``front(...)`` gives the
    context a connection to a local address starts with (``None``: that address has no
    ``listen ... ssl``, so it is plain HTTP, as nginx decides ``ssl`` per address).
    """

    __slots__ = ("pairs", "contexts", "_fronts")

    def __init__(
        self,
        pairs: Sequence[tuple[Server, Listen]],
        cache: dict[SslServer, ssl.SSLContext] | None = None,
    ) -> None:
        self.pairs = list(pairs)
        cache = {} if cache is None else cache
        self.contexts: dict[int, ssl.SSLContext] = {}
        # ``listen ... http2`` counts for every server of the address (nginx ORs the
        # listen options of one address into its ``addr_conf``).
        listen_h2 = any(lst.http2 for _, lst in pairs)
        for server, _ in pairs:
            if server.ssl is not None and id(server) not in self.contexts:
                if server.http2 or listen_h2:
                    self.contexts[id(server)] = build_context(server.ssl, http2=True)
                    continue
                ctx = cache.get(server.ssl)
                if ctx is None:
                    ctx = cache[server.ssl] = build_context(server.ssl)
                self.contexts[id(server)] = ctx
        self._fronts: dict[str, ssl.SSLContext | None] = {}

    def front(
        self, local_addr: str, candidates: Sequence[Server], default: Server
    ) -> ssl.SSLContext | None:
        """The initial context for a connection to ``local_addr`` (cached per address)."""
        try:
            return self._fronts[local_addr]
        except KeyError:
            pass
        ctx: ssl.SSLContext | None = None
        chosen = _chosen(self.pairs, local_addr)
        if any(lst.ssl for lst in chosen):
            first = (
                default
                if default.ssl is not None
                else next((s for s in candidates if s.ssl is not None), None)
            )
            if first is not None and first.ssl is not None:
                listen_h2 = any(lst.http2 for lst in chosen)
                h2 = first.http2 or listen_h2
                ctx = build_context(first.ssl, http2=h2)
                # A server SNI chooses that has no ``listen ... ssl`` of its own keeps the
                # front's certificate, but its ``http2`` decides ALPN, as nginx's
                # ngx_http_ssl_alpn_select reads the server ngx_http_ssl_servername chose.
                other = None
                if any(s.ssl is None and (s.http2 or listen_h2) != h2 for s in candidates):
                    other = build_context(first.ssl, http2=not h2)
                ctx.sni_callback = self._sni(list(candidates), first, other, listen_h2)
        self._fronts[local_addr] = ctx
        return ctx

    def _sni(
        self,
        candidates: list[Server],
        first: Server,
        other: ssl.SSLContext | None = None,
        listen_h2: bool = False,
    ) -> _SniCallback:
        """The front context's SNI callback; ``other``: the front's settings with the other
        ALPN list, for a chosen server without ``listen ... ssl`` whose ``http2`` differs."""
        contexts = self.contexts

        def callback(
            obj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext
        ) -> None:
            # "$ssl_server_name returns the server name requested through SNI".
            if isinstance(obj, ssl.SSLObject):
                _SNI[obj] = name or ""
            if not name:
                return  # no SNI: the default server's certificate
            server = select_server(candidates, name.rstrip(".").lower(), first)
            if server is not first:
                ctx = contexts.get(id(server))
                if ctx is None and other is not None and server.ssl is None:
                    if (server.http2 or listen_h2) != (first.http2 or listen_h2):
                        ctx = other
                if ctx is not None:
                    obj.context = ctx

        return callback


# -- per connection ----------------------------------------------------------------------------
def is_tls_hello(first: int) -> bool:
    """nginx: ``if (buf[0] & 0x80 /* SSLv2 */ || buf[0] == 0x16 /* SSLv3/TLSv1 */)``."""
    return first == 0x16 or bool(first & 0x80)


async def handshake(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    protocol: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    timeout: float,
    early: bytes,
) -> asyncio.Transport:
    """The server side of the TLS handshake; the TLS transport, with ``protocol`` on it.

    ``early`` is what was already read from the socket (at least the first byte, which
    chose TLS).  nginx peeks at it with ``MSG_PEEK``; uvloop starts reading as soon as
    ``connection_made`` returns (``pause_reading`` there is ignored), so wsgate reads it and
    replays it into the TLS protocol instead: ``start_tls`` swaps the protocol in its first,
    synchronous step and only resumes reading one loop turn later, so a callback queued right
    after the task runs between the two.  nginx runs the handshake under
    ``client_header_timeout``.  Raises :class:`ssl.SSLError`, :class:`ConnectionError` or
    :class:`TimeoutError`.
    """
    transport.pause_reading()
    task = loop.create_task(
        loop.start_tls(
            transport, protocol, context, server_side=True, ssl_handshake_timeout=timeout
        )
    )
    loop.call_soon(_replay, transport, protocol, early)
    try:
        async with asyncio.timeout(timeout):
            tls = await task
    finally:
        if not task.done():
            task.cancel()
    if tls is None:
        raise ConnectionResetError("connection lost")
    return tls


def _replay(transport: asyncio.Transport, app: asyncio.BaseProtocol, data: bytes) -> None:
    proto = transport.get_protocol()
    if proto is app or transport.is_closing():
        transport.abort()  # start_tls did not take over: give up on this connection
        return
    # uvloop's SSLProtocol is a buffered protocol without subclassing asyncio's.
    get_buffer = getattr(proto, "get_buffer", None)
    if get_buffer is None:
        cast(asyncio.Protocol, proto).data_received(data)
        return
    updated = cast(asyncio.BufferedProtocol, proto).buffer_updated
    view = memoryview(data)
    while view:
        buf = memoryview(get_buffer(len(view)))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        updated(n)
        view = view[n:]


def handshake_error(exc: BaseException) -> str:
    """nginx's text for a failed handshake, e.g. ``SSL_do_handshake() failed (SSL:
    error:SSL routines::unsupported protocol) while SSL handshaking``."""
    if isinstance(exc, TimeoutError):
        return "client timed out (110: Connection timed out) while SSL handshaking"
    if isinstance(exc, ssl.SSLError):
        text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        if "] " in text:
            text = text.split("] ", 1)[1]
        text = text.split(" (_ssl.c", 1)[0]
        return f"SSL_do_handshake() failed (SSL: error:SSL routines::{text}) while SSL handshaking"
    if isinstance(exc, ConnectionResetError) and exc.errno:
        return f"recv() failed ({exc.errno}: {exc.strerror}) while SSL handshaking"
    return "peer closed connection in SSL handshake while SSL handshaking"


_SHORT = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "domainComponent": "DC",
    "userId": "UID",
    "streetAddress": "street",
    "surname": "SN",
    "givenName": "GN",
}


def _escape(value: str) -> str:
    # OpenSSL's ASN1_STRFLGS_RFC2253: RFC 2253 specials, control and non-ASCII bytes as \XX.
    out: list[str] = []
    last = len(value) - 1
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;' or (i == 0 and ch in "# ") or (i == last and ch == " "):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or ord(ch) > 0x7F:
            out.extend(f"\\{b:02X}" for b in ch.encode())
        else:
            out.append(ch)
    return "".join(out)


def rfc2253(subject: Sequence[Sequence[tuple[str, str]]]) -> str:
    """A distinguished name as nginx's ``$ssl_client_s_dn`` prints it (since 1.11.6:
    "returns the 'subject DN' string of the client certificate ... according to RFC 2253"),
    i.e. OpenSSL's ``XN_FLAG_RFC2253``: RDNs last to first, ``,`` between them, ``+``
    inside a multi-valued RDN, short attribute names.  ``subject`` is the ``getpeercert()``
    form."""
    return ",".join(
        "+".join(f"{_SHORT.get(k, k)}={_escape(v)}" for k, v in rdn) for rdn in reversed(subject)
    )


def connection_variables(obj: ssl.SSLObject) -> dict[str, str]:
    """``$https`` and the ``$ssl_*`` values of an established connection."""
    cipher = obj.cipher()
    cert = obj.getpeercert() if obj.context.verify_mode != ssl.CERT_NONE else None
    subject = cert.get("subject", ()) if cert else ()
    if not isinstance(subject, tuple) or not all(isinstance(rdn, tuple) for rdn in subject):
        subject = ()
    return {
        "https": "on",
        "ssl_protocol": obj.version() or "",
        "ssl_cipher": cipher[0] if cipher else "",
        "ssl_server_name": _SNI.get(obj, ""),
        "ssl_client_s_dn": rfc2253(subject),  # type: ignore[arg-type]
        # A certificate that did not verify fails the handshake in wsgate, so a present
        # certificate is always a verified one.
        "ssl_client_verify": "SUCCESS" if cert else "NONE",
        "ssl_session_reused": "r" if obj.session_reused else ".",
        # "$ssl_early_data returns "1" if TLS 1.3 early data is used and the handshake is
        # not complete, otherwise "" ": wsgate accepts no early data (ssl_early_data off).
        "ssl_early_data": "",
    }
