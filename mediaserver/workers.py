"""``serve --workers N``: one SIP address, N worker processes, one supervisor.

Owns the supervisor and both ends of the channel between it and a worker:

- ``Supervisor`` starts N workers (``python -m mediaserver.cli serve
  --worker-channel FD``, each with ``config.worker_share``: its slice of the
  RTP range and of ``max_calls``), relays their log lines to its own stderr
  (whole lines, so JSON lines from N processes never interleave), forwards
  SIGTERM/SIGINT to them as ``drain``/``interrupt`` orders on the channel
  (each worker then drains exactly like a single ``serve``) and exits when
  they all have; a worker that dies while not draining is logged
  (``serve.worker_exited``) and replaced, at most ``RESTARTS_PER_MINUTE``
  times a minute, after which the whole server stops with an error
  (``serve.workers_failing``).
- ``WorkersAdmin`` is the public admin endpoint: ``/health``, ``/metrics``
  and ``/calls`` summed over the workers' private admin endpoints
  (``merge_expositions`` labels every sample with ``worker="i"``).
- ``WorkerLink`` is the worker's end: it reads the worker's configuration,
  reports the worker ready (its private SIP port, its admin URL) and turns
  the supervisor's orders, or its disappearance (EOF), into a drain.

The channel is a Unix socket pair: JSON lines, first the supervisor's
(``{"index", "workers", "config"}``), then the worker's ready line; later
only the words ``drain`` and ``interrupt``. Orders instead of signals: a
worker often gets the signal itself too (Ctrl-C hits the whole process
group, systemd's default KillMode signals the whole cgroup), and a second
signal would cut its drain short; an order repeated is harmless.

It must not touch SIP or media: workers do (``mediaserver.server``); the
supervisor only starts, watches, asks and sums. It must not import the
media engine, so the supervisor stays a small process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from mediaserver.admin import recording_response, serve_on
from mediaserver.config import ServerConfig, worker_share
from mediaserver.logs import get_logger

__all__ = [
    "RESTARTS_PER_MINUTE",
    "Supervisor",
    "WorkerLink",
    "WorkersAdmin",
    "merge_expositions",
    "run_supervisor",
]

RESTARTS_PER_MINUTE = 5  # worker deaths replaced per 60 s; one more stops the server
START_TIMEOUT = 30.0  # seconds for a worker to report ready
ADMIN_TIMEOUT = 2.0  # seconds for a worker's admin endpoint to answer the supervisor
KILL_GRACE = 5.0  # seconds past drain_seconds before a draining worker is killed
_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text format
# sample-name suffixes that belong to the family named before them
_SUFFIXES = ("", "_total", "_created", "_bucket", "_count", "_sum", "_info", "_gcount", "_gsum")


# -- configuration over the channel -------------------------------------------------


def _config_to_json(config: ServerConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _config_from_json(values: dict[str, Any]) -> ServerConfig:
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    # [recording] travels as [[key, value], ...]: back to pairs
    fields["recording_options"] = tuple(tuple(kv) for kv in fields.get("recording_options", ()))
    return dataclasses.replace(ServerConfig(), **fields)


# -- the worker's end ---------------------------------------------------------------


class WorkerLink:
    """A worker's end of its channel to the supervisor."""

    def __init__(self, sock: socket.socket, index: int, workers: int, config: ServerConfig):
        self.sock = sock
        self.index = index
        self.workers = workers
        self.config = config

    @classmethod
    def open(cls, fd: int, timeout: float = 10.0) -> WorkerLink:
        """Adopt the inherited socket ``fd`` and read the worker's configuration."""
        sock = socket.socket(fileno=fd)
        sock.settimeout(timeout)
        data = b""
        while not data.endswith(b"\n"):  # byte by byte: read nothing past the first line
            byte = sock.recv(1)
            if not byte:
                raise ConnectionError("the supervisor closed the channel before the config")
            data += byte
        first = json.loads(data)
        sock.setblocking(False)
        config = _config_from_json(first["config"])
        return cls(sock, int(first["index"]), int(first["workers"]), config)

    async def report_ready(self, *, sip_port: int | None, admin: str | None) -> None:
        line = {"ready": True, "pid": os.getpid(), "sip_port": sip_port, "admin": admin}
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, json.dumps(line).encode() + b"\n")

    async def follow(self, stop: asyncio.Event, interrupt: asyncio.Event) -> None:
        """Carry out the supervisor's orders until the channel closes (which drains too)."""
        loop = asyncio.get_running_loop()
        log = get_logger("serve")
        pending = b""
        while True:
            try:
                data = await loop.sock_recv(self.sock, 4096)
            except OSError:
                data = b""
            if not data:
                if not stop.is_set():
                    log.warning("serve.supervisor_gone")
                stop.set()
                return
            pending += data
            *orders, pending = pending.split(b"\n")
            for order in orders:
                log.info("serve.order", order=order.decode(errors="replace"))
                if order == b"interrupt" and stop.is_set():
                    interrupt.set()
                stop.set()

    def close(self) -> None:
        self.sock.close()


