"""One lifecycle for both long-running roles, in the shape of uvicorn's ``Server.serve()``.

``Service.run()`` is a fixed sequence::

    signal handlers (they only set flags)
    try:
        admin socket → metrics → role.start() → reload loop → ready (READY=1) and watchdog
        run until the stop flag (SIGINT/SIGTERM, the caller's event, or a role task failing)
    finally:
        STOPPING=1 → role.stop(grace): stop accepting, drain under the grace period, close
        → cancel *and await* every task the service started (failures logged)
        → close the metrics port and the admin socket

A second SIGINT/SIGTERM while it drains forces the stop: the drain is cut, everything is
closed at once and ``run()`` raises ``ForcedStop`` (exit status 130). A start-up failure
(a port taken, a bad host key) goes through the same ``finally``, so nothing it had
already started outlives it. The reload loop (SIGHUP, and the admin socket's ``reload``)
survives an unexpected exception in a reload: it is logged and answered, and the next
reload is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from sshtunnel_mgr.core.errors import ForcedStop, SshtunError
from sshtunnel_mgr.runtime import systemd
from sshtunnel_mgr.runtime.admin import AdminServer, Handler
from sshtunnel_mgr.runtime.asyncutil import TaskSet, wait_either
from sshtunnel_mgr.runtime.logsetup import event
from sshtunnel_mgr.runtime.metrics import MetricsServer, Sample

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# After the drain (or a forced stop), how long tasks may take to end once cancelled.
CANCEL_TIMEOUT = 10.0


class Role(Protocol):
    """What a role (the bastion, the agent) gives the service: its own logic only."""

    @property
    def check_interval(self) -> float | None:
        """Seconds between ``check()`` calls while running, or None when only the
        watchdog (if systemd asks for one) needs them."""

    async def start(self, tasks: TaskSet) -> None:
        """Bind or connect. Long-running work goes into ``tasks``: one that fails stops
        the service, which then raises that failure. A start-up error is raised as is."""

    async def ready(self) -> None:
        """Return once the role serves (the bastion: at once; the agent: a name is up)."""

    async def check(self) -> bool:
        """A periodic health check; True lets the service ping systemd's watchdog."""

    async def reload(self) -> dict[str, Any]:
        """Re-read the config and apply it; the answer ``sshtun reload`` shows."""

    async def stop(self, grace: float | None) -> None:
        """Stop accepting, drain what is in flight for at most ``grace`` seconds (None:
        the role's configured grace; 0: cut at once), close every connection."""

    def status(self) -> str:
        """One line for systemd's STATUS=."""


