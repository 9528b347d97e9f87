"""The agent's lifecycle: load key → one link per bastion → ready when a name is published
→ run until stopped → close links."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sshtunnel_mgr import systemd
from sshtunnel_mgr.agent.link import BastionLink
from sshtunnel_mgr.config import AgentConfig
from sshtunnel_mgr.keys.store import load_private_key

log = logging.getLogger("sshtunnel_mgr.agent")


class Agent:
    def __init__(
        self, config: AgentConfig, on_ready: Callable[[Agent], None] | None = None
    ) -> None:
        self.config = config
        self.key = load_private_key(config.key)
        self._on_ready = on_ready
        self._ready = False
        self.ready_event = asyncio.Event()
        self.links = [
            BastionLink(config, ep, self.key, on_published=self._published)
            for ep in config.bastions
        ]

    def _published(self, link: BastionLink) -> None:
        names = ",".join(link.status.published)
        systemd.notify(f"STATUS=up on {link.endpoint.address}: {names}")
        if not self._ready:
            self._ready = True
            systemd.notify("READY=1")
            self.ready_event.set()
            if self._on_ready is not None:
                self._on_ready(self)

    async def run(self, stop: asyncio.Event) -> None:
        """Run every link until ``stop``; a fatal error on one link stops them all."""
        try:
            async with asyncio.TaskGroup() as group:
                for link in self.links:
                    group.create_task(link.run(stop))
        except BaseExceptionGroup as group_exc:
            # Surface the first sshtun error as-is, so the CLI reports it plainly.
            raise group_exc.exceptions[0] from None
        finally:
            systemd.notify("STOPPING=1")


async def serve(
    config: AgentConfig, stop: asyncio.Event, on_ready: Callable[[Agent], None] | None = None
) -> None:
    await Agent(config, on_ready).run(stop)
