"""ngx_http_realip_module's directives (``src/http/modules/ngx_http_realip_module.c``):
``set_real_ip_from``, ``real_ip_header``, ``real_ip_recursive``; the rule itself is
:mod:`wsgate.realip`, applied by :func:`wsgate.http.phases.realip`."""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING

from wsgate.access import parse_access_address
from wsgate.config.model import LocationSettings, Network
from wsgate.config.table import FLAG, HSL, TAKE1, Directive, Merge, flag, string
from wsgate.config.values import config_error

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt

__all__ = ["ENTRIES"]

_err = config_error
_LS = LocationSettings


def _set_real_ip_from(s: Stmt, level: Level) -> tuple[Network | None, ...]:
    """``ngx_http_realip_from``: ``unix:``, an address or CIDR (``ngx_ptocidr``: "low address
    bits of %V are meaningless" is a warning), else a host name, each of whose addresses is
    trusted ("host not found in set_real_ip_from")."""
    text = s.args[0]
    if text == "unix:":
        return (None,)
    try:
        network, _, low_bits = parse_access_address(text)
    except ValueError:
        network = None
        low_bits = False
    if network is not None:
        if low_bits:
            level.loader.warnings.append(f"low address bits of {text} are meaningless in {s.src}")
        return (network,)
    if text == "all" or "/" in text:
        # ngx_ptocidr accepts "all"; realip gives it no meaning nginx would keep: refuse it
        # as nginx's resolver would.
        raise _err(f'host not found in set_real_ip_from "{text}"', s.src)
    try:
        infos = socket.getaddrinfo(text, None, type=socket.SOCK_STREAM)
    except OSError:
        raise _err(f'host not found in set_real_ip_from "{text}"', s.src) from None
    out: list[Network | None] = []
    for info in infos:
        net = ipaddress.ip_network(str(info[4][0]).partition("%")[0])
        if net not in out:
            out.append(net)
    return tuple(out)


ENTRIES: tuple[Directive, ...] = (
    Directive(
        "set_real_ip_from",
        HSL,
        TAKE1,
        parse=_set_real_ip_from,
        target=_LS,
        fields=("real_ip_from",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="address | CIDR | unix:",
    ),
    Directive(
        "real_ip_header",
        HSL,
        TAKE1,
        parse=string,
        target=_LS,
        fields=("real_ip_header",),
        default="X-Real-IP",
        syntax="field | X-Real-IP | X-Forwarded-For | proxy_protocol",
    ),
    Directive(
        "real_ip_recursive",
        HSL,
        FLAG,
        parse=flag,
        target=_LS,
        fields=("real_ip_recursive",),
        default="off",
    ),
)