# -- the supervisor's view of one worker ----------------------------------------------


@dataclass(eq=False)
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    channel: asyncio.StreamWriter
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    admin_url: str | None = None
    sip_port: int | None = None
    replacement: bool = False  # started after a worker of this index died
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def order(self, word: str) -> None:
        if self.alive and not self.channel.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                self.channel.write(word.encode() + b"\n")


class Supervisor:
    """``serve`` with ``config.workers`` > 1: runs and watches the worker processes."""

    def __init__(self, config: ServerConfig, log_args: Sequence[str] = ()) -> None:
        self.config = config
        self.log_args = list(log_args)
        self.log = get_logger("serve")
        self.workers: dict[int, _Worker] = {}
        self.restarts = 0
        self.draining = False
        self.failed = False  # gave up restarting
        self._running = False  # every worker reported ready once
        self._stop = asyncio.Event()
        self._interrupt = asyncio.Event()
        self._changed = asyncio.Event()  # a worker exited or got ready
        self._deaths: deque[float] = deque()
        self._exit_codes: dict[int, int] = {}

    @property
    def stopping(self) -> bool:
        """A signal came (or workers kept dying): draining or about to."""
        return self.draining or self._stop.is_set()

    # -- lifetime -------------------------------------------------------------------

    async def run(self) -> int:
        """Start the workers, serve until SIGTERM/SIGINT, drain them; the exit status."""
        config = self.config
        loop = asyncio.get_running_loop()
        taken = _sip_port_taken(config.sip_host, config.sip_port)
        if taken is not None:
            self.log.error(
                "serve.bind_failed", sip=f"{config.sip_host}:{config.sip_port}", error=taken
            )
            return 2
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)
        admin = WorkersAdmin(self, config.admin_host, config.admin_port)
        admin_up = False
        try:
            if config.admin_enabled:
                admin_up = await self._start_admin(admin)
            for index in range(config.workers):
                await self._spawn(index)
            if not await self._start_all():
                # a signal during the start: drain who is up (and who is starting); else fail
                return await self._drain() if self._stop.is_set() else 2
            self._running = True
            self.log.info(
                "serve.listening",
                sip=f"{config.sip_host}:{config.sip_port}",
                workers=config.workers,
                worker_pids=[w.process.pid for w in self.workers.values()],
                worker_sip_ports=[w.sip_port for w in self.workers.values()],
                rtp_ports=[
                    f"{s.rtp_port_low}-{s.rtp_port_high}"
                    for s in (worker_share(config, i) for i in range(config.workers))
                ],
                max_calls=config.max_calls,
                max_calls_per_worker=worker_share(config, 0).max_calls,
                app=config.app or None,
                admin=admin.url if admin_up else None,
            )
            await self._stop.wait()
            return await self._drain()
        finally:
            await self._kill_all()
            if admin_up:
                await admin.stop()
            self.log.info(
                "serve.workers_stopped",
                exit_codes=[self._exit_codes.get(i) for i in range(config.workers)],
                restarts=self.restarts,
            )

    def _on_signal(self, sig: signal.Signals) -> None:
        second = self._stop.is_set()
        self.log.info("serve.signal", signal=sig.name, draining=second, workers=len(self.workers))
        if second:
            self._interrupt.set()
        self._stop.set()
        self._changed.set()

    async def _start_admin(self, admin: WorkersAdmin) -> bool:
        log = get_logger("admin")
        try:
            await admin.start()
        except OSError as exc:
            log.error(
                "admin.bind_failed",
                admin=f"{self.config.admin_host}:{self.config.admin_port}",
                error=str(exc),
            )
            return False
        log.info("admin.listening", url=admin.url, host=admin.host, port=admin.port)
        return True

    async def _start_all(self) -> bool:
        """Wait until every worker is ready; False (logged) if one exits, is slow, or a
        signal comes first."""
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while not all(w.ready.is_set() for w in self.workers.values()):
            dead = [w for w in self.workers.values() if not w.alive]
            if dead:
                for w in dead:
                    self.log.error(
                        "serve.worker_failed_to_start",
                        worker=w.index,
                        pid=w.process.pid,
                        exit_code=w.process.returncode,
                    )
                return False
            if self._stop.is_set():
                return False
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                slow = [w.index for w in self.workers.values() if not w.ready.is_set()]
                self.log.error("serve.worker_start_timeout", workers=slow, seconds=START_TIMEOUT)
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    async def _spawn(self, index: int, *, replacement: bool = False) -> _Worker:
        ours, theirs = socket.socketpair()
        cmd = [
            sys.executable,
            "-m",
            "mediaserver.cli",
            *self.log_args,
            "serve",
            "--worker-channel",
            str(theirs.fileno()),
        ]
        try:
            process = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=(theirs.fileno(),),
                limit=1 << 20,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours)
        first = {
            "index": index,
            "workers": self.config.workers,
            "config": _config_to_json(worker_share(self.config, index)),
        }
        writer.write(json.dumps(first).encode() + b"\n")
        worker = _Worker(index, process, writer, replacement=replacement)
        self.workers[index] = worker
        loop = asyncio.get_running_loop()
        assert process.stdout is not None
        worker.tasks = [
            loop.create_task(self._relay(process.stdout)),
            loop.create_task(self._hear(worker, reader)),
            loop.create_task(self._watch(worker)),
        ]
        return worker

    async def _relay(self, stream: asyncio.StreamReader) -> None:
        """A worker's output to our stderr, a whole line per write."""
        out = sys.stderr.buffer
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over the limit: dropped, the rest goes on
                continue
            if not line:
                return
            if not line.endswith(b"\n"):
                line += b"\n"
            out.write(line)
            out.flush()

    async def _hear(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        """The worker's ready line."""
        while True:
            try:
                line = await reader.readline()
            except (OSError, ValueError):
                return
            if not line:
                return
            try:
                report = json.loads(line)
            except json.JSONDecodeError:
                continue
            if report.get("ready"):
                worker.sip_port = report.get("sip_port")
                worker.admin_url = report.get("admin")
                worker.ready.set()
                self._changed.set()
                if self._running:
                    self.log.info(
                        "serve.worker_ready",
                        worker=worker.index,
                        pid=worker.process.pid,
                        sip_port=worker.sip_port,
                    )

    async def _watch(self, worker: _Worker) -> None:
        code = await worker.process.wait()
        self._exit_codes[worker.index] = code
        self._changed.set()
        if self.stopping or not self._running or self.workers.get(worker.index) is not worker:
            return
        signame = _signal_name(code)
        self.log.error(
            "serve.worker_exited",
            worker=worker.index,
            pid=worker.process.pid,
            exit_code=code,
            **({"signal": signame} if signame else {}),
        )
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > 60.0:
            self._deaths.popleft()
        if len(self._deaths) > RESTARTS_PER_MINUTE:
            self.log.error(
                "serve.workers_failing",
                deaths_last_minute=len(self._deaths),
                limit=RESTARTS_PER_MINUTE,
                why="workers keep dying: stopping the whole server",
            )
            self.failed = True
            self._stop.set()
            return
        try:
            replacement = await self._spawn(worker.index, replacement=True)
        except OSError as exc:
            self.log.error("serve.worker_spawn_failed", worker=worker.index, error=str(exc))
            self.failed = True
            self._stop.set()
            return
        if self.stopping:  # a signal came while it started
            replacement.order("drain")
        self.restarts += 1
        self.log.warning("serve.worker_restarted", worker=worker.index, pid=replacement.process.pid)

    async def _drain(self) -> int:
        """Order every worker to drain; wait (drain_seconds + KILL_GRACE at most)."""
        self.draining = True
        loop = asyncio.get_running_loop()
        for worker in self.workers.values():
            worker.order("drain")
        deadline = loop.time() + self.config.drain_seconds + KILL_GRACE
        interrupted = False
        while any(w.alive for w in self.workers.values()):
            if self._interrupt.is_set() and not interrupted:
                interrupted = True
                for worker in self.workers.values():
                    worker.order("interrupt")
            left = deadline - loop.time()
            if left <= 0:
                alive = [w.index for w in self.workers.values() if w.alive]
                self.log.error("serve.workers_killed", workers=alive, why="drain took too long")
                await self._kill_all()
                return 1
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
        tasks = [t for w in self.workers.values() for t in w.tasks if not t.done()]
        if tasks:  # the workers' last log lines in
            await asyncio.wait(tasks, timeout=2)
        codes = [w.process.returncode for w in self.workers.values()]
        return 0 if not self.failed and all(code == 0 for code in codes) else 1

    async def _kill_all(self) -> None:
        for worker in self.workers.values():
            if worker.alive:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
        for worker in self.workers.values():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.process.wait(), 5)
            worker.channel.close()
            for task in worker.tasks:
                if not task.done():
                    task.cancel()

    # -- what the admin endpoint asks -------------------------------------------------

    async def ask_workers(
        self, session: aiohttp.ClientSession, path: str
    ) -> list[tuple[int, int | None, Any]]:
        """GET ``path`` from every worker's admin endpoint: (index, status or None, body)."""

        async def ask(worker: _Worker) -> tuple[int, int | None, Any]:
            if not worker.alive:
                return worker.index, None, "down"
            if not worker.ready.is_set() or worker.admin_url is None:
                return worker.index, None, "restarting" if worker.replacement else "starting"
            try:
                async with session.get(worker.admin_url + path) as resp:
                    if resp.content_type == "application/json":
                        return worker.index, resp.status, await resp.json()
                    return worker.index, resp.status, await resp.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                return worker.index, None, f"unreachable ({type(exc).__name__})"

        workers = [self.workers[i] for i in sorted(self.workers)]
        return list(await asyncio.gather(*(ask(w) for w in workers)))


