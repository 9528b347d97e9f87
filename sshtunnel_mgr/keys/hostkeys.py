"""The bastion's host keys during a rotation (OpenSSH's hostkeys-00@openssh.com).

``HOST_KEY`` is the key the bastion signs with; ``HOST_KEY.next``, when present, is served
beside it and announced to every client after login, which proves it holds that key too
(hostkeys-prove-00). OpenSSH clients with ``UpdateHostKeys yes`` and sshtun agents whose
bastion is pinned in a known_hosts file then add it themselves: no trust-on-first-use
prompt. ``finish`` puts the new key in place of the old one; from then on only the new key
is served and announced, so the same clients drop the old one.
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh

from sshtunnel_mgr.core.errors import KeyFileError
from sshtunnel_mgr.keys.store import generate_key, load_host_key, load_private_key

SUFFIX = ".next"


def next_path(host_key: Path) -> Path:
    return Path(str(host_key) + SUFFIX)


def load_host_keys(host_key: Path) -> list[asyncssh.SSHKey]:
    """The keys to serve: the current one first (it must exist), then the next."""
    keys = [load_host_key(host_key)]
    if next_path(host_key).exists():
        keys.append(load_private_key(next_path(host_key)))
    return keys


def begin(host_key: Path) -> tuple[Path, bool]:
    """Generate ``HOST_KEY.next`` unless it exists; (path, created)."""
    nxt = next_path(host_key)
    if nxt.exists():
        return nxt, False
    generate_key(nxt, comment="sshtun-bastion")
    _same_owner(host_key, nxt)
    return nxt, True


def _same_owner(current: Path, new: Path) -> None:
    """Root adding a key beside one the bastion's own user owns (systemd's dynamic user
    owns its state directory): the new files get that owner, or its reload cannot read
    them (Permission denied, measured under the shipped unit)."""
    st = os.stat(current)
    if os.geteuid() != 0 or st.st_uid == 0:
        return
    for path in (new, Path(str(new) + ".pub")):
        if path.exists():
            os.chown(path, st.st_uid, st.st_gid)


def finish(host_key: Path) -> None:
    """Make the next key the current one (atomic rename; the old key file is removed)."""
    nxt = next_path(host_key)
    if not nxt.exists():
        raise KeyFileError(
            f"{nxt} does not exist: no host key rotation is in progress",
            hint="start one with `sshtun keys rotate --host-key --config BASTION.toml`",
        )
    try:
        os.replace(nxt, host_key)
        pub = Path(str(nxt) + ".pub")
        if pub.exists():
            os.replace(pub, Path(str(host_key) + ".pub"))
    except OSError as exc:
        raise KeyFileError(f"cannot move {nxt} to {host_key}: {exc}") from None
