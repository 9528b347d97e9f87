"""One worker process of a multi-process bastion: the one-process ``Bastion`` on the
listening sockets its supervisor passed down, with its routes shared (mesh.py) and a relay
socket for the other workers' clients (relay.py). Started by the supervisor only::

    python -m sshtunnel_mgr.bastion.workers.worker --config FILE --index I --control-fd FD
        --listen-fds FD,FD [--https-fds FD,FD] [--http-fds FD,FD] --dir DIR --conn-base N
        [--log-level N] [--log-format text|json]

It ignores SIGINT, SIGTERM and SIGHUP (systemd and a terminal signal the whole group): the
supervisor's "stop" drains it as SIGTERM drains a one-process bastion (a second one cuts
the drain), its reloads come through the admin socket, and the supervisor's end of the
control line closing (the supervisor died) stops it too.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import shutil
import signal
import socket
from pathlib import Path
from typing import Any

from sshtunnel_mgr.bastion.metricsview import bastion_metrics
from sshtunnel_mgr.bastion.role import BastionRole
from sshtunnel_mgr.bastion.serve import Bastion
from sshtunnel_mgr.bastion.workers import wire
from sshtunnel_mgr.bastion.workers.mesh import Mesh, SharedKeyUsage, relay_path
from sshtunnel_mgr.bastion.workers.relay import RelayServer
from sshtunnel_mgr.core.config import load_config
from sshtunnel_mgr.core.errors import SshtunError
from sshtunnel_mgr.runtime.asyncutil import TaskSet
from sshtunnel_mgr.runtime.heap import keep_heap
from sshtunnel_mgr.runtime.logsetup import EVENT, FIELDS, event, render_event, setup_logging
from sshtunnel_mgr.runtime.service import Service

log = logging.getLogger("sshtunnel_mgr.bastion")


class WorkerRole(BastionRole):
    def __init__(self, bastion: Bastion, index: int, directory: Path, control: socket.socket):
        super().__init__(bastion)
        self.index = index
        self.mesh = Mesh(index, directory, bastion.state)
        bastion.state.mesh = self.mesh
        bastion.state.key_usage = SharedKeyUsage(self.mesh)
        bastion.state.access_changed = self.mesh.reload_all  # a key rotation: all workers
        self.relay = RelayServer(bastion.state, relay_path(directory, index))
        self.control = control
        self.stop_event = asyncio.Event()
        self.force_event: asyncio.Event | None = None  # the service's, once it exists
        self.mesh.on_stop = self.stop_requested
        self.orphaned = False  # the supervisor died without stopping this worker

    def stop_requested(self) -> None:
        """The supervisor's stop: drain; a second one cuts the drain."""
        if self.stop_event.is_set() and self.force_event is not None:
            self.force_event.set()
        self.stop_event.set()

    async def start(self, tasks: TaskSet) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=self.control, limit=wire.MAX_LINE)
        tasks.spawn(self._line(reader, writer), "control")
        await self.relay.start()
        await self.bastion.start()

    async def _line(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.mesh.run(reader, writer)
        self.orphaned = not self.stop_event.is_set()
        self.stop_event.set()  # the supervisor is gone: so is this worker

    async def ready(self) -> None:
        self.mesh.ready()

    async def stop(self, grace: float | None) -> None:
        self.relay.close()
        await self.bastion.stop(grace)
        await self.relay.wait_closed()

    async def handle_admin(self, request: dict[str, Any]) -> dict[str, Any]:
        """The supervisor's questions: ``status`` (with this worker's number) and
        ``metrics`` (the numbers it sums); ``reload`` is the service's."""
        if request.get("cmd") == "metrics":
            b = self.bastion
            web_open = None if b.web is None else len(b.web.conns)
            m = bastion_metrics(b.state, b.listener, web_open)
            return {"ok": True, "metrics": {**dataclasses.asdict(m), "counters": dict(m.counters)}}
        answer = await self.bastion.handle_admin(request)
        if request.get("cmd") == "status":
            answer["worker"] = self.index
            for name in answer.get("names", []):
                name["worker"] = self.index
                served = self.mesh.lookup(name["name"], name["port"])
                name["serving"] = any(r.conn_id == name["conn"] for r in served)  # not standby
        return answer


class WorkerField(logging.Filter):
    """Every event this worker logs carries ``worker=N`` (text and JSON)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict) and "worker" not in fields:
            fields["worker"] = self.index
            name = getattr(record, EVENT, "")
            record.args = (render_event(str(name), fields),)
        return True


def _sockets(fds: str) -> list[socket.socket]:
    return [socket.socket(fileno=int(fd)) for fd in fds.split(",") if fd]


async def run_worker(args: argparse.Namespace) -> None:
    path = Path(args.config)
    config = load_config(path).require_bastion()
    bastion = Bastion(config, load=lambda: load_config(path).require_bastion())
    bastion.inherited = _sockets(args.listen_fds)
    bastion.web_inherited = {"https": _sockets(args.https_fds), "http": _sockets(args.http_fds)}
    bastion.state.number_from(args.conn_base)
    bastion.state.audit.static = {"worker": args.index}
    directory = Path(args.dir)
    role = WorkerRole(bastion, args.index, directory, socket.socket(fileno=args.control_fd))
    service = Service(
        role,
        admin_socket=directory / f"worker-{args.index}.sock",
        admin_handler=role.handle_admin,
        stop=role.stop_event,
        handle_signals=False,  # the supervisor's signals; a worker stops when it says so
    )
    role.force_event = service.force_exit
    await service.run()
    if role.orphaned:  # nobody else will: the sockets' directory goes with the last worker
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sshtun-bastion-worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--listen-fds", required=True)
    parser.add_argument("--https-fds", default="")  # [bastion.web]'s listeners
    parser.add_argument("--http-fds", default="")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--conn-base", type=int, default=1)
    parser.add_argument("--log-level", type=int, default=logging.INFO)
    parser.add_argument("--log-format", default="text")
    args = parser.parse_args(argv)
    # systemd (KillMode=control-group) and a terminal's Ctrl-C signal every process of the
    # service: a worker leaves stopping (draining, then cutting) to its supervisor.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    level = args.log_level
    setup_logging(1 if level <= logging.DEBUG else 0, level >= logging.WARNING, args.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(WorkerField(args.index))
    keep_heap()
    try:
        asyncio.run(run_worker(args))
    except SshtunError as exc:
        event(log, logging.ERROR, "worker failed", worker=args.index, error=exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