# -- the public admin endpoint ------------------------------------------------------------


class WorkersAdmin:
    """The supervisor's ``/health``, ``/metrics`` and ``/calls``: the workers' summed up."""

    def __init__(self, supervisor: Supervisor, host: str, port: int) -> None:
        self.supervisor = supervisor
        self.host = host
        self.port = port
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/calls", self.calls)
        # every worker records into the same [recording] directory: served from here
        app.router.add_get("/recordings/{name}", self.recording)
        self._runner = web.AppRunner(app, access_log=None)
        self._session: aiohttp.ClientSession | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._up: dict[int, bool] = {}

    async def start(self) -> None:
        self.port = await serve_on(self._runner, self.host, self.port)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ADMIN_TIMEOUT))

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def _ask(self, path: str) -> list[tuple[int, int | None, Any]]:
        assert self._session is not None
        return await self.supervisor.ask_workers(self._session, path)

    async def recording(self, request: web.Request) -> web.StreamResponse:
        return recording_response(self.supervisor.config.recording, request)

    async def health(self, _request: web.Request) -> web.Response:
        """200 only when every worker says 200; otherwise 503 naming who does not."""
        answers = await self._ask("/health")
        workers: list[dict[str, Any]] = []
        failing: list[str] = []
        calls = max_calls = 0
        for index, status, body in answers:
            if isinstance(body, dict):
                calls += int(body.get("calls", 0))
                max_calls += int(body.get("max_calls", 0))
                state = str(body.get("status", "unknown"))
            else:
                state = str(body)
            workers.append({"worker": index, "http_status": status, "status": state})
            if status != 200:
                failing.append(f"worker {index}: {state}")
        overall = "draining" if self.supervisor.stopping else "degraded" if failing else "ok"
        body = {"status": overall, "calls": calls, "max_calls": max_calls, "workers": workers}
        if failing:
            body["failing"] = failing
        return web.json_response(body, status=200 if overall == "ok" else 503)

    async def metrics(self, _request: web.Request) -> web.Response:
        answers = await self._ask("/metrics")
        texts = [(str(i), body) for i, status, body in answers if status == 200]
        self._up = {i: status == 200 for i, status, _ in answers}
        merged = merge_expositions(texts) + generate_latest(self.registry).decode()
        return web.Response(body=merged.encode(), headers={"Content-Type": _CONTENT_TYPE})

    async def calls(self, _request: web.Request) -> web.Response:
        answers = await self._ask("/calls")
        calls: list[dict[str, Any]] = []
        unreachable: list[int] = []
        for index, status, body in answers:
            if status == 200 and isinstance(body, dict):
                calls.extend({**call, "worker": index} for call in body.get("calls", []))
            else:
                unreachable.append(index)
        out: dict[str, Any] = {"calls": calls}
        if unreachable:
            out["workers_unreachable"] = unreachable
        return web.json_response(out)

    def collect(self) -> Iterator[Metric]:
        """The supervisor's own metrics (prometheus-client's collector hook)."""
        yield GaugeMetricFamily(
            "mediaserver_workers",
            "[calls] workers: processes serving the SIP port",
            value=self.supervisor.config.workers,
        )
        up = GaugeMetricFamily(
            "mediaserver_worker_up",
            "1 if the worker's admin endpoint answered this scrape",
            labels=["worker"],
        )
        for index in range(self.supervisor.config.workers):
            up.add_metric([str(index)], 1 if self._up.get(index) else 0)
        yield up
        yield CounterMetricFamily(
            "mediaserver_worker_restarts",
            "Workers replaced after dying while not draining",
            value=self.supervisor.restarts,
        )


