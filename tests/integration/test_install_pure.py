"""wsgate installs and runs where no C compiler is: the frame scanner's extension is optional.

The project is built into a wheel with the compiler hidden (``CC`` names a program that
fails, as a machine without gcc would), installed into a fresh virtual environment, and run:
``wsgate -V`` says the scanner is pure Python, and the walk-through's pieces (the echo
server behind wsgate on the article's configuration) relay WebSocket messages, Close
included.  The rest of the suite runs that pure-Python scanner too under ``WSGATE_PURE=1``
(``make test`` runs the frame and tunnel tests that way as well).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.conftest import start_wsgate
from tests.helpers import Peer, install_wheel

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def pure_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` directory of an install built without a compiler."""
    base = tmp_path_factory.mktemp("pure")
    # A clean copy of the source: the tree's own build/ may hold a compiled extension.
    source = base / "source"
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = base / "wheels"
    env = {**os.environ, "CC": "/bin/false", "CXX": "/bin/false"}
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "-w", str(wheels), str(source)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "building 'wsgate.proxy._frames' extension" in built.stdout + built.stderr
    assert "failed" in (built.stdout + built.stderr).lower()  # tried, failed, went on
    (wheel,) = wheels.glob("wsgate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "wsgate/proxy/frames.py" in names
    assert "building 'wsgate.proxy._relay' extension" in built.stdout + built.stderr
    assert not [n for n in names if n.endswith(".so")], names  # nothing compiled
    venv = base / "venv"
    install_wheel(wheel, venv)
    return venv / "bin"


def test_the_install_says_its_scanner_is_pure_python(pure_install: Path) -> None:
    out = subprocess.run(
        [str(pure_install / "wsgate"), "-V"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert "\nframe scanner: pure Python\n" in out.stderr
    assert "\ntunnel relay: the event loop's transports\n" in out.stderr
    assert "\nheader splitter: pure Python\n" in out.stderr


def test_the_walkthrough_runs_on_the_pure_install(pure_install: Path, tmp_path: Path) -> None:
    """The article's configuration (examples/websocket.conf), its upstream and port moved
    to the echo server's and a free one."""
    conf = (ROOT / "examples" / "websocket.conf").read_text()
    with Peer([str(pure_install / "wsgate-echo"), "--port", "0"]) as echo:
        port = echo.wait_listening()
        conf = conf.replace("server 127.0.0.1:8010;", f"server 127.0.0.1:{port};")
        conf = conf.replace("listen 8020;", "listen 127.0.0.1:0;").replace("run/", "logs/")
        conf = conf.replace("logs/wsgate.pid", "logs/nginx.pid")  # where start_wsgate looks
        proxy = start_wsgate(tmp_path, conf, command=(str(pure_install / "wsgate"),))
        try:

            async def talk() -> tuple[list[str], int | None]:
                async with connect(f"ws://127.0.0.1:{proxy.port}/") as ws:
                    got = []
                    for text in ("hello", "x" * 70000):
                        await ws.send(text)
                        got.append(str(await ws.recv()))
                    await ws.close(1000)
                    return got, ws.close_code

            got, code = asyncio.run(talk())
        finally:
            proxy.stop()
    assert got == [
        "Server received from client: hello",
        f"Server received from client: {'x' * 70000}",
    ]
    assert code == 1000
    assert "[alert]" not in proxy.errors()
