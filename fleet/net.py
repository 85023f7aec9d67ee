"""The simulated network: one network namespace per host, one bridge between them.

Every host of the fleet (the balancer, the wsgate nodes, the backends, the DNS server, Redis,
the client host) is a network namespace of its own with one veth interface, ``eth0``, whose
other end is a port of the bridge ``br0`` in a "switch" namespace. Every address is in the
benchmarking range 198.18.0.0/15 (RFC 2544, appendix C.2.2, kept out of the Internet by
RFC 6890), on one /15 link, and exists only inside these namespaces: the root namespace gets
no address, no route and no interface (the veth pairs are created directly in their
namespaces, ``ip link add eth0 netns A type veth peer name P netns B``), so no packet can
leave them. Each namespace also has its loopback up.

All namespaces carry the prefix :data:`PREFIX`; :func:`remove_leftovers` deletes any of an
earlier run that crashed (after killing the processes still inside them, which this
simulation started), and :func:`teardown` deletes the ones of this run. Deleting a namespace
deletes its interfaces, and so the veth pairs and the bridge.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "CLIENT_SOURCES",
    "HOSTS",
    "PREFIX",
    "SWITCH",
    "Host",
    "NetError",
    "can_create",
    "host",
    "ns_pids",
    "remove_leftovers",
    "setup",
    "teardown",
]

#: Every namespace of the simulation starts with this (``ip netns list`` shows them).
PREFIX = "wsgfleet-"
#: The namespace that holds the bridge.
SWITCH = PREFIX + "sw"
#: The one link's prefix length: all of 198.18.0.0/15 is one subnet.
PREFIX_LEN = 15


class NetError(RuntimeError):
    """A namespace, link or address could not be made."""


@dataclass(frozen=True, slots=True)
class Host:
    """One simulated host: its role's name, namespace and address on the link."""

    name: str
    addr: str
    #: More addresses on the same interface (the client host's sources).
    extra: tuple[str, ...] = ()

    @property
    def ns(self) -> str:
        return PREFIX + self.name


#: The client host's source addresses besides its own: one per /24, so that ``ip_hash``
#: (which hashes a client's first three octets) sees distinct clients.
CLIENT_SOURCES: tuple[str, ...] = tuple(f"198.18.{n}.100" for n in range(1, 17))

HOSTS: tuple[Host, ...] = (
    Host("lb", "198.18.0.2"),
    Host("node1", "198.18.0.11"),
    Host("node2", "198.18.0.12"),
    Host("node3", "198.18.0.13"),
    Host("backend1", "198.18.0.21"),
    Host("backend2", "198.18.0.22"),
    Host("backend3", "198.18.0.23"),
    Host("dns", "198.18.0.53"),
    Host("redis", "198.18.0.63"),
    Host("client", "198.18.0.100", CLIENT_SOURCES),
)


def host(name: str) -> Host:
    for h in HOSTS:
        if h.name == name:
            return h
    raise KeyError(name)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise NetError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def _batch(ns: str | None, lines: Iterable[str]) -> None:
    """Run ``ip [-n NS] -batch -``: one process for many commands in one namespace (the
    first failure is reported)."""
    text = "".join(line + "\n" for line in lines)
    where = ["-n", ns] if ns else []
    proc = subprocess.run(
        ["ip", *where, "-batch", "-"], input=text, capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        raise NetError(f"ip -batch: {proc.stderr.strip() or proc.returncode}")


def namespaces() -> list[str]:
    """Every network namespace ``ip netns`` knows."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def ns_pids(ns: str) -> list[int]:
    """The processes whose network namespace is ``ns``."""
    out = _ip("netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def can_create() -> str | None:
    """None when namespaces can be made here, else why not (the run then skips)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs)"
    try:
        probe = PREFIX + "probe"
        _ip("netns", "add", probe)
    except (NetError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _ip("-n", probe, "link", "set", "lo", "up")
        _ip("-n", probe, "link", "add", "a0", "type", "veth", "peer", "name", "a1")
    except NetError as exc:
        return f"cannot create a veth pair in a namespace: {exc}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _kill_inside(names: Iterable[str]) -> None:
    """SIGKILL the processes still inside the namespaces ``names`` (ours: every one of them
    was started by this simulation) and wait a moment for them to go."""
    pids: set[int] = set()
    for ns in names:
        pids.update(ns_pids(ns))
    pids.discard(os.getpid())
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5.0
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if os.path.exists(f"/proc/{p}")}
        time.sleep(0.05)


def remove_leftovers() -> list[str]:
    """Delete the namespaces of an earlier run that did not tear down (killed with SIGKILL,
    say), with the processes still inside them; return their names."""
    old = [ns for ns in namespaces() if ns.startswith(PREFIX)]
    if old:
        _kill_inside(old)
        for ns in old:
            _ip("netns", "del", ns, check=False)
    return old


def setup() -> None:
    """Make the switch and every host, addresses up, loopbacks up."""
    _ip("netns", "add", SWITCH)
    for h in HOSTS:
        _ip("netns", "add", h.ns)
    _batch(
        SWITCH,
        [
            "link set lo up",
            "link add br0 type bridge",
            # A bridge that forwards at once (no STP listening and learning on a new port).
            "link set br0 type bridge forward_delay 0 stp_state 0",
            "link set br0 up",
        ],
    )
    # The pairs are made in their namespaces directly: nothing appears in the root one.
    _batch(
        None,
        [f"link add eth0 netns {h.ns} type veth peer name {h.name} netns {SWITCH}" for h in HOSTS],
    )
    _batch(SWITCH, [f"link set {h.name} master br0 up" for h in HOSTS])
    for h in HOSTS:
        addrs = [h.addr, *h.extra]
        _batch(
            h.ns,
            [
                "link set lo up",
                *(f"addr add {a}/{PREFIX_LEN} dev eth0" for a in addrs),
                "link set eth0 up",
            ],
        )


def teardown() -> list[str]:
    """Kill what runs in this run's namespaces and delete them; return what could not be
    deleted (empty when all went)."""
    ours = [ns for ns in namespaces() if ns.startswith(PREFIX)]
    _kill_inside(ours)
    for ns in ours:
        _ip("netns", "del", ns, check=False)
    return [ns for ns in namespaces() if ns.startswith(PREFIX)]
