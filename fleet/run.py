"""``make fleet``: a bounded network simulation of a wsgate fleet (issue 17).

Usage: ``python -m fleet.run [--users N] [--out FILE] [--keep]`` as root. Builds the network
(:mod:`fleet.net`), starts every host (:mod:`fleet.hosts`), runs the phases below while the
client host (:mod:`fleet.load`) keeps a few thousand WebSocket clients busy, prints the
report (:mod:`fleet.report`), writes it as JSON, and exits 1 when a check failed (0 when all
passed, or when the simulation cannot run here: it then prints ``SKIP:`` and the reason).

The phases, in order: *steady* traffic; *dns add* (backend3 gets a DNS record); *dns
remove* (backend1 loses its record); *graceful stop* (``wsgate -s quit`` on node2, which is
started again once it has exited); *node kill* (SIGKILL to every process of node3, started
again after a while); *redis restart* (Redis killed and started again, empty).

Bounded: every wait has a timeout, the whole run has an alarm (``--timeout``, 420 s), and
everything (processes, namespaces, the run's directory) is removed in a ``finally``, on
Ctrl-C and SIGTERM too; namespaces left by a run that was killed are removed at the start.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any

from fleet import conf, figures, net, report, ring
from fleet.hosts import (
    REPO,
    Balancer,
    Node,
    detect_features,
    find_tool,
    start_backend,
    start_client,
    start_dns,
    start_redis,
    write_dns,
)
from fleet.procs import NsProcess

__all__ = ["main"]

DEFAULT_OUT = REPO / "fleet" / "results" / "last.json"


class Interrupted(Exception):
    """Ctrl-C, SIGTERM or the run's alarm."""


