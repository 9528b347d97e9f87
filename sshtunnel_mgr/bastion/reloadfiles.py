"""What a bastion reload reads from disk: the config file (optionally), the access file it
names and the host keys. Blocking: the running bastion calls it in a worker thread and
applies the result on its event loop (``Bastion._apply``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncssh

from sshtunnel_mgr.core.access import AccessPolicy
from sshtunnel_mgr.core.config import BastionConfig
from sshtunnel_mgr.core.errors import ConfigError, SshtunError
from sshtunnel_mgr.keys.hostkeys import load_host_keys
from sshtunnel_mgr.runtime.accessfile import load_access
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.bastion")


@dataclass(frozen=True)
class Files:
    """What a reload read from disk (in a worker thread), applied on the event loop."""

    config: BastionConfig
    access: AccessPolicy
    host_keys: list[asyncssh.SSHKey]


def _refused(message: str, note: str) -> dict[str, Any]:
    event(log, logging.ERROR, "reload refused", reason=message, note=note)
    return {"ok": False, "error": message}


def read_files(
    config: BastionConfig | None,
    load: Callable[[], BastionConfig] | None,
    running: BastionConfig,
) -> Files | dict[str, Any]:
    """Blocking: read what a reload needs (``config`` None: the config file first, through
    ``load``, or the ``running`` config when there is no file); on an error log it and
    return the refusal answer."""
    if config is None:
        try:
            config = load() if load is not None else running
        except ConfigError as exc:
            return _refused(exc.message, "the running config stays")
    try:
        access = load_access(config.access_file)
    except ConfigError as exc:
        return _refused(exc.message, "the running access policy stays")
    try:
        host_keys = load_host_keys(config.host_key)
    except SshtunError as exc:
        return _refused(exc.message, "the running host keys stay")
    return Files(config, access, host_keys)
