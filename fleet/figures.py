"""What the probes and the logs of a fleet run show: where the nodes send each key, and
whose address the nodes logged.

Pure functions over what :mod:`fleet.load` answered (a probe: ``{key: {node: [backend,
...]}}``, one backend per try, ``"!..."`` for a failure) and over the nodes' logs;
:mod:`fleet.report` puts them into the report.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Mapping
from typing import Any

from fleet import conf

__all__ = [
    "Probe",
    "access_logs",
    "dns_change",
    "error_log_summary",
    "routing_snapshot",
]

Probe = Mapping[str, Mapping[str, list[str]]]


# -- routing --------------------------------------------------------------------------------------
def routing_snapshot(probe: Probe, expected: Mapping[str, str]) -> dict[str, Any]:
    """Does every node send each key to the same backend, the ring's?"""
    agree = match = errors = 0
    for key, per_node in probe.items():
        seen = {b for answers in per_node.values() for b in answers}
        errors += sum(1 for b in seen if b.startswith("!"))
        if len(seen) == 1:
            agree += 1
            if seen == {expected[key]}:
                match += 1
    spread = collections.Counter(expected[k] for k in probe)
    return {
        "keys": len(probe),
        "nodes": len(next(iter(probe.values()), {})),
        "agree": agree,
        "match_ring": match,
        "errors": errors,
        "per_backend": dict(sorted(spread.items())),
        "ok": agree == match == len(probe) and errors == 0,
    }


def dns_change(
    name: str,
    before: list[str],
    after: list[str],
    prev: Probe,
    now: Probe,
    exp_before: Mapping[str, str],
    exp_after: Mapping[str, str],
    converged: Mapping[str, float],
) -> dict[str, Any]:
    """The keys that changed backend on each node, against the ring's expectation."""
    expected = {k for k in exp_before if exp_before[k] != exp_after[k]}
    nodes: dict[str, Any] = {}
    for node in conf.NODES:
        moved = {k for k in now if now[k][node] != prev[k][node]}
        wrong = {k for k in now if now[k][node] != [exp_after[k]]}
        dest = collections.Counter(now[k][node][0] for k in moved)
        nodes[node] = {
            "moved": len(moved),
            "same_as_expected": moved == expected,
            "unexpected_moves": len(moved - expected),
            "missing_moves": len(expected - moved),
            "not_on_ring_owner": len(wrong),
            "moved_to": dict(sorted(dest.items())),
            "converged_after_s": _round(converged.get(node)),
        }
    times = [t for t in converged.values()]
    snap = routing_snapshot(now, exp_after)
    ok = (
        snap["ok"]
        and len(converged) == len(conf.NODES)
        and all(n["same_as_expected"] and n["not_on_ring_owner"] == 0 for n in nodes.values())
    )
    return {
        "name": name,
        "before": before,
        "after": after,
        "keys": len(now),
        "expected_moves": len(expected),
        "expected_to": dict(sorted(collections.Counter(exp_after[k] for k in expected).items())),
        "nodes": nodes,
        "all_nodes_agree_after": snap["agree"],
        "convergence_spread_s": _round(max(times) - min(times)) if times else None,
        "ok": ok,
    }


# -- logs -----------------------------------------------------------------------------------------
def access_logs(texts: Iterable[str], clients: set[str], balancer: str) -> dict[str, Any]:
    """Whose address the nodes logged (``$remote_addr $realip_remote_addr "$request_uri"
    $status ...``): every request must show a client's address, never the balancer's."""
    lines = by_balancer = from_clients = via_lb = 0
    per_location: collections.Counter[str] = collections.Counter()
    for text in texts:
        for line in text.splitlines():
            parts = line.split(" ", 3)
            if len(parts) < 3:
                continue
            lines += 1
            remote, realip = parts[0], parts[1]
            uri = parts[2].strip('"')
            per_location[uri.split("?", 1)[0]] += 1
            by_balancer += remote == balancer
            from_clients += remote in clients
            via_lb += realip == balancer
    return {
        "lines": lines,
        "remote_addr_is_a_client": from_clients,
        "remote_addr_is_the_balancer": by_balancer,
        "connection_from_the_balancer": via_lb,
        "per_location": dict(sorted(per_location.items())),
        "ok": lines > 0 and by_balancer == 0 and from_clients == lines,
    }


_LEVEL = re.compile(r"\[(debug|info|notice|warn|error|crit|alert|emerg)\]")
_STAMP = re.compile(r"^\S+ \S+ \[\w+\] \d+#\d+: (\*\d+ )?")


def error_log_summary(text: str) -> dict[str, Any]:
    """Lines per level of a node's error log, and the distinct messages above notice."""
    levels: collections.Counter[str] = collections.Counter()
    distinct: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        m = _LEVEL.search(line)
        if not m:
            continue
        levels[m.group(1)] += 1
        if m.group(1) in ("warn", "error", "crit", "alert", "emerg"):
            msg = _STAMP.sub("", line)
            msg = re.sub(r"client: [\d.]+", "client: *", msg)
            msg = re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "*", msg)
            distinct[msg[:160]] += 1
    return {"levels": dict(levels), "top": distinct.most_common(6)}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)
