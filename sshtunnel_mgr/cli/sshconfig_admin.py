"""``sshtun ssh-config --config BASTION.toml``: what the bastion's admin hands a user, from
the bastion's own host key and the running bastion's published names and host keys (as
their agents read them). Names it cannot pin (the bastion is not running, an agent
announced no key) are reported with the laptop command that reads them through the tunnel."""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path
from typing import Any

from sshtunnel_mgr.core.config import load_config
from sshtunnel_mgr.core.errors import SshtunError, UnsafeAdminSocket
from sshtunnel_mgr.keys.store import key_fingerprint
from sshtunnel_mgr.runtime.accessfile import load_access
from sshtunnel_mgr.runtime.admin import default_socket_path, query
from sshtunnel_mgr.runtime.strictmodes import running_as_root
from sshtunnel_mgr.setup import sshconfig
from sshtunnel_mgr.setup.sshconfig import Plan, Unpinned


def admin_plan(config: Path, host: str, port: int, wanted: list[tuple[str, int]]) -> Plan:
    import asyncssh

    bastion = load_config(config).require_bastion()
    pub_path = bastion.host_key.with_name(bastion.host_key.name + ".pub")
    try:
        host_pub = pub_path.read_text().strip()
        fingerprint = key_fingerprint(asyncssh.import_public_key(host_pub))
    except (OSError, asyncssh.KeyImportError) as exc:
        raise SshtunError(
            f"cannot read the bastion's public host key {pub_path}: {exc}",
            hint="start the bastion once; it creates its host key",
        ) from None
    live = live_names(bastion.admin_socket or default_socket_path("bastion"))
    unpinned: list[Unpinned] = []
    if live is None:  # not running: what the access file allows agents to publish
        names = sshconfig.names_from_patterns(
            [
                (p.host, p.port)
                for e in load_access(bastion.access_file, any_owner=running_as_root()).entries
                for p in e.permit_listen
            ]
        )
        keys: dict[tuple[str, int], str] = {}
    else:
        names = [(n["name"], n["port"]) for n in live]
        keys = {(n["name"], n["port"]): n["host_key"] for n in live if n.get("host_key")}
    if wanted:
        names = [n for n in names if n in wanted]
        names += [n for n in wanted if n not in names]
    names = sorted(set(names))
    exact = [(n, p) for n, p in names if "*" not in n and "?" not in n]
    laptop = shlex.join(
        [
            "sshtun",
            "ssh-config",
            "--bastion",
            f"{host}:{port}",
            "--bastion-key",
            fingerprint,
            *(n if p == 22 else f"{n}:{p}" for n, p in exact),
        ]
    )
    for name, nport in exact:
        if (name, nport) in keys:
            continue
        if live is None:
            why = "the bastion is not running here, so its home box's key is unknown"
        elif not any((n["name"], n["port"]) == (name, nport) for n in live):
            why = "not published right now (is its agent up?)"
        else:
            why = "its agent announced no host key"
        unpinned.append(Unpinned(f"{name}:{nport}", why, f"on the laptop run: {laptop}"))
    lines = [sshconfig.known_hosts_line(host, port, host_pub)]
    lines += [sshconfig.known_hosts_line(n, p, k) for (n, p), k in sorted(keys.items())]
    header = [
        f"sshtun ssh-config: bastion {host}:{port}, its host key {fingerprint}",
        "On a laptop, this reads each home box's key through the bastion and writes it all:",
        f"  {laptop}",
    ]
    return Plan(header, lines, names, unpinned)


def live_names(path: Path) -> list[dict[str, Any]] | None:
    """The running bastion's published names (with host keys), or None if none runs."""
    try:
        answer = asyncio.run(query(path, {"cmd": "status"}, timeout=3))
    except UnsafeAdminSocket:
        raise  # its host keys would be pinned: an impostor must not be taken for "not running"
    except SshtunError:
        return None
    names: list[dict[str, Any]] = answer.get("names", [])
    return names
