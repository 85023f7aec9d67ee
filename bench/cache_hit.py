"""CPU per proxy-cache hit, wsgate against nginx, one worker each.

Each server gets the same configuration: a location proxied with ``proxy_cache`` to a
``return 200`` of 1 KiB in a second server block of the same process.  After one miss fills
the entry, ``N`` requests go one after the other on one keep-alive connection; the worker's
user+system CPU time (``/proc/PID/stat``) over them, divided by ``N``, is the figure.  For
scale, the same is measured for the same body as a static file (``--mode static``) and
proxied without a cache (``--mode proxy``; the backend's work counts too, it is in the same
worker).

Usage: ``python -m bench.cache_hit [--requests N] [--mode cache|static|proxy]``; nginx is
``/usr/sbin/nginx`` (skipped if missing).  Ports are bound to 0 first to find free ones.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main"]

BODY = "x" * 1024
CONF = """
worker_processes 1;
daemon off;
pid {prefix}/pid;
error_log {prefix}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  proxy_cache_path {prefix}/cache levels=1:2 keys_zone=one:1m;
  server {{ listen 127.0.0.1:{front};
    location / {{ {front_conf} }}
  }}
  server {{ listen 127.0.0.1:{back};
    location / {{ return 200 "{body}"; }}
  }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def measure(command: list[str], mode: str, requests: int) -> tuple[float, float]:
    """(microseconds of worker CPU per request, requests per second)."""
    prefix = tempfile.mkdtemp(prefix="cache-hit-")
    front, back = _free_port(), _free_port()
    if mode == "static":
        front_conf = f"root {prefix};"
        Path(prefix, "x").write_text(BODY)
    else:
        cache = "proxy_cache one; proxy_cache_valid 200 1h;" if mode == "cache" else ""
        front_conf = f"proxy_pass http://127.0.0.1:{back}; {cache}"
    conf = CONF.format(prefix=prefix, front=front, back=back, front_conf=front_conf, body=BODY)
    Path(prefix, "nginx.conf").write_text(conf)
    proc = subprocess.Popen(
        [*command, "-p", prefix, "-c", f"{prefix}/nginx.conf"], stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", front), 1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        request = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"

        def one() -> bytes:
            sock.sendall(request)
            data = b""
            while True:
                data += sock.recv(65536)
                head, sep, rest = data.partition(b"\r\n\r\n")
                if sep and len(rest) >= len(BODY):
                    return head

        for _ in range(2):  # the miss, then a hit
            assert b" 200 " in one().split(b"\r\n")[0] + b" "
        workers = _children(proc.pid) or [proc.pid]
        cpu0, t0 = sum(map(_cpu, workers)), time.perf_counter()
        for _ in range(requests):
            one()
        t1, cpu1 = time.perf_counter(), sum(map(_cpu, workers))
        sock.close()
        return (cpu1 - cpu0) / requests * 1e6, requests / (t1 - t0)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(prefix, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--mode", choices=("cache", "static", "proxy"), default="cache")
    opts = ap.parse_args(argv)
    servers = [("wsgate", [sys.executable, "-m", "wsgate.cli"])]
    if os.path.exists("/usr/sbin/nginx"):
        servers.insert(0, ("nginx", ["/usr/sbin/nginx", "-g", "user root;"]))
    for name, command in servers:
        us, rps = measure(command, opts.mode, opts.requests)
        print(f"{name:7} {opts.mode:6} {us:6.0f} us CPU per request  {rps:7.0f} requests/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