class Service:
    """Runs one ``Role`` from start to a clean stop; see the module docstring."""

    def __init__(
        self,
        role: Role,
        *,
        admin_socket: Path,
        admin_handler: Handler,
        metrics_address: tuple[str, int] | None = None,
        samples: Callable[[], Iterable[Sample]] | None = None,
        stop: asyncio.Event | None = None,
        reload: asyncio.Event | None = None,
        on_ready: Callable[[], None] | None = None,
        handle_signals: bool = False,
    ) -> None:
        self.role = role
        self.should_exit = stop if stop is not None else asyncio.Event()
        self.force_exit = asyncio.Event()
        self.reload_requested = reload if reload is not None else asyncio.Event()
        self.admin = AdminServer(admin_socket, self._admin)
        self.metrics: MetricsServer | None = None
        self._admin_handler = admin_handler
        self._metrics_address = metrics_address
        self._samples = samples
        self._on_ready = on_ready
        self._handle_signals = handle_signals
        self._signals: list[signal.Signals] = []
        self._signal_seen: str | None = None
        self._failure: BaseException | None = None
        self.tasks = TaskSet(self._task_failed)  # the role's tasks
        self._own = TaskSet(self._task_failed)  # the reload loop, ready and watchdog

    # Signals: flags only -----------------------------------------------------------------
    def handle_exit(self, sig: signal.Signals) -> None:
        """SIGINT/SIGTERM: the first stops gracefully, the next forces the stop."""
        if self.should_exit.is_set():
            self.force_exit.set()
        else:
            self._signal_seen = sig.name
            self.should_exit.set()

    def _install_signal_handlers(self) -> None:
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.handle_exit, sig)
            self._signals.append(sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        self._signals.append(signal.SIGHUP)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)
        self._signals.clear()

    # The lifecycle -----------------------------------------------------------------------
    async def run(self) -> None:
        self._install_signal_handlers()
        try:
            await self._serve()
        finally:
            self._remove_signal_handlers()

    async def _serve(self) -> None:
        role_started = False
        try:
            await self.admin.start()
            if self._metrics_address is not None and self._samples is not None:
                self.metrics = MetricsServer(*self._metrics_address, self._samples)
                await self.metrics.start()
            role_started = True
            await self.role.start(self.tasks)
            self._own.spawn(self._reload_loop(), "reload")
            self._own.spawn(self._ready_and_watchdog(), "ready")
            await self.should_exit.wait()
        finally:
            await self._shutdown(role_started)
        if self._failure is not None:
            raise self._failure
        if self.force_exit.is_set():
            raise ForcedStop(
                "stopped at once by a second signal: sessions still open were cut",
                hint="one SIGINT/SIGTERM stops gracefully, draining routed sessions",
            )

    async def _shutdown(self, role_started: bool) -> None:
        systemd.notify("STOPPING=1")
        event(
            log,
            logging.INFO,
            "stopping",
            signal=self._signal_seen or "-",
            note="a second SIGINT/SIGTERM stops at once" if self._signal_seen else "-",
        )
        self.should_exit.set()  # a start-up failure or a failed task: stop the loops too
        await self._own.cancel_all()
        if role_started:
            await self._stop_role()
        try:
            left = await self.tasks.cancel_all(CANCEL_TIMEOUT)
            if left:
                event(log, logging.ERROR, "tasks did not end", tasks=",".join(left))
        finally:  # even when the service itself is cancelled while it stops
            self.admin.close()
            if self.metrics is not None:
                await self.metrics.stop()
            await self.admin.stop()

    async def _stop_role(self) -> None:
        """Drain under the grace period; a second signal cuts it and closes at once."""
        graceful = asyncio.create_task(self.role.stop(None), name="stop")
        try:
            await wait_either(asyncio.shield(graceful), self.force_exit.wait())
            if graceful.done():
                _log_stop_failure(graceful)
                return
            graceful.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await graceful
            event(log, logging.WARNING, "forced stop", note="closing every connection now")
            await self.role.stop(0)
        except Exception as exc:  # a failing stop must not skip closing what is left
            event(log, logging.ERROR, "stop failed", error=repr(exc), exc_info=exc)
        finally:
            if not graceful.done():  # the service itself was cancelled
                graceful.cancel()
                await asyncio.gather(graceful, return_exceptions=True)

    def _task_failed(self, name: str, exc: BaseException) -> None:
        """A task ended with an exception: before the stop it is fatal (the service stops
        and raises it); during the stop it is logged."""
        if self._failure is None and not self.should_exit.is_set():
            self._failure = exc
            self.should_exit.set()
            if isinstance(exc, SshtunError):
                return  # the CLI prints it, with its hint and exit status
        event(log, logging.ERROR, "task failed", task=name, error=repr(exc), exc_info=exc)

    # Reloads -----------------------------------------------------------------------------
    async def _reload_loop(self) -> None:
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            await self.reload_once()

    async def reload_once(self) -> dict[str, Any]:
        """One reload; an unexpected exception is logged and answered, never fatal."""
        try:
            return await self.role.reload()
        except Exception as exc:  # logged and answered; the next reload is served
            event(
                log,
                logging.ERROR,
                "reload failed",
                error=repr(exc),
                note="the running config stays; later reloads are served",
                exc_info=exc,
            )
            return {"ok": False, "error": f"reload failed: {exc!r}"}

    async def _admin(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("cmd") == "reload":
            return await self.reload_once()
        return await self._admin_handler(request)

    # Ready, health and the watchdog --------------------------------------------------------
    async def _ready_and_watchdog(self) -> None:
        await self.role.ready()
        systemd.notify(f"READY=1\nSTATUS={self.role.status()}")
        if self._on_ready is not None:
            self._on_ready()
        watchdog = systemd.watchdog_interval()
        intervals = [i for i in (watchdog, self.role.check_interval) if i is not None]
        if not intervals:
            return
        while not self.should_exit.is_set():
            healthy = await self.role.check()
            if healthy and watchdog is not None:
                systemd.notify("WATCHDOG=1")
            systemd.notify(f"STATUS={self.role.status()}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.should_exit.wait(), min(intervals))


def _log_stop_failure(task: asyncio.Task[None]) -> None:
    exc = None if task.cancelled() else task.exception()
    if exc is not None:
        event(log, logging.ERROR, "stop failed", error=repr(exc), exc_info=exc)
