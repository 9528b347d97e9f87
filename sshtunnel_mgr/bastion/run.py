"""``sshtun bastion``: the bastion as ``runtime.service`` runs it, in one process
(``workers = 1``) or as a supervisor of worker processes (bastion/workers)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sshtunnel_mgr.bastion.role import BastionRole
from sshtunnel_mgr.core.config import BastionConfig
from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.runtime.admin import default_socket_path
from sshtunnel_mgr.runtime.metrics import bastion_samples
from sshtunnel_mgr.runtime.service import Service

if TYPE_CHECKING:  # the one-process bastion is imported by the path that runs it
    from sshtunnel_mgr.bastion.serve import Bastion


async def serve(
    config: BastionConfig,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Bastion], None] | None = None,
    *,
    reload: asyncio.Event | None = None,
    load: Callable[[], BastionConfig] | None = None,
    handle_signals: bool = False,
    config_path: Path | None = None,
) -> None:
    """Run the bastion until ``stop`` (or, with ``handle_signals``, SIGINT/SIGTERM; a
    second one forces the stop); each SIGHUP or ``reload`` re-reads the files. With
    ``workers`` over 1, this process supervises that many workers, each reading
    ``config_path``."""
    if config.worker_count > 1:
        if config_path is None:
            raise ConfigError("workers > 1 needs the bastion's config file for its workers")
        await _supervise(config, config_path, stop, reload, handle_signals)
        return
    from sshtunnel_mgr.bastion.metricsview import bastion_metrics
    from sshtunnel_mgr.bastion.serve import Bastion

    bastion = Bastion(config, load=load)
    service = Service(
        BastionRole(bastion),
        admin_socket=config.admin_socket or default_socket_path("bastion"),
        admin_handler=bastion.handle_admin,
        metrics_address=config.metrics_address,
        samples=lambda: bastion_samples(
            bastion_metrics(
                bastion.state,
                bastion.listener,
                None if bastion.web is None else len(bastion.web.conns),
            )
        ),
        stop=stop,
        reload=reload,
        on_ready=None if on_ready is None else lambda: on_ready(bastion),
        handle_signals=handle_signals,
    )
    await service.run()


async def _supervise(
    config: BastionConfig,
    config_path: Path,
    stop: asyncio.Event | None,
    reload: asyncio.Event | None,
    handle_signals: bool,
) -> None:
    from sshtunnel_mgr.bastion.workers.supervisor import Supervisor, worker_samples

    supervisor = Supervisor(config, config_path)
    service = Service(
        supervisor,
        admin_socket=config.admin_socket or default_socket_path("bastion"),
        admin_handler=supervisor.handle_admin,
        metrics_address=config.metrics_address,
        samples=lambda: [
            *bastion_samples(supervisor.metrics()),
            *worker_samples(supervisor.workers),
        ],
        stop=stop,
        reload=reload,
        handle_signals=handle_signals,
    )
    await service.run()
