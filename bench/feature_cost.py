"""What issue 15's WebSocket features cost per relayed message, in instructions (load-proof).

Timings on a shared machine swing by a factor of two between runs; the instructions a process
executes do not. This runs one wsgate worker (``master_process off``) under valgrind's
callgrind, relays ``N`` ping-pong round trips of one message size on one tunnel through it to
``wsgate-echo --echo``, and reads the worker's total user-space instructions. Two runs with
``N1`` and ``N2`` round trips cancel start-up and shut-down: ``(I(N2) - I(N1)) / (2 (N2 - N1))``
is the worker's instructions per relayed message (each round trip relays two: one each way).
It does so for each configuration variant below: the features off, keepalive pings on, every
limit on, the size limits alone, the rate limit alone, pings and limits on, and
``websocket_metrics on``.

Kernel work (the socket reads and writes, about half of a relayed message's CPU on this
machine, see docs/benchmark.md) is not counted by callgrind, so a feature's share of the
whole CPU per message is smaller than its share printed here: the figure is an upper bound.

    .venv/bin/python -m bench.feature_cost [--sizes 64,4096] [--n1 200 --n2 1200]

Needs valgrind (Debian's ``valgrind``); not part of ``make bench`` (about 10 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

BIN = Path(sys.executable).parent

VARIANTS: dict[str, str] = {
    "off": "",
    "pings": "websocket_ping_interval 30s both; websocket_ping_timeout 10s;",
    "limits": (
        "websocket_max_message_size 1m both; websocket_max_frame_size 1m both; "
        "websocket_message_rate 100000r/s burst=100000 both;"
    ),
    "sizes": "websocket_max_message_size 1m both; websocket_max_frame_size 1m both;",
    "rate": "websocket_message_rate 100000r/s burst=100000 both;",
    "pings+limits": (
        "websocket_ping_interval 30s both; websocket_ping_timeout 10s; "
        "websocket_max_message_size 1m both; websocket_max_frame_size 1m both; "
        "websocket_message_rate 100000r/s burst=100000 both;"
    ),
    "metrics": "websocket_metrics on;",
}

CONF = """
master_process off;
daemon off;
worker_processes 1;
error_log stderr notice;
pid logs/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    upstream echo {{ server 127.0.0.1:{echo}; }}
    server {{
        listen 127.0.0.1:0;
        location / {{
            {extra}
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 600s;
        }}
    }}
}}
"""

_LISTENING = re.compile(r"listening on \S+:(\d+) ")
_TOTALS = re.compile(r"^(?:summary|totals):\s*(\d+)", re.M)


def _start_echo() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [str(BIN / "wsgate-echo"), "--echo", "--port", "0", "--host", "127.0.0.1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Listening on"):
            return proc, int(line.rsplit(":", 1)[1])
    raise RuntimeError("wsgate-echo did not start")


async def _relay(port: int, size: int, count: int) -> None:
    message = os.urandom(size)
    async with connect(f"ws://127.0.0.1:{port}/", max_size=None, compression=None) as ws:
        for _ in range(count):
            await ws.send(message)
            assert await ws.recv() == message


def measure(extra: str, echo: int, size: int, count: int) -> int:
    """The worker's instructions for one tunnel of ``count`` round trips of ``size`` bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp)
        (prefix / "logs").mkdir()
        conf = prefix / "wsgate.conf"
        conf.write_text(CONF.format(echo=echo, extra=extra))
        out = prefix / "callgrind.out"
        proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                str(BIN / "python"),
                str(BIN / "wsgate"),
                "-p",
                str(prefix),
                "-c",
                str(conf),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        port = 0
        for line in proc.stderr:
            if m := _LISTENING.search(line):
                port = int(m.group(1))
                break
        if not port:
            raise RuntimeError("wsgate did not start under valgrind")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (prefix / "logs/nginx.pid").exists():
            time.sleep(0.05)
        asyncio.run(_relay(port, size, count))
        proc.send_signal(signal.SIGQUIT)
        proc.stderr.read()
        proc.wait(timeout=120)
        found = _TOTALS.search(out.read_text())
        if found is None:
            raise RuntimeError("no totals in the callgrind output")
        return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64,4096")
    parser.add_argument("--n1", type=int, default=200)
    parser.add_argument("--n2", type=int, default=1200)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    echo_proc, echo = _start_echo()
    try:
        print(f"{'size':>6} {'variant':>13} {'instr/msg':>10} {'vs off':>8}")
        for size in (int(s) for s in args.sizes.split(",")):
            base = 0.0
            for name in args.variants.split(","):
                extra = VARIANTS[name]
                low = measure(extra, echo, size, args.n1)
                high = measure(extra, echo, size, args.n2)
                per = (high - low) / (2 * (args.n2 - args.n1))
                if name == "off":
                    base = per
                delta = f"{(per / base - 1) * 100:+.1f}%" if base else "-"
                print(f"{size:>6} {name:>13} {per:>10.0f} {delta:>8}", flush=True)
    finally:
        echo_proc.terminate()
        echo_proc.wait()


if __name__ == "__main__":
    main()
