"""The bastion as ``runtime.service`` runs it: the one-process ``Bastion`` (bastion/run.py)
and each worker of a multi-process one (bastion/workers/worker.py) are this ``Role``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sshtunnel_mgr.runtime.asyncutil import TaskSet

if TYPE_CHECKING:
    from sshtunnel_mgr.bastion.serve import Bastion


class BastionRole:
    """The bastion as ``runtime.service`` runs it (its ``Role``): the lifecycle around it
    (signals, admin socket, metrics, reloads, ready and the watchdog) is the service's."""

    check_interval: float | None = None  # pinged only for systemd's watchdog

    def __init__(self, bastion: Bastion) -> None:
        self.bastion = bastion

    async def start(self, tasks: TaskSet) -> None:
        await self.bastion.start()

    async def ready(self) -> None:
        """Ready once listening, which ``start()`` did."""

    async def check(self) -> bool:
        return True  # the event loop runs and the listeners are open

    async def reload(self) -> dict[str, Any]:
        return await self.bastion.reload_async(from_file=True)

    async def stop(self, grace: float | None) -> None:
        await self.bastion.stop(grace)

    def status(self) -> str:
        return self.bastion.status_line()