class ClientLink:
    """The client host's process: commands in, samples and answers out (a reader thread)."""

    def __init__(self, proc: NsProcess) -> None:
        self.proc = proc
        assert proc.proc.stdin is not None and proc.proc.stdout is not None
        self._in: IO[bytes] = proc.proc.stdin
        self._out: IO[bytes] = proc.proc.stdout
        self.samples: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None
        self._answers: dict[int, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._out:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                ev = msg.get("ev")
                if ev == "sample":
                    self.samples.append(msg)
                elif ev == "answer":
                    self._answers[msg["id"]] = msg
                elif ev == "final":
                    self.final = msg
                elif ev == "ready":
                    self.ready.set()
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def send(self, cmd: dict[str, Any]) -> None:
        self._in.write((json.dumps(cmd) + "\n").encode())
        self._in.flush()

    def ask(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a probe command and wait for its answer."""
        ident = next(self._ids)
        self.send({**cmd, "id": ident})
        deadline = time.monotonic() + timeout
        with self._cond:
            while ident not in self._answers:
                left = deadline - time.monotonic()
                if left <= 0 or not self.proc.alive():
                    raise TimeoutError(f"client: no answer to {cmd['cmd']} within {timeout:g}s")
                self._cond.wait(left)
            return self._answers.pop(ident)

    def last(self) -> dict[str, Any]:
        with self._cond:
            return self.samples[-1] if self.samples else {}

    def stop(self, wait: float, timeout: float) -> dict[str, Any] | None:
        self.send({"cmd": "stop", "wait": wait})
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.final is None and time.monotonic() < deadline and self.proc.alive():
                self._cond.wait(0.5)
        return self.final


class Simulation:
    def __init__(self, run: Path, args: argparse.Namespace) -> None:
        self.run = run
        self.args = args
        self.keys = [f"u{i}" for i in range(args.users)]
        self.nodes_addr = {n: net.host(n).addr for n in conf.NODES}
        self.procs: list[NsProcess] = []
        self.nodes: dict[str, Node] = {}
        self.balancer: Balancer | None = None
        self.client: ClientLink | None = None
        self.dns: NsProcess | None = None
        self.dns_hosts: Path | None = None
        self.redis: NsProcess | None = None
        self.in_dns = ["backend1", "backend2"]
        self.phases: list[dict[str, Any]] = []
        self.events: dict[str, float] = {}
        self.data: dict[str, Any] = {"dns": [], "notes": []}
        self.features = detect_features(run / "features")

    def log(self, text: str) -> None:
        print(f"[fleet {time.strftime('%H:%M:%S')}] {text}", flush=True)

    # -- start and stop -------------------------------------------------------------------------
    def start(self) -> None:
        self.events["setup"] = time.monotonic()
        net.setup()
        self.log("network: 11 namespaces on one bridge, 198.18.0.0/15")
        self.dns, self.dns_hosts = start_dns(self.run, self.in_dns)
        self.redis = start_redis(self.run)
        self.procs += [self.dns]
        for b in conf.BACKENDS:
            self.procs.append(start_backend(self.run, b))
        for i, name in enumerate(conf.NODES):
            node = Node(self.run, name, self.features, workers=2 if i == 0 else 1)
            node.start()
            self.nodes[name] = node
        self.balancer = Balancer(self.run)
        for name in conf.NODES:
            self.balancer.wait_status(name, "UP", 15)
        self.log("dnsmasq, redis, 3 backends, 3 wsgate nodes, haproxy: up")

    def start_clients(self) -> None:
        lb = net.host("lb").addr
        params = {
            "lb": lb,
            "lb_port": conf.LB_PORT,
            "sources": [net.host("client").addr, *net.CLIENT_SOURCES],
            "users": self.args.users,
            "cap": conf.CAP,
            "ramp": self.args.ramp,
            "node_port": conf.NODE_PORT,
        }
        proc = start_client(self.run, params)
        self.procs.append(proc)
        self.client = ClientLink(proc)
        if not self.client.ready.wait(30):
            raise RuntimeError(f"the client host did not start; see {proc.log}")

    def stop_all(self) -> None:
        if self.client is not None and self.client.proc.alive():
            self.client.proc.stop(3)
        for node in self.nodes.values():
            node.stop()
        if self.balancer is not None:
            self.balancer.stop()
        if self.redis is not None:
            self.redis.stop()
        for p in self.procs:
            p.stop(3)

    # -- helpers --------------------------------------------------------------------------------
    def hold(self, until: float) -> None:
        while time.monotonic() < until:
            if self.client is not None and not self.client.proc.alive():
                raise RuntimeError("the client host exited; see client.log")
            time.sleep(min(0.2, max(0.0, until - time.monotonic())))

    def phase(self, name: str) -> dict[str, Any]:
        now = time.monotonic()
        if self.phases:
            self.phases[-1]["t1"] = now
        p: dict[str, Any] = {"name": name, "t0": now, "t1": None}
        self.phases.append(p)
        self.log(f"phase: {name}")
        return p

    def probe(self, keys: list[str], path: str = "/route", tries: int = 1) -> dict[str, Any]:
        assert self.client is not None
        timeout = 30 + len(keys) * tries * 0.05
        return self.client.ask(
            {"cmd": "probe", "keys": keys, "nodes": self.nodes_addr, "path": path, "tries": tries},
            timeout,
        )

    # -- phases ---------------------------------------------------------------------------------
    def ramp(self) -> None:
        assert self.client is not None
        self.phase("ramp")
        target = 0.97 * self.args.users * conf.CAP
        deadline = time.monotonic() + self.args.ramp + 30
        while time.monotonic() < deadline:
            if self.client.last().get("open", 0) >= target:
                break
            self.hold(time.monotonic() + 0.5)
        self.log(f"ramp: {self.client.last().get('open', 0)} tunnels open")
        base = self.probe(self.keys)
        self.data["baseline"] = figures.routing_snapshot(
            base["result"], ring.owners(self.keys, self.in_dns)
        )
        self.data["last_probe"] = base["result"]
        single = self.probe(self.keys[:60], "/single", tries=2)
        self.data["single_name"] = figures.routing_snapshot(
            single["result"], ring.owners(self.keys[:60], self.in_dns)
        )

    def steady(self) -> None:
        assert self.client is not None
        p = self.phase("steady")
        rc = self.client.ask(
            {
                "cmd": "realclient",
                "sources": [net.host("client").addr, *net.CLIENT_SOURCES],
                "tries": 6,
                "cap": conf.ADDR_CAP,
            },
            120,
        )
        self.data["realclient"] = rc["result"]
        self.hold(p["t0"] + self.args.steady)

    def dns_change(self, name: str, after: list[str], hold: float) -> None:
        assert self.client is not None and self.dns is not None and self.dns_hosts is not None
        p = self.phase(name)
        before = self.in_dns
        exp_before = ring.owners(self.keys, before)
        exp_after = ring.owners(self.keys, after)
        movers = sorted(ring.moved(exp_before, exp_after))
        stayers = [k for k in self.keys if k not in set(movers)]
        sample = movers[:24] + random.sample(stayers, min(8, len(stayers)))
        self.client.send({"cmd": "settled", "on": False})
        write_dns(self.dns_hosts, after)
        t0 = time.monotonic()
        self.events[f"{name}_at"] = t0
        self.dns.signal(signal.SIGHUP)
        self.in_dns = after
        converged: dict[str, float] = {}
        rounds = 0
        while len(converged) < len(conf.NODES) and time.monotonic() - t0 < 25:
            ans = self.probe(sample)
            rounds += 1
            for node in conf.NODES:
                if node not in converged and all(
                    ans["result"][k][node] == [exp_after[k]] for k in sample
                ):
                    converged[node] = ans["t0"] - t0
            time.sleep(0.2)
        full = self.probe(self.keys)
        change = figures.dns_change(
            name,
            before,
            after,
            self.data["last_probe"],
            full["result"],
            exp_before,
            exp_after,
            converged,
        )
        self.data["last_probe"] = full["result"]
        self.client.send({"cmd": "settled", "on": True})
        self.events[f"{name}_settled"] = time.monotonic()
        if name == "dns_remove":
            # The tunnels to the backend that left DNS: closed (1012) over the drain time?
            gone = [b for b in before if b not in after][0]
            t_empty = None
            deadline = time.monotonic() + conf.DRAIN_TIME + 15
            while time.monotonic() < deadline:
                if self.client.last().get("per_backend", {}).get(gone, 0) == 0:
                    t_empty = self.client.last()["t"] - t0
                    break
                self.hold(time.monotonic() + 0.5)
            change["gone_backend"] = gone
            change["gone_tunnels_zero_after"] = t_empty
        self.data["dns"].append(change)
        self.log(
            f"{name}: {len(movers)} keys expected to move; nodes converged after "
            + ", ".join(f"{n} {t:.1f}s" for n, t in sorted(converged.items()))
        )
        self.hold(p["t0"] + hold)

    def graceful_stop(self, name: str = "node2") -> None:
        assert self.balancer is not None
        p = self.phase("graceful_stop")
        node = self.nodes[name]
        t0 = time.monotonic()
        self.events["quit_at"] = t0
        node.quit()
        try:
            self.balancer.wait_status(name, "DOWN", 10)
            self.events["quit_lb_down"] = time.monotonic()
        except TimeoutError:
            self.data["notes"].append(f"haproxy never marked {name} DOWN after the QUIT")
        code = node.wait_exit(45)
        self.events["quit_exit"] = time.monotonic()
        if code is None:
            self.data["notes"].append(f"{name} still running 45 s after QUIT: killed")
            node.kill()
        self.log(f"graceful: {name} exited ({code}) {time.monotonic() - t0:.1f}s after QUIT")
        self.hold(time.monotonic() + 2)
        p["t1"] = time.monotonic()
        self.phase("node_restart")
        node.start()
        self.balancer.wait_status(name, "UP", 15)
        self.events["restart_lb_up"] = time.monotonic()
        self.hold(time.monotonic() + 3)

    def node_kill(self, name: str = "node3") -> None:
        assert self.balancer is not None
        p = self.phase("node_kill")
        node = self.nodes[name]
        self.events["kill_at"] = time.monotonic()
        pids = node.kill()
        self.log(f"kill: SIGKILL to {name} ({len(pids)} processes)")
        try:
            self.balancer.wait_status(name, "DOWN", 10)
            self.events["kill_lb_down"] = time.monotonic()
        except TimeoutError:
            self.data["notes"].append(f"haproxy never marked {name} DOWN after the kill")
        self.hold(p["t0"] + 8)
        node.start()
        self.balancer.wait_status(name, "UP", 15)
        self.events["kill_lb_up"] = time.monotonic()
        self.hold(time.monotonic() + 4)

    def redis_restart(self) -> None:
        assert self.redis is not None
        p = self.phase("redis_restart")
        self.events["redis_down"] = time.monotonic()
        self.redis.kill_all()
        self.hold(time.monotonic() + self.args.redis_gap)
        self.redis = start_redis(self.run)
        self.events["redis_up"] = time.monotonic()
        self.log("redis: restarted (empty)")
        self.hold(p["t0"] + self.args.redis_hold)

    def finish(self) -> dict[str, Any] | None:
        assert self.client is not None
        self.phase("end")
        final = self.client.stop(wait=5, timeout=40)
        self.phases[-1]["t1"] = self.events["end"] = time.monotonic()
        return final

    # -- the whole run --------------------------------------------------------------------------
    def simulate(self) -> dict[str, Any]:
        self.start()
        self.start_clients()
        self.ramp()
        self.steady()
        self.dns_change("dns_add", ["backend1", "backend2", "backend3"], self.args.dns_hold)
        self.dns_change("dns_remove", ["backend2", "backend3"], self.args.dns_hold)
        self.graceful_stop()
        self.node_kill()
        self.redis_restart()
        final = self.finish()
        assert self.client is not None and self.balancer is not None
        samples = list(self.client.samples)
        haproxy_changes = list(self.balancer.changes)
        self.stop_all()
        access = figures.access_logs(
            [n.logs("access.log") for n in self.nodes.values()],
            clients={net.host("client").addr, *net.CLIENT_SOURCES},
            balancer=net.host("lb").addr,
        )
        errors = {
            name: figures.error_log_summary(n.logs("error.log")) for name, n in self.nodes.items()
        }
        return {
            "features": self.features,
            "users": self.args.users,
            "phases": self.phases,
            "events": self.events,
            "samples": samples,
            "final": final,
            "haproxy": haproxy_changes,
            "access": access,
            "errors": errors,
            **self.data,
        }


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m fleet.run", description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=300, help="users (7 clients each)")
    ap.add_argument("--ramp", type=float, default=12.0, help="seconds over which clients start")
    ap.add_argument("--steady", type=float, default=15.0)
    ap.add_argument("--dns-hold", type=float, default=15.0)
    ap.add_argument("--redis-gap", type=float, default=1.0, help="seconds Redis stays down")
    ap.add_argument("--redis-hold", type=float, default=20.0)
    ap.add_argument("--timeout", type=int, default=420, help="the whole run's alarm")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--keep", action="store_true", help="keep the run's directory (logs)")
    return ap.parse_args(argv)


def _missing_tools() -> list[str]:
    return [t for t in ("ip", "haproxy", "dnsmasq", "redis-server") if find_tool(t) is None]


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    reason = net.can_create()
    if reason is None and (missing := _missing_tools()):
        reason = f"not installed: {', '.join(missing)} (make fleet installs them as root)"
    if reason is not None:
        print(f"SKIP: the fleet simulation cannot run here: {reason}")
        return 0
    left = net.remove_leftovers()
    if left:
        print(f"removed {len(left)} namespaces left by an earlier run: {' '.join(left)}")

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    signal.alarm(args.timeout)
    run = Path(tempfile.mkdtemp(prefix="wsgate-fleet-"))
    sim: Simulation | None = None
    raw: dict[str, Any] | None = None
    failure = ""
    try:
        sim = Simulation(run, args)
        raw = sim.simulate()
    except Interrupted as exc:
        failure = f"interrupted ({exc})"
    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError, net.NetError) as exc:
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        signal.alarm(0)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not stop the teardown
        if sim is not None:
            try:
                sim.stop_all()
            except Exception as exc:  # whatever it was, the namespaces go below
                print(f"stopping the processes: {exc}", file=sys.stderr)
        left = net.teardown()
        if args.keep or failure:
            print(f"logs kept in {run}")
        else:
            shutil.rmtree(run, ignore_errors=True)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
    if left:
        print(f"teardown: namespaces left: {' '.join(left)}")
    if raw is None:
        print(f"FAILED: {failure}")
        return 1
    raw["teardown_left"] = left
    result = report.analyse(raw)
    print(report.render(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"written: {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