# -- merging Prometheus expositions --------------------------------------------------------


@dataclass
class _Family:
    headers: dict[str, str] = field(default_factory=dict)  # HELP/TYPE -> line
    samples: list[str] = field(default_factory=list)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def merge_expositions(expositions: Sequence[tuple[str, str]], label: str = "worker") -> str:
    """Several Prometheus text expositions as one, each sample labelled by its source.

    ``expositions`` is ``(label value, text)`` per source; every sample of a
    source gets ``label="value"`` first among its labels (the sources' own
    samples must not carry ``label``). Each metric family appears once: its
    ``# HELP``/``# TYPE`` lines (the first source's), then every source's
    samples of it, in source order; other comments are dropped.
    """
    families: dict[str, _Family] = {}
    for value, text in expositions:
        injected = f'{label}="{_escape(value)}"'
        current: str | None = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    current = parts[2]
                    headers = families.setdefault(current, _Family()).headers
                    headers.setdefault(parts[1], line)
                continue
            end = len(line)
            for stop in ("{", " ", "\t"):
                at = line.find(stop)
                if 0 <= at < end:
                    end = at
            name, rest = line[:end], line[end:]
            if current is None or not any(name == current + s for s in _SUFFIXES):
                current = name  # a sample without HELP/TYPE: a family of its own
            stripped = rest.lstrip()
            if stripped.startswith("{"):
                inner = stripped[1:]
                sep = "" if inner.lstrip().startswith("}") else ","
                sample = f"{name}{{{injected}{sep}{inner}"
            else:
                sample = f"{name}{{{injected}}}{rest}"
            families.setdefault(current, _Family()).samples.append(sample)
    lines: list[str] = []
    for family in families.values():
        lines.extend(family.headers[k] for k in ("HELP", "TYPE") if k in family.headers)
        lines.extend(family.samples)
    return "\n".join(lines) + "\n" if lines else ""


# -- helpers ----------------------------------------------------------------------------


def _sip_port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be ours (another server, or another worker group), or None.

    Bound without SO_REUSEPORT for a moment: that fails if anything holds the
    port, including a second ``serve --workers`` whose workers would otherwise
    silently share its calls.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((host, port))
    except OSError as exc:
        return str(exc)
    return None


def _signal_name(code: int) -> str | None:
    if code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return None


def run_supervisor(config: ServerConfig, log_args: Sequence[str] = ()) -> int:
    """``serve`` with ``[calls] workers`` > 1 (the CLI calls this)."""
    return asyncio.run(Supervisor(config, log_args).run())
