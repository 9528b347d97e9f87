"""The supervisor of a multi-process bastion (``workers = N``), a ``runtime.service`` role.

It runs no SSH itself. ``start`` binds the listening sockets (sockets.py), makes a private
directory (mode 0700) for the workers' admin and relay sockets, imports the workers'
modules and forks the workers from itself (forked.py: those pages stay shared);
each worker's control line carries its route changes here, and this process applies them
to the global table and sends each on to every worker (wire.py). A worker that dies is
restarted with a capped backoff on the same sockets; its routes leave the global table at
once. ``reload`` asks every worker and merges their answers; ``stop`` sends each worker
SIGTERM (its own drain under ``shutdown_grace``) and waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sshtunnel_mgr.bastion.workers import forked, merge, wire
from sshtunnel_mgr.bastion.workers.sockets import reuseport_group
from sshtunnel_mgr.core.config import BastionConfig
from sshtunnel_mgr.core.errors import ConfigError, SshtunError
from sshtunnel_mgr.core.routing import RouteTable
from sshtunnel_mgr.runtime.admin import query
from sshtunnel_mgr.runtime.asyncutil import TaskSet
from sshtunnel_mgr.runtime.logsetup import JsonFormatter, event
from sshtunnel_mgr.runtime.metrics import BastionMetrics

log = logging.getLogger("sshtunnel_mgr.bastion")

RESTART_FIRST, RESTART_MAX, HEALTHY_AFTER = 0.5, 10.0, 60.0
CONN_IDS_PER_START = 10_000_000
METRICS_EVERY = 1.0  # each start of a worker numbers its connections anew


@dataclass
class Worker:
    index: int
    sockets: list[socket.socket]
    web: dict[str, list[socket.socket]] = field(default_factory=dict)  # "https"/"http"
    proc: forked.ForkedWorker | None = None
    writer: asyncio.StreamWriter | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    restarts: int = 0
    started_at: float = 0.0

    def row(self) -> dict[str, Any]:
        up = self.proc is not None and self.proc.returncode is None and self.ready.is_set()
        pid = self.proc.pid if self.proc is not None else None
        return {"worker": self.index, "pid": pid, "up": up, "restarts": self.restarts}


class Supervisor:
    """The ``Role`` of ``sshtun bastion`` when ``workers`` is more than 1."""

    check_interval: float | None = None

    def __init__(self, config: BastionConfig, config_path: Path) -> None:
        self.config = config
        self.config_path = config_path
        self.table: RouteTable[int] = RouteTable()
        self.workers: list[Worker] = []
        self.addresses: list[tuple[str, int]] = []
        self.directory = Path()
        self._sockets: list[socket.socket] = []
        self._starts = 0
        self._stopping = False
        self.last_metrics: dict[int, dict[str, Any]] = {}
        # Per worker: key -> [connections, routed channels, routed web connections]
        self.usage: dict[int, dict[str, list[int]]] = {}
        self._tasks: TaskSet | None = None

    # Start ---------------------------------------------------------------------------------
    async def start(self, tasks: TaskSet) -> None:
        n = self.config.worker_count
        per_worker: list[list[socket.socket]] = [[] for _ in range(n)]
        for host, port in self.config.listen_addresses:
            try:
                groups = reuseport_group(host, port, n)
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                    hint="check bastion.listen; is another server on that port?",
                ) from None
            for group in groups:
                self._sockets += group
                name = group[0].getsockname()
                self.addresses.append((str(name[0]), int(name[1])))
                for i, sock in enumerate(group):
                    per_worker[i].append(sock)
        web = self._web_groups(n)
        forked.preload()  # the workers' modules, shared with every worker forked from here
        self.directory = Path(tempfile.mkdtemp(prefix="sshtun-workers-"))  # mode 0700
        self.workers = [Worker(i, socks, web[i]) for i, socks in enumerate(per_worker)]
        self._tasks = tasks
        for worker in self.workers:
            tasks.spawn(self._keep(worker), f"worker-{worker.index}")
        if self.config.metrics_address is not None:
            tasks.spawn(self._metrics_loop(), "metrics")

    def _web_groups(self, n: int) -> list[dict[str, list[socket.socket]]]:
        """``[bastion.web]``'s listeners as reuseport groups too (the same source
        affinity: a source's per-source web caps stay in one worker); per worker."""
        per_worker: list[dict[str, list[socket.socket]]] = [{} for _ in range(n)]
        web = self.config.web
        for via, address in (("https", web.https_address), ("http", web.http_address)):
            if address is None:
                continue
            host, port = address
            try:
                groups = reuseport_group(host, port, n)
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                    hint="check bastion.web https_listen/http_listen; is another server there?",
                ) from None
            for group in groups:
                self._sockets += group
                for i, sock in enumerate(group):
                    per_worker[i].setdefault(via, []).append(sock)
        return per_worker

    async def _metrics_loop(self) -> None:
        """The metrics endpoint answers from the workers' last numbers (every second)."""
        while not self._stopping:
            await self.refresh_metrics()
            await asyncio.sleep(METRICS_EVERY)

    async def ready(self) -> None:
        for worker in self.workers:
            await worker.ready.wait()
        event(
            log,
            logging.INFO,
            "listening",
            on=",".join(f"{h}:{p}" for h, p in self.addresses),
            workers=len(self.workers),
            pids=",".join(str(w.proc.pid) for w in self.workers if w.proc is not None),
        )

    # Workers ----------------------------------------------------------------------------------
    async def _spawn(self, worker: Worker) -> asyncio.StreamReader:
        ours, theirs = socket.socketpair()
        root = logging.getLogger()
        fmt = (
            "json" if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers) else "text"
        )
        fds = [s.fileno() for s in worker.sockets]
        web = {via: [s.fileno() for s in socks] for via, socks in worker.web.items()}
        self._starts += 1
        argv = [
            "--config", str(self.config_path),
            "--index", str(worker.index),
            "--control-fd", str(theirs.fileno()),
            "--listen-fds", ",".join(map(str, fds)),
            "--dir", str(self.directory),
            "--conn-base", str(self._starts * CONN_IDS_PER_START + 1),
            "--log-level", str(root.level),
            "--log-format", fmt,
            "--https-fds", ",".join(map(str, web.get("https", []))),
            "--http-fds", ",".join(map(str, web.get("http", []))),
        ]  # fmt: skip
        keep = [*fds, *(f for v in web.values() for f in v), theirs.fileno()]
        try:
            worker.proc = forked.fork_worker(argv, keep, f"sshtun-w{worker.index}")
        finally:
            theirs.close()
        worker.started_at = time.monotonic()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=wire.MAX_LINE)
        worker.writer = writer
        for part in wire.table_messages(self.table):
            writer.write(wire.encode(part))
        for index, keys in self.usage.items():
            for key, row in keys.items():
                writer.write(wire.encode(wire.usage_message(index, key, row)))
        return reader

    async def _keep(self, worker: Worker) -> None:
        """Run one worker for the supervisor's life: restart it when it dies."""
        delay = RESTART_FIRST
        while not self._stopping:
            reader = await self._spawn(worker)
            await self._listen(worker, reader)
            assert worker.proc is not None
            status = await worker.proc.wait()
            was_ready = worker.ready.is_set()
            worker.ready.clear()
            if worker.writer is not None:
                worker.writer.close()
                worker.writer = None
            self._changed(worker.index, {"op": "gone"})
            if self._stopping:
                return
            if not was_ready and not worker.restarts and status > 0:
                # It never started (a host key it cannot read, ...): not restarted in a loop.
                error = ConfigError if status == ConfigError.exit_code else SshtunError
                raise error(
                    f"bastion worker {worker.index} failed to start (exit status {status})",
                    hint="its log lines above say why",
                )
            if time.monotonic() - worker.started_at > HEALTHY_AFTER:
                delay = RESTART_FIRST
            worker.restarts += 1
            event(
                log,
                logging.ERROR,
                "worker died",
                worker=worker.index,
                status=status,
                restart_in=f"{delay:g}s",
                restarts=worker.restarts,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)

    async def _listen(self, worker: Worker, reader: asyncio.StreamReader) -> None:
        """A worker's control line until it closes (the worker ended)."""
        while True:
            try:
                line = await reader.readline()
            except ConnectionError:  # the worker ended (a reset is an end like EOF)
                return
            except (OSError, ValueError) as exc:  # a line over MAX_LINE: a broken worker
                event(log, logging.ERROR, "worker control line failed", error=repr(exc))
                if worker.proc is not None and worker.proc.returncode is None:
                    worker.proc.kill()
                return
            if not line:
                return
            try:
                message = wire.decode(line)
            except ValueError as exc:
                event(
                    log, logging.ERROR, "bad control message", worker=worker.index, error=repr(exc)
                )
                continue
            if message.get("op") == "usage":
                self._usage(worker.index, message)
            elif message.get("op") == "reload":  # it rewrote the access file: all re-read it
                assert self._tasks is not None
                self._tasks.spawn(self._reload_for(worker, message.get("id")), "reload")
            elif message.get("op") == "ready":
                worker.ready.set()
                event(
                    log,
                    logging.INFO,
                    "worker ready",
                    worker=worker.index,
                    pid=worker.proc.pid if worker.proc else 0,
                )
            else:
                self._changed(worker.index, message)

    async def _reload_for(self, worker: Worker, request: object) -> None:
        answer = await self.reload()
        event(log, logging.INFO, "workers reloaded", asked_by=worker.index, ok=answer.get("ok"))
        if worker.writer is not None and not worker.writer.is_closing():
            worker.writer.write(wire.encode({"op": "reloaded", "id": request}))

    def _usage(self, index: int, message: dict[str, Any]) -> None:
        """A worker's change of one key's connections/channels: its new totals to all."""
        try:
            key = str(message["key"])
            deltas = [int(message["conns"]), int(message["chans"]), int(message.get("web", 0))]
        except (KeyError, TypeError, ValueError) as exc:
            event(log, logging.ERROR, "bad usage message", worker=index, error=repr(exc))
            return
        row = self.usage.setdefault(index, {}).setdefault(key, [0, 0, 0])
        row[:] = [max(have + delta, 0) for have, delta in zip(row, deltas, strict=True)]
        if row == [0, 0, 0]:
            del self.usage[index][key]
        self._send_all(wire.usage_message(index, key, row))

    def _send_all(self, message: dict[str, Any]) -> None:
        data = wire.encode(message)
        for worker in self.workers:
            if worker.writer is not None and not worker.writer.is_closing():
                worker.writer.write(data)

    def _changed(self, index: int, message: dict[str, Any]) -> None:
        """Apply one change of worker ``index`` and send it to every worker."""
        try:
            self.table = wire.apply(self.table, index, message)
        except (KeyError, TypeError, ValueError) as exc:
            event(log, logging.ERROR, "bad route change", worker=index, error=repr(exc))
            return
        if message.get("op") == "gone":
            self.usage.pop(index, None)
        self._send_all({**message, "worker": index})

    # Questions for every worker -------------------------------------------------------------
    async def ask_all(self, request: dict[str, Any], timeout: float = 30) -> list[Any]:
        async def ask(worker: Worker) -> Any:
            if not worker.ready.is_set():
                return None
            try:
                return await query(self.directory / f"worker-{worker.index}.sock", request, timeout)
            except SshtunError as exc:
                return {"ok": False, "error": f"worker {worker.index}: {exc.message}"}

        return list(await asyncio.gather(*(ask(w) for w in self.workers)))

    async def check(self) -> bool:
        return any(w.ready.is_set() for w in self.workers)

    async def handle_admin(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("cmd") == "status":
            answers = await self.ask_all(request)
            listening = [f"{h}:{p}" for h, p in self.addresses]
            return merge.status(listening, [w.row() for w in self.workers], answers)
        return {"ok": False, "error": f"unknown command {request.get('cmd')!r}"}

    async def reload(self) -> dict[str, Any]:
        answers = await self.ask_all({"cmd": "reload"}, timeout=60)
        missing = [w.index for w, a in zip(self.workers, answers, strict=True) if a is None]
        answer = merge.reload([a for a in answers if a is not None])
        if missing:
            answer.setdefault("notes", []).append(
                f"workers {missing} were restarting: they read the files as they start"
            )
        return answer

    async def refresh_metrics(self) -> None:
        for worker, answer in zip(
            self.workers, await self.ask_all({"cmd": "metrics"}, 10), strict=True
        ):
            if isinstance(answer, dict) and answer.get("ok"):
                self.last_metrics[worker.index] = answer["metrics"]

    def metrics(self) -> BastionMetrics:
        agents = len({r.conn_id for r in self.table})
        return merge.metrics(list(self.last_metrics.values()), agents, len(self.table))

    # Stop -------------------------------------------------------------------------------------
    async def stop(self, grace: float | None) -> None:
        self._stopping = True
        grace = self.config.shutdown_grace if grace is None else grace
        running = [w for w in self.workers if w.proc is not None and w.proc.returncode is None]
        live = [w.proc for w in running if w.proc is not None]
        for worker in running:  # a second stop (a forced one) cuts their drain
            if worker.writer is not None and not worker.writer.is_closing():
                worker.writer.write(wire.encode({"op": "stop"}))
        if live:
            _, pending = await asyncio.wait(
                [asyncio.ensure_future(p.wait()) for p in live], timeout=grace + 15
            )
            for proc in live:
                if proc.returncode is None:
                    proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for sock in self._sockets:
            sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def status(self) -> str:
        up = sum(1 for w in self.workers if w.row()["up"])
        return (
            f"listening on {','.join(f'{h}:{p}' for h, p in self.addresses)}; "
            f"{up}/{len(self.workers)} workers up; {len(self.table)} names"
        )


def worker_samples(workers: list[Worker]) -> list[tuple[str, str, str, dict[str, str], float]]:
    """Per worker: up (0/1) and restarts."""
    rows = [w.row() for w in workers]
    return [
        *(
            (
                "sshtun_bastion_worker_up",
                "gauge",
                "Worker process up",
                {"worker": str(r["worker"])},
                float(r["up"]),
            )
            for r in rows
        ),
        *(
            (
                "sshtun_bastion_worker_restarts",
                "counter",
                "Worker restarts",
                {"worker": str(r["worker"])},
                float(r["restarts"]),
            )
            for r in rows
        ),
    ]
