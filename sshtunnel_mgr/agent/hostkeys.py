"""Following the bastion's host-key announcements, as OpenSSH's UpdateHostKeys does.

After login an sshtun bastion lists its host keys and proves it holds the new ones
(hostkeys-00/prove-00; asyncssh checks the signatures). ``follow`` applies the change to
the link's pinning: a known_hosts file is updated in place; an inline ``host_key`` cannot
be, so the new key is trusted for this run and the log says what to pin.
"""

from __future__ import annotations

import logging

import asyncssh

from sshtunnel_mgr.core.config import BastionEndpoint
from sshtunnel_mgr.core.knownhosts import host_pattern, update_known_hosts
from sshtunnel_mgr.keys.store import key_fingerprint, public_line
from sshtunnel_mgr.runtime.fsutil import edit_atomic
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.agent")

Pinned = tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]]


def follow(
    endpoint: BastionEndpoint,
    added: list[asyncssh.SSHKey],
    removed: list[asyncssh.SSHKey],
    retained: list[asyncssh.SSHKey],
) -> Pinned | None:
    """Apply one announcement. Returns the keys to trust from now on when the bastion is
    pinned inline (asyncssh's known_hosts argument), or None: nothing changes in memory
    (the known_hosts file, if any, holds the change)."""
    if not added and not removed:
        return None
    lines = [public_line(k, "") for k in added]
    gone = [public_line(k, "") for k in removed]
    if endpoint.known_hosts is not None:
        path = endpoint.known_hosts
        pattern = host_pattern(endpoint.host, endpoint.port)
        try:
            edit_atomic(path, lambda text: update_known_hosts(text, pattern, lines, gone)[0])
        except OSError as exc:
            event(log, logging.WARNING, "cannot update known_hosts", path=path, error=exc)
            return None
        event(
            log,
            logging.INFO,
            "host keys updated",
            bastion=endpoint.address,
            known_hosts=path,
            added=",".join(key_fingerprint(k) for k in added) or "-",
            removed=",".join(key_fingerprint(k) for k in removed) or "-",
        )
        return None
    trusted = [k for k in [*retained, *added] if k not in removed]
    if added:
        event(
            log,
            logging.WARNING,
            "new host key",
            bastion=endpoint.address,
            key=",".join(key_fingerprint(k) for k in added),
            note="trusted for this run (proven by the pinned key); pin it in the config",
            host_key=lines[0],
        )
    return (trusted, [], [])
