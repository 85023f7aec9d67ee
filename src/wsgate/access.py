"""Access rules (``allow``/``deny``) and the upgrade allow-list; pure, no sockets.

``allow``/``deny`` follow https://nginx.org/en/docs/http/ngx_http_access_module.html:
"The rules are checked in sequence until the first match is found."  As in
``ngx_http_access_handler``, a client is checked only against the rules of its own address
family (``all`` belongs to every family): an IPv4 client against IPv4 rules, an IPv6 client
against IPv6 rules, a UNIX-domain client against ``unix:`` rules.  An IPv4-mapped IPv6 client
(``::ffff:10.0.0.1``) is checked as the IPv4 address against the IPv4 rules when the level has
any (nginx: ``if (IN6_IS_ADDR_V4MAPPED(p) && alcf->rules)``), else against the IPv6 rules.  A
client no rule matches is allowed.

``proxy_upgrade_protocols NAME ... | off`` is a wsgate directive (nginx has none; http,
server, location; default ``websocket``): the protocols a request may upgrade to, so that
nothing but WebSocket can be tunnelled past the access rules (``h2c``, say).  Each
comma-separated token of the client's ``Upgrade`` (RFC 9110 §7.8: ``protocol-name
["/" protocol-version]``) is compared, by its name and case-insensitively, with the list; one
allowed name is enough.  When none is allowed (always, with ``off``), the request is proxied as
an ordinary request, as if the client had sent no ``Upgrade``
(:class:`wsgate.proxy.proxying.Proxying`):

- an ``info`` line ``client sent disallowed upgrade protocol "h2c"`` is logged;
- the ``Upgrade`` header leaves the request, so ``$http_upgrade`` renders empty (in
  ``proxy_set_header``, maps and the access log) and maps are re-evaluated;
- a configured ``proxy_set_header Upgrade ...`` is not sent, whatever its value, and the
  ``upgrade`` token is removed from a configured ``Connection`` value (:func:`without_upgrade`;
  ``Connection: upgrade`` is not sent at all);
- an upstream ``101`` is answered with ``502`` and never tunnelled.

For a request that is allowed, a ``101`` whose ``Upgrade`` names a protocol the list does not
allow (the client offered ``h2c, websocket`` and the upstream chose ``h2c``) is a ``502`` too.
"""

from __future__ import annotations

import ipaddress
import re

from wsgate.config.model import AccessRule, Network

__all__ = [
    "check_access",
    "parse_access_address",
    "parse_upgrade_protocols",
    "upgrade_allowed",
    "without_upgrade",
]

#: An RFC 9110 token, lowercased (a protocol name in ``Upgrade``).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


def parse_access_address(text: str) -> tuple[Network | None, bool, bool]:
    """``(network, unix, meaningless_low_bits)`` for an ``allow``/``deny`` parameter.

    ``all`` is ``(None, False, False)``; ``unix:`` is ``(None, True, False)``.  An address or
    ``ADDRESS/PREFIX`` in nginx's ``ngx_ptocidr`` syntax (no netmask form, no zone index) gives
    its network, with the host bits cleared; the third value tells that some were set (nginx
    warns "low address bits of ... are meaningless").  Anything else raises ``ValueError``.
    """
    if text == "all":
        return None, False, False
    if text == "unix:":
        return None, True, False
    addr, slash, prefix = text.partition("/")
    if "%" in addr or (slash and not (prefix.isascii() and prefix.isdigit())):
        raise ValueError(text)
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(text) from None
    return network, False, network.network_address != ipaddress.ip_address(addr)


def parse_upgrade_protocols(args: list[str]) -> frozenset[str]:
    """``proxy_upgrade_protocols`` arguments → lowercased names (empty for ``off``).

    Each must be an RFC 9110 token; ``off`` stands alone.  ``ValueError(arg)`` otherwise.
    """
    names = [a.lower() for a in args]
    for name in names:
        if (name == "off" and len(names) > 1) or not _TOKEN.fullmatch(name):
            raise ValueError(name)
    return frozenset() if names == ["off"] else frozenset(names)


def _family(rules: tuple[AccessRule, ...], version: int) -> list[AccessRule]:
    """The rules nginx keeps in one family's list: that family's networks and ``all``."""
    return [
        r
        for r in rules
        if (r.network is None and not r.unix)
        or (r.network is not None and r.network.version == version)
    ]


def check_access(rules: tuple[AccessRule, ...], remote_addr: str) -> AccessRule | None:
    """The first rule matching ``remote_addr`` (``None``: no rule matches, access allowed).

    ``remote_addr`` is ``$remote_addr``: an IPv4 or IPv6 literal, or ``unix:`` for a
    UNIX-domain client.
    """
    if remote_addr.startswith("unix:"):
        return next((r for r in rules if r.network is None), None)
    try:
        addr = ipaddress.ip_address(remote_addr.partition("%")[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        v4 = _family(rules, 4)
        if v4:
            return _first(v4, addr.ipv4_mapped)
    return _first(_family(rules, addr.version), addr)


def _first(
    rules: list[AccessRule], addr: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> AccessRule | None:
    for rule in rules:
        if rule.network is None or addr in rule.network:
            return rule
    return None


def upgrade_allowed(protocols: frozenset[str], upgrade: str) -> bool:
    """Whether the ``Upgrade`` value names a protocol in ``protocols`` (lowercased names).

    ``Upgrade = #protocol``, ``protocol = protocol-name ["/" protocol-version]`` (RFC 9110
    §7.8): each comma-separated token's name, lowercased, is looked up.
    """
    if not protocols:
        return False
    for token in upgrade.split(","):
        name = token.partition("/")[0].strip().lower()
        if name in protocols:
            return True
    return False


def without_upgrade(set_headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The evaluated ``proxy_set_header`` list for a request whose upgrade was refused.

    Every configured ``Upgrade`` is dropped, whatever its value; the ``upgrade`` token is
    removed from a configured ``Connection`` value (``Connection: upgrade`` is not sent, and
    ``keep-alive, upgrade`` becomes ``keep-alive``); other headers are kept.  An empty value
    is not sent, as for any ``proxy_set_header`` with an empty value.
    """
    out: list[tuple[str, str]] = []
    for name, value in set_headers:
        low = name.lower()
        if low == "upgrade":
            continue
        if low == "connection":
            tokens = [t.strip() for t in value.split(",")]
            value = ", ".join(t for t in tokens if t and t.lower() != "upgrade")
        out.append((name, value))
    return out
