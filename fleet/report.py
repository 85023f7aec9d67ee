"""The figures of a fleet run and the checks of issue 17, from what the run collected.

Pure functions: :func:`analyse` takes the run's raw record (phases, per-second samples from
the client host, every tunnel's opening and end, probes, logs) and returns the result that
:func:`render` prints and the runner writes to ``fleet/results/last.json``. Times in the raw
record are ``time.monotonic()`` of the machine (every process of the run reads the same
clock); the result has them relative to the start of a phase or event.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import math
from collections.abc import Iterable, Mapping
from typing import Any

from fleet import conf

__all__ = ["analyse", "render"]

#: A message unechoed at a clean close must have been sent less than this before the Close
#: arrived: it crossed the Close on the wire (a proxy cannot echo what it receives after
#: closing). An older one would have been dropped by the tunnel.
MAX_RACE_MS = 500.0
#: The cap must be back within this many seconds of Redis's restart ("within seconds").
REDIS_RECOVERY = 10.0
#: A backend that left DNS: its tunnels must be gone within the drain time plus this (the
#: time for every node to see the change: valid= plus one second, plus a poll).
DRAIN_SLACK = 6.0


# -- the whole run --------------------------------------------------------------------------------
def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def _in(t: float, t0: float, t1: float | None) -> bool:
    return t0 <= t and (t1 is None or t < t1)


def _phase_stats(
    p: Mapping[str, Any], samples: list[dict[str, Any]], closes: list[list[Any]]
) -> dict[str, Any]:
    t0, t1 = p["t0"], p["t1"]
    ss = [s for s in samples if t0 < s["t"] <= (t1 if t1 is not None else math.inf)]
    sent = sum(s["delta"].get("sent", 0) for s in ss)
    echoed = sum(s["delta"].get("echoed", 0) for s in ss)
    rec = [s["reconnects"] for s in ss]
    by_code: collections.Counter[int] = collections.Counter()
    clean_unechoed = abnormal_unechoed = 0
    for c in closes:
        if _in(c[0], t0, t1):
            by_code[c[4]] += 1
            if c[4] == 1006:
                abnormal_unechoed += c[5]
            else:
                clean_unechoed += c[5]
    rejects: collections.Counter[str] = collections.Counter()
    for s in ss:
        rejects.update(s.get("rejects", {}))
    rtt = [s["rtt_ms"] for s in ss if s.get("rtt_ms") and s["rtt_ms"][0]]
    return {
        "name": p["name"],
        "seconds": _r((t1 or t0) - t0, 1),
        "sent": sent,
        "echoed": echoed,
        "resent": sum(s["delta"].get("resent", 0) for s in ss),
        "unechoed_clean_close": clean_unechoed,
        "unechoed_abnormal_close": abnormal_unechoed,
        "closes": {str(k): v for k, v in sorted(by_code.items())},
        "reconnects": sum(rec),
        "reconnects_max_per_s": max(rec, default=0),
        "max_tunnels_per_user": max((s["peak_user"] for s in ss), default=0),
        "open_min": min((s["open"] for s in ss), default=0),
        "open_max": max((s["open"] for s in ss), default=0),
        "per_node_at_end": dict(sorted(ss[-1]["per_node"].items())) if ss else {},
        "refused": {k: v for k, v in sorted(rejects.items()) if v},
        # The median of the per-second medians, the largest per-second 99th percentile.
        "rtt_ms_p50": sorted(r[0] for r in rtt)[len(rtt) // 2] if rtt else None,
        "rtt_ms_p99_max": max((r[1] for r in rtt), default=None),
    }


def _ages(closes: list[list[Any]]) -> dict[str, float]:
    """How long before its tunnel's end each unechoed message had been sent (ms): the
    median, the 95th percentile and the largest, over the tunnels that had one."""
    ages = sorted(c[7] for c in closes if c[5])
    if not ages:
        return {}
    return {
        "n": len(ages),
        "p50": ages[len(ages) // 2],
        "p95": ages[int(0.95 * (len(ages) - 1))],
        "max": ages[-1],
    }


def _histogram(times: Iterable[float], start: float, width: int) -> list[int]:
    bins = [0] * width
    for t in times:
        i = int(math.floor(t - start))
        if 0 <= i < width:
            bins[i] += 1
    return bins


def _next_open(opens: list[list[Any]], cid: int, after: float) -> float | None:
    best = None
    for o in opens:
        if o[1] == cid and o[0] > after and (best is None or o[0] < best):
            best = o[0]
    return best


def _graceful(
    raw: Mapping[str, Any], opens: list[list[Any]], closes: list[list[Any]]
) -> dict[str, Any]:
    ev = raw["events"]
    t0 = ev["quit_at"]
    node = "node2"
    mine = [c for c in closes if c[2] == node and c[0] >= t0 and c[0] < ev["quit_exit"] + 1]
    # Handshakes that failed otherwise than by the cap's 503 while the node stopped (the
    # balancer still sending clients to a node that closed its listeners would show here).
    refused: collections.Counter[str] = collections.Counter()
    for s in raw["samples"]:
        if t0 < s["t"] <= ev["quit_exit"] + 2:
            refused.update({k: v for k, v in s.get("rejects", {}).items() if k != "503" and v})
    by_cid: dict[int, list[list[Any]]] = collections.defaultdict(list)
    for o in opens:
        by_cid[o[1]].append(o)
    reopen = []
    for c in mine:
        nxt = _next_open(by_cid[c[1]], c[1], c[0])
        if nxt is not None:
            reopen.append(nxt)
    width = int(math.ceil(ev["quit_exit"] - t0)) + 3
    close_h = _histogram((c[0] for c in mine), t0, width)
    reopen_h = _histogram(reopen, t0, width)
    times = sorted(c[0] - t0 for c in mine)
    grace = conf.SHUTDOWN_GRACE if raw["features"]["shutdown_grace"] else 0.0
    n = len(mine)
    mean = n / conf.CLOSE_SPREAD if n else 0.0
    early = sum(1 for t in times if t < grace - 0.25)
    span = (times[-1] - times[0]) if times else 0.0
    spread_ok = (
        n > 0
        and early == 0
        and max(close_h, default=0) <= max(3.0, 2.5 * mean)
        and span >= 0.6 * conf.CLOSE_SPREAD
    )
    codes = collections.Counter(c[4] for c in mine)
    return {
        "node": node,
        "tunnels_closed": n,
        "codes": {str(k): v for k, v in sorted(codes.items())},
        "unechoed_at_close": sum(c[5] for c in mine),
        "oldest_unechoed_ms": max((c[7] for c in mine), default=0.0),
        "unechoed_ages_ms": _ages(mine),
        "reconnected": len(reopen),
        "first_close_s": _r(times[0]) if times else None,
        "last_close_s": _r(times[-1]) if times else None,
        "closed_before_grace_end": early,
        "haproxy_marked_down_s": _r(ev.get("quit_lb_down", math.nan) - t0),
        "node_exited_s": _r(ev["quit_exit"] - t0),
        "closes_per_s": close_h,
        "reconnects_per_s": reopen_h,
        "handshakes_failed": dict(refused),
        "spread_ok": spread_ok,
    }


def _kill(
    raw: Mapping[str, Any], opens: list[list[Any]], closes: list[list[Any]]
) -> dict[str, Any]:
    ev = raw["events"]
    t0 = ev["kill_at"]
    mine = [c for c in closes if c[2] == "node3" and t0 <= c[0] < t0 + 5]
    by_cid: dict[int, list[list[Any]]] = collections.defaultdict(list)
    for o in opens:
        by_cid[o[1]].append(o)
    back = sorted(
        t - t0 for t in (_next_open(by_cid[c[1]], c[1], c[0]) for c in mine) if t is not None
    )
    return {
        "tunnels_cut": len(mine),
        "codes": {str(k): v for k, v in sorted(collections.Counter(c[4] for c in mine).items())},
        "outstanding_lost_at_kill": sum(c[5] for c in mine),
        "reconnected": len(back),
        "reconnected_95pct_s": _r(back[int(0.95 * (len(back) - 1))]) if back else None,
        "haproxy_marked_down_s": _r(ev.get("kill_lb_down", math.nan) - t0),
        "closes_per_s": _histogram((c[0] for c in mine), t0, 6),
    }


def _redis(
    raw: Mapping[str, Any], samples: list[dict[str, Any]], closes: list[list[Any]]
) -> dict[str, Any]:
    """Redis killed and started again, empty: while it is away the nodes fail open, so a
    user may get more than the cap; then the counts come back. Two recoveries: *admission*
    (no tunnel opens over the cap any more) and *holding* (no user holds more than the cap:
    the tunnels admitted over it have ended)."""
    ev = raw["events"]
    down, up = ev["redis_down"], ev["redis_up"]
    after = [s for s in samples if s["t"] > down]
    over_opens = [s["delta"].get("over_cap_opens", 0) for s in after]
    last_admit = max((s["t"] for s in after if s["delta"].get("over_cap_opens", 0)), default=None)
    # The tunnels the nodes closed over the cap once Redis was back (Close 1013).
    shed = [c[0] - up for c in closes if c[0] > down and c[4] == 1013]
    held_back: float | None = None
    for i, s in enumerate(after):
        if all(x["over_cap"] == 0 for x in after[i:]):
            held_back = max(0.0, s["t"] - up)  # by then (a snapshot), at most that
            break
    return {
        "down_s": _r(up - down),
        "observed_s": _r(after[-1]["t"] - up) if after else None,
        "max_tunnels_per_user": max((s["peak_user"] for s in after), default=0),
        "per_user_max_per_s": [s["max_user"] for s in after],
        "users_over_cap_per_s": [s["over_cap"] for s in after],
        "opened_over_cap_per_s": over_opens,
        "admission_back_after_s": _r(max(0.0, last_admit - up)) if last_admit else 0.0,
        "holding_back_after_s": _r(held_back),
        "users_over_cap_at_end": after[-1]["over_cap"] if after else 0,
        "closed_over_cap": len(shed),
        "closed_over_cap_from_to_s": [_r(min(shed)), _r(max(shed))] if shed else None,
        "open_before": next((s["open"] for s in reversed(samples) if s["t"] <= down), 0),
        "open_after": after[-1]["open"] if after else 0,
        "ok": held_back is not None and held_back <= REDIS_RECOVERY,
    }


def _realclient(rc: Mapping[str, Any], denied: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in ("/byip", "/iphash"):
        per = rc[path]
        same = real = total = 0
        nodes: set[str] = set()
        backends: set[str] = set()
        for src, hellos in per.items():
            got = {h.get("backend") for h in hellos}
            same += len(got) == 1 and all(h.get("status") == 101 for h in hellos)
            for h in hellos:
                total += 1
                real += h.get("real_ip") == src
                nodes.add(str(h.get("node")))
                backends.add(str(h.get("backend")))
        out[path] = {
            "sources": len(per),
            "tries": total,
            "sources_on_one_backend": same,
            "real_ip_seen": real,
            "nodes_seen": sorted(nodes),
            "backends_used": sorted(backends),
            "ok": same == len(per) and real == total and len(backends) > 1,
        }
    deny = rc["/deny"]
    denied_statuses = [h.get("status") for h in deny.get(denied, [])]
    others = [h.get("status") for src, hs in deny.items() if src != denied for h in hs]
    out["/deny"] = {
        "denied_source": denied,
        "denied_statuses": dict(collections.Counter(map(str, denied_statuses))),
        "others_statuses": dict(collections.Counter(map(str, others))),
        "ok": bool(denied_statuses)
        and all(s == 403 for s in denied_statuses)
        and all(s == 101 for s in others),
    }
    pc = rc["/percap"]
    statuses = pc["statuses"]
    out["/percap"] = {
        "source": pc["source"],
        "statuses": statuses,
        "ok": statuses.count(101) == conf.ADDR_CAP and statuses.count(503) == 1,
    }
    rate = rc.get("/rate", {"statuses": []})
    out["/rate"] = {**rate, "ok": rate["statuses"] == [101, 503, 503]}
    return out


def analyse(raw: Mapping[str, Any]) -> dict[str, Any]:
    features = raw["features"]
    if isinstance(features, conf.Features):
        missing = features.missing()
        features = dataclasses.asdict(features)
    else:
        missing = raw.get("missing", [])
    raw = {**raw, "features": features}
    final = raw["final"] or {}
    samples = raw["samples"]
    opens = final.get("opens", [])
    closes = final.get("closes", [])
    phases = [_phase_stats(p, samples, closes) for p in raw["phases"]]
    ev = raw["events"]
    graceful = _graceful(raw, opens, closes)
    kill = _kill(raw, opens, closes)
    redis = _redis(raw, samples, closes)
    start = raw["phases"][0]["t0"]
    outside = [s for s in samples if s["t"] <= ev["redis_down"]]
    steady_from = next(p["t0"] for p in raw["phases"] if p["name"] == "steady")
    cap_max = max((s["peak_user"] for s in outside if s["t"] > steady_from), default=0)
    cap_max_ramp = max((s["peak_user"] for s in outside if s["t"] <= steady_from), default=0)
    counts = final.get("counts", {})
    rc = _realclient(raw["realclient"], conf.DENIED_SOURCE)
    split = max((s["users_split"] for s in samples), default=0)
    checked = max((s["users_checked"] for s in samples), default=0)
    multi = min(
        (s["users_multi_node"] for s in samples if s["users_checked"] >= 0.9 * raw["users"]),
        default=0,
    )
    dns = raw["dns"]
    remove = next((d for d in dns if d["name"] == "dns_remove"), None)
    drain_closes = [
        c
        for c in closes
        if remove
        and c[3] == remove.get("gone_backend")
        and c[0] >= ev["dns_remove_at"]
        and c[0] < ev["quit_at"]
    ]
    drain_times = sorted(c[0] - ev["dns_remove_at"] for c in drain_closes)
    gone_after: float | None = remove.get("gone_tunnels_zero_after") if remove else None
    drain = {
        "backend": remove.get("gone_backend") if remove else None,
        "tunnels_closed": len(drain_closes),
        "codes": dict(collections.Counter(str(c[4]) for c in drain_closes)),
        "unechoed_at_close": sum(c[5] for c in drain_closes),
        "oldest_unechoed_ms": max((c[7] for c in drain_closes), default=0.0),
        "unechoed_ages_ms": _ages(drain_closes),
        "first_close_s": _r(drain_times[0]) if drain_times else None,
        "last_close_s": _r(drain_times[-1]) if drain_times else None,
        "closes_per_s": _histogram(
            (t + ev["dns_remove_at"] for t in drain_times), ev["dns_remove_at"], 15
        ),
        "no_tunnel_left_after_s": _r(gone_after),
    }
    graceful_unechoed = graceful["unechoed_at_close"] + drain["unechoed_at_close"]
    graceful_age = max(graceful["oldest_unechoed_ms"], drain["oldest_unechoed_ms"])
    never_by = final.get("never_echoed_by", {})
    # The slowest round trips of the run: a message younger than that at a Close crossed it.
    rtt_p99 = max((p["rtt_ms_p99_max"] or 0.0 for p in phases), default=0.0)
    lost_clean = never_by.get("open_clean", 0)
    checks = [
        (
            "cap: max tunnels per user fleet-wide <= 5 (at every opening, until Redis restarts)",
            cap_max <= conf.CAP and cap_max_ramp <= conf.CAP,
            f"max {max(cap_max, cap_max_ramp)} (ramp {cap_max_ramp}, then {cap_max})",
        ),
        (
            "cap recovers within seconds of a Redis restart (no user holds more than 5)",
            redis["ok"],
            f"max {redis['max_tunnels_per_user']}; openings over the cap stop after "
            f"{redis['admission_back_after_s']} s; "
            + (
                f"no user over the cap after {redis['holding_back_after_s']} s"
                if redis["holding_back_after_s"] is not None
                else f"{redis['users_over_cap_at_end']} users still over it "
                f"{redis['observed_s']} s after the restart (the tunnels admitted meanwhile "
                "stay open)"
            ),
        ),
        (
            "graceful stop and drain: no message lost for clients that reconnect",
            lost_clean == 0 and graceful_age <= max(MAX_RACE_MS, rtt_p99),
            f"{graceful_unechoed} unechoed at a 1001/1012 (the oldest sent {graceful_age:g} ms "
            f"before the Close arrived; round trips up to {rtt_p99:g} ms), all sent again; "
            f"never echoed on an open tunnel: {lost_clean}",
        ),
        (
            "graceful stop: closes spread over close_spread_time after the grace",
            graceful["spread_ok"],
            f"{graceful['tunnels_closed']} closes from {graceful['first_close_s']} s to "
            f"{graceful['last_close_s']} s, max {max(graceful['closes_per_s'], default=0)}/s",
        ),
        (
            "graceful stop: no client refused or cut while the node left the pool",
            not graceful["handshakes_failed"],
            f"failed handshakes besides the cap's 503: {graceful['handshakes_failed'] or 0}",
        ),
        (
            "messages: echoes in order, none unexpected",
            counts.get("order_errors", 0) == 0 and counts.get("unexpected", 0) == 0,
            f"order errors {counts.get('order_errors', 0)}, unexpected "
            f"{counts.get('unexpected', 0)}",
        ),
        (
            "routing: every node sends every key to the ring's backend (start)",
            raw["baseline"]["ok"],
            f"{raw['baseline']['match_ring']}/{raw['baseline']['keys']} keys on 3 nodes",
        ),
        (
            "routing: one resolve name for every backend keeps each key on one backend "
            "(the ring of the addresses)",
            bool(raw.get("single_name", {}).get("ok")),
            f"{raw.get('single_name', {}).get('match_ring')}/"
            f"{raw.get('single_name', {}).get('keys')} keys on 3 nodes, 2 tries each",
        ),
        *[
            (
                f"routing: {d['name']} moves exactly the ring's keys, on every node",
                d["ok"],
                f"expected {d['expected_moves']}, moved "
                + "/".join(str(n["moved"]) for n in d["nodes"].values())
                + f", converged within {d['convergence_spread_s']} s of each other",
            )
            for d in dns
        ],
        (
            "routing: a user's tunnels are on one backend (opened outside DNS changes)",
            split == 0,
            f"{split} users split of up to {checked} checked per second (at least {multi} of "
            "them through 2 or 3 nodes in every full sample)",
        ),
        (
            "dns remove: tunnels to the backend that left are closed (1012) over the drain",
            gone_after is not None and gone_after <= conf.DRAIN_TIME + DRAIN_SLACK,
            f"{drain['tunnels_closed']} closes {drain['codes']}, none left after "
            f"{drain['no_tunnel_left_after_s']} s",
        ),
        (
            "real client through send-proxy-v2: hash $remote_addr consistent, ip_hash",
            rc["/byip"]["ok"] and rc["/iphash"]["ok"],
            f"byip {rc['/byip']['sources_on_one_backend']}/{rc['/byip']['sources']} sources, "
            f"iphash {rc['/iphash']['sources_on_one_backend']}/{rc['/iphash']['sources']}, "
            f"X-Real-IP right {rc['/byip']['real_ip_seen']}/{rc['/byip']['tries']}",
        ),
        (
            "real client: allow/deny",
            rc["/deny"]["ok"],
            f"denied {rc['/deny']['denied_statuses']}, others {rc['/deny']['others_statuses']}",
        ),
        (
            "real client: limit_conn and limit_req per address, fleet-wide",
            rc["/percap"]["ok"] and rc["/rate"]["ok"],
            f"{conf.ADDR_CAP + 1} tunnels at once from one address: "
            f"{rc['/percap']['statuses']}; 3 in a row from another, {conf.RATE_PER_MIN}r/m: "
            f"{rc['/rate']['statuses']} (through {rc['/rate'].get('nodes')})",
        ),
        (
            "real client: X-Real-IP of every load client, access logs",
            final.get("real_ip_mismatches", 1) == 0 and raw["access"]["ok"],
            f"mismatches {final.get('real_ip_mismatches')}, log lines with the balancer's "
            f"address {raw['access']['remote_addr_is_the_balancer']} of {raw['access']['lines']}",
        ),
        (
            "teardown: no namespace left",
            not raw.get("teardown_left"),
            " ".join(raw.get("teardown_left") or []) or "none",
        ),
    ]
    rel = {k: _r(v - start, 1) for k, v in sorted(ev.items(), key=lambda kv: kv[1])}
    return {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "users": raw["users"],
        "seconds": _r(ev["end"] - ev["setup"], 1),
        "clients": final.get("clients"),
        "cap": conf.CAP,
        "features": features,
        "not_exercised": missing,
        "events_s": rel,
        "phases": phases,
        "messages": {
            "sent": counts.get("sent", 0),
            "echoed": counts.get("echoed", 0),
            "resent": counts.get("resent", 0),
            "never_echoed": final.get("never_echoed"),
            "never_echoed_by": never_by,
            "recovered_after_clean_close": counts.get("recovered_clean", 0),
            "recovered_after_kill": counts.get("recovered_abnormal", 0),
            "order_errors": counts.get("order_errors", 0),
            "unexpected": counts.get("unexpected", 0),
            "unechoed_at_graceful_closes": graceful_unechoed,
            "unechoed_at_kill": kill["outstanding_lost_at_kill"],
        },
        "graceful_stop": graceful,
        "node_kill": kill,
        "redis_restart": redis,
        "dns_drain": drain,
        "routing": {
            "baseline": raw["baseline"],
            "changes": dns,
            "one_name_for_all_backends": raw.get("single_name"),
            "users_split_max": split,
            "users_checked_max": checked,
            "users_through_several_nodes_min": multi,
        },
        "real_client": rc,
        "access_log": raw["access"],
        "error_logs": raw["errors"],
        "haproxy": [(_r(t - start, 1), n, s) for t, n, s in raw["haproxy"]],
        "refused": final.get("rejects"),
        "notes": raw.get("notes", []),
        "checks": [{"check": c, "ok": ok, "detail": d} for c, ok, d in checks],
        "passed": all(ok for _, ok, _ in checks),
    }


# -- printing -------------------------------------------------------------------------------------
def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for j, r in enumerate(cells):
        out.append(
            "  ".join(
                v.rjust(w) if i else v.ljust(w)
                for i, (v, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def render(res: Mapping[str, Any]) -> str:
    lines = [
        "",
        f"wsgate fleet simulation: {res['users']} users x 7 = {res['clients']} clients, "
        f"cap {res['cap']} per user, 3 nodes, 3 backends; {res['seconds']} s ({res['when']})",
    ]
    if res["not_exercised"]:
        lines.append(
            "not exercised (the installed wsgate lacks them): " + ", ".join(res["not_exercised"])
        )
    lines.append("")
    rows = [
        [
            p["name"],
            p["seconds"],
            p["sent"],
            p["echoed"],
            p["unechoed_clean_close"],
            p["unechoed_abnormal_close"],
            p["reconnects"],
            p["reconnects_max_per_s"],
            p["max_tunnels_per_user"],
            f"{p['open_min']}-{p['open_max']}",
            f"{p['rtt_ms_p50']}/{p['rtt_ms_p99_max']}" if p["rtt_ms_p50"] is not None else "",
            " ".join(f"{k}:{v}" for k, v in p["closes"].items()),
        ]
        for p in res["phases"]
    ]
    lines.append(
        _table(
            [
                "phase",
                "s",
                "sent",
                "echoed",
                "unechoed@close",
                "unechoed@kill",
                "reconnects",
                "max/s",
                "max/user",
                "tunnels",
                "rtt ms",
                "closes by code",
            ],
            rows,
        )
    )
    lines.append(
        "tunnels per node at the end of each phase: "
        + ", ".join(
            p["name"] + " " + "/".join(str(p["per_node_at_end"].get(n, 0)) for n in conf.NODES)
            for p in res["phases"]
            if p.get("per_node_at_end")
        )
    )
    m = res["messages"]
    lines += [
        "",
        f"messages: sent {m['sent']}, echoed {m['echoed']}, sent again after a close "
        f"{m['resent']} (then echoed: {m['recovered_after_clean_close']} after a Close, "
        f"{m['recovered_after_kill']} after a kill), never echoed {m['never_echoed']} "
        f"{m['never_echoed_by']}, out of order {m['order_errors']}",
        "  (unechoed@close: sent, not echoed when a Close (1001, 1012, 1013) ended the tunnel; "
        "unechoed@kill: "
        "outstanding when the node died; both are sent again on reconnecting; max/user: the "
        "most tunnels one user held fleet-wide, taken at every opening; rtt: a message's round "
        "trip, the median and the largest 99th percentile of a second)",
    ]
    g = res["graceful_stop"]
    lines += [
        "",
        f"graceful stop of {g['node']}: haproxy marked it down after "
        f"{g['haproxy_marked_down_s']} s, first 1001 at {g['first_close_s']} s, last at "
        f"{g['last_close_s']} s, exited at {g['node_exited_s']} s; {g['tunnels_closed']} "
        f"tunnels {g['codes']}, {g['reconnected']} reconnected",
        "  second after QUIT: " + " ".join(f"{i:>3}" for i in range(len(g["closes_per_s"]))),
        "  closes (1001)    : " + " ".join(f"{v:>3}" for v in g["closes_per_s"]),
        "  reconnects       : " + " ".join(f"{v:>3}" for v in g["reconnects_per_s"]),
    ]
    k = res["node_kill"]
    lines += [
        "",
        f"node kill (node3): {k['tunnels_cut']} tunnels cut {k['codes']}, "
        f"{k['outstanding_lost_at_kill']} messages outstanding (expected loss, sent again), "
        f"95 % reconnected after {k['reconnected_95pct_s']} s, haproxy marked it down after "
        f"{k['haproxy_marked_down_s']} s",
    ]
    r = res["redis_restart"]
    lines += [
        f"redis restart: down {r['down_s']} s; max tunnels per user "
        f"{r['max_tunnels_per_user']}; openings over the cap stop after "
        f"{r['admission_back_after_s']} s; "
        + (
            f"no user over the cap after {r['holding_back_after_s']} s"
            if r["holding_back_after_s"] is not None
            else f"{r['users_over_cap_at_end']} users still over the cap"
        )
        + f" (observed {r['observed_s']} s); "
        + (
            f"{r['closed_over_cap']} tunnels over the cap closed with 1013 from "
            f"{r['closed_over_cap_from_to_s'][0]} s to {r['closed_over_cap_from_to_s'][1]} s "
            "after its return"
            if r.get("closed_over_cap")
            else "no tunnel closed with 1013"
        ),
        "  per second from its kill:  most tunnels of one user "
        + " ".join(map(str, r["per_user_max_per_s"])),
        "                             users over the cap      "
        + " ".join(map(str, r["users_over_cap_per_s"])),
        "                             openings over the cap   "
        + " ".join(map(str, r["opened_over_cap_per_s"])),
    ]
    d = res["dns_drain"]
    lines += [
        f"dns remove: {d['tunnels_closed']} tunnels to {d['backend']} closed {d['codes']} "
        f"from {d['first_close_s']} s to {d['last_close_s']} s after the change, none left "
        f"after {d['no_tunnel_left_after_s']} s; per second: {d['closes_per_s']}",
        "",
    ]
    rt = res["routing"]
    b = rt["baseline"]
    lines.append(
        f"routing at start: {b['match_ring']}/{b['keys']} keys sent to the ring's backend by "
        f"all {b['nodes']} nodes ({b['per_backend']})"
    )
    rows = []
    for ch in rt["changes"]:
        for node, n in ch["nodes"].items():
            rows.append(
                [
                    ch["name"],
                    node,
                    ch["expected_moves"],
                    n["moved"],
                    n["unexpected_moves"],
                    n["missing_moves"],
                    n["not_on_ring_owner"],
                    n["converged_after_s"],
                    " ".join(f"{b}:{v}" for b, v in n["moved_to"].items()),
                ]
            )
    lines.append(
        _table(
            [
                "dns change",
                "node",
                "expected",
                "moved",
                "unexpected",
                "missing",
                "off ring",
                "converged s",
                "moved to",
            ],
            rows,
        )
    )
    one = rt.get("one_name_for_all_backends") or {}
    if one:
        lines.append(
            f"one name for all backends (server {conf.SINGLE_NAME} resolve): "
            f"{one['match_ring']}/{one['keys']} keys on the ring's backend on every node"
        )
    rc = res["real_client"]
    lines += [
        "",
        "real client through HAProxy send-proxy-v2: "
        + "; ".join(
            f"{p} {rc[p]['sources_on_one_backend']}/{rc[p]['sources']} sources on one backend"
            f" via {len(rc[p]['nodes_seen'])} nodes"
            for p in ("/byip", "/iphash")
        )
        + f"; deny {rc['/deny']['denied_statuses']}; percap {rc['/percap']['statuses']}"
        + f"; rate {rc.get('/rate', {}).get('statuses')}",
        f"access logs: {res['access_log']['lines']} lines, "
        f"{res['access_log']['remote_addr_is_a_client']} with a client's address, "
        f"{res['access_log']['remote_addr_is_the_balancer']} with the balancer's",
        "",
        "checks:",
    ]
    for c in res["checks"]:
        lines.append(f"  [{'PASS' if c['ok'] else 'FAIL'}] {c['check']}: {c['detail']}")
    for note in res["notes"]:
        lines.append(f"  note: {note}")
    lines.append(f"result: {'PASSED' if res['passed'] else 'FAILED'}")
    return "\n".join(lines)
