"""Key requests without the agent: ``sshtun keys rotate`` finishing or undoing a rotation
while the agent is stopped logs in to each bastion itself (pinned host key, the agent's
algorithm policy) with the one key the bastion still accepts at that step, runs the
request, and leaves. The connection publishes nothing, so it takes no name from anyone."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncssh

from sshtunnel_mgr.agent.client import known_hosts_arg
from sshtunnel_mgr.agent.keyrequest import run_key_request
from sshtunnel_mgr.core import policy
from sshtunnel_mgr.core.config import AgentConfig, BastionEndpoint


async def key_request(
    config: AgentConfig, endpoint: BastionEndpoint, key: asyncssh.SSHKey, command: str
) -> dict[str, Any]:
    """Run one key request on ``endpoint`` as ``key``; the bastion's JSON answer, or
    ``{"ok": False, "error": ...}``."""
    try:
        conn = await asyncssh.connect(
            endpoint.host,
            endpoint.port,
            username=endpoint.user,
            client_keys=[key],
            known_hosts=known_hosts_arg(endpoint),
            agent_path=None,
            connect_timeout=config.connect_timeout,
            login_timeout=config.connect_timeout,
            **policy.key_only_login(),
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        return {"ok": False, "error": f"host key mismatch: {exc}"}
    except asyncssh.PermissionDenied as exc:
        return {"ok": False, "error": f"the key was refused: {exc.reason}"}
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        return {"ok": False, "error": f"cannot connect: {exc or type(exc).__name__}"}
    try:
        if not command:
            return {"ok": True}
        return await run_key_request(conn, command, 30)
    finally:
        conn.close()
        await asyncio.wait_for(conn.wait_closed(), 10)


async def accepts(config: AgentConfig, endpoint: BastionEndpoint, key: asyncssh.SSHKey) -> bool:
    """Whether ``endpoint`` lets ``key`` log in (a login and nothing else)."""
    answer = await key_request(config, endpoint, key, "")
    return not str(answer.get("error", "")).startswith("the key was refused")


async def on_every_bastion(
    config: AgentConfig, key: asyncssh.SSHKey, command: str
) -> list[tuple[str, dict[str, Any]]]:
    """``key_request`` on each configured bastion in turn: (address, answer) pairs."""
    return [(ep.address, await key_request(config, ep, key, command)) for ep in config.bastions]
