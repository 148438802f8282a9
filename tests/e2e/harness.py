"""Running the real ``mediaserver serve`` and real SIPp on loopback, for tests.

``Server`` starts ``serve`` as a subprocess on free loopback ports with its
JSON log in a file, waits until it listens, and stops it with SIGTERM (so
its shutdown path runs). ``run_sipp`` runs one SIPp scenario to completion
with a time limit. Every process is bounded in time and killed on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SIPP = shutil.which("sipp")
SIPP_SHARE = Path("/usr/share/sip-tester")


def free_udp_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_range(count: int) -> tuple[int, int]:
    """An even-aligned range of ``count`` UDP ports that are free right now."""
    for _ in range(50):
        low = 20000 + 2 * (free_udp_port() % 10000)
        ports = range(low, low + count)
        socks = []
        try:
            for p in ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return low, low + count - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


class Server:
    def __init__(
        self,
        tmp: Path,
        app: Any,
        *extra: str,
        max_calls: int = 100,
        host: str = "127.0.0.1",
        admin: str | None = "127.0.0.1:0",  # tests run many servers: any free port, logged
    ) -> None:
        self.tmp = tmp
        self.host = host
        self.sip_port = free_udp_port(host)
        self.rtp_low, self.rtp_high = free_port_range(64)
        self.dump_dir = tmp / "dumps"
        self.log_path = tmp / "serve.log"
        if isinstance(app, str) and app.startswith("http"):
            app_arg = app
        else:
            app_path = tmp / "app.json"
            app_path.write_text(json.dumps(app))
            app_arg = str(app_path)
        self.args = [
            sys.executable,
            "-m",
            "mediaserver.cli",
            "--log-json",
            "--log-level",
            "DEBUG",
            "serve",
            "--sip",
            f"[{host}]:{self.sip_port}" if ":" in host else f"{host}:{self.sip_port}",
            "--rtp-ports",
            f"{self.rtp_low}-{self.rtp_high}",
            "--app",
            app_arg,
            "--dump-dir",
            str(self.dump_dir),
            "--max-calls",
            str(max_calls),
            *(("--admin", admin) if admin else ()),
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        log = self.log_path.open("wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.events("serve.listening"):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited early:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"serve did not start:\n{self.log_path.read_text()}")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"event": "raw", "text": line})
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.log_lines() if e.get("event") == name]

    def wait_for(self, name: str, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(name)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(
            f"{name} x{count} not logged in {timeout} s; log:\n{self.log_path.read_text()[-4000:]}"
        )

    def dumps(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.dump_dir.glob("*.json"))]


def run_sipp(
    cwd: Path,
    server: Server,
    *args: str,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run SIPp against ``server`` from ``cwd`` (with SIPp's captures linked as ./pcap)."""
    assert SIPP is not None, "SIPp missing: scripts/test.sh installs Debian's sip-tester"
    link = cwd / "pcap"
    if not link.exists():
        link.symlink_to(SIPP_SHARE)
    host = server.host
    cmd = [
        SIPP,
        f"[{host}]:{server.sip_port}" if ":" in host else f"{host}:{server.sip_port}",
        "-i",
        host,
        "-p",
        str(free_udp_port(host)),
        "-mp",
        str(free_port_range(4)[0]),
        "-nostdin",
        "-timeout",
        f"{int(timeout) - 5}s",
        "-timeout_error",
        "-trace_err",
        "-trace_screen",
        *args,
    ]
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
