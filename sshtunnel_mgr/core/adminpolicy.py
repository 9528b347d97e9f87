"""Who may be trusted at either end of the admin socket: pure decisions on stat facts and uids.

The admin socket carries commands (reload, revoke by reload) and, for ``keys rotate``, a
private key; its answers are printed as the truth. So both ends check the other before
trusting it, and this module decides, from plain facts gathered by ``admin.py``.

The rules (Linux; the same on any platform that reports the peer's uid):

- **The socket's directory** (the runtime directory: ``$RUNTIME_DIRECTORY``,
  ``$XDG_RUNTIME_DIR/sshtun``, ``/run/sshtun-ROLE``, ``/tmp/sshtun-UID`` or the directory
  of the configured ``admin_socket``) must be a real directory (not a symlink) with no
  group or other permission bits (0700 or stricter). The server binds only into a
  directory owned by its own uid; it creates a missing one 0700 and never "fixes" the
  mode of one it finds: someone else made it, or made it wrong.
- **The client** trusts a directory owned by its own uid or by root. When the client runs
  as root it also trusts a directory that root handed to another uid: owned by that uid,
  inside a parent directory owned by root and writable by nobody else (``/run``), which is
  what systemd's ``RuntimeDirectory=`` makes for a ``DynamicUser=`` service
  (``/run/sshtun-bastion``). A directory in ``/tmp`` (sticky, writable by all) owned by
  another uid is never trusted: anybody could have made it.
- **The peer of the connection** (``SO_PEERCRED``: the uid that listened, as the kernel
  reports it) must be the client's own uid, root, or, in the root-handed case above, the
  uid that owns the directory. Checked before a request (a secret) is sent.
- **The server** answers only clients of its own uid or root, whatever the socket's mode.

Where the platform cannot report a peer's uid, the directory rule stands alone.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

ROOT = 0


@dataclass(frozen=True)
class PathFacts:
    """What ``lstat`` says about a directory (and what it says about the directory's parent)."""

    is_symlink: bool
    is_dir: bool
    uid: int
    mode: int  # st_mode
    parent_uid: int
    parent_mode: int


def _mode_problem(path: str, facts: PathFacts) -> str | None:
    if facts.is_symlink:
        return f"{path} is a symlink, not a directory"
    if not facts.is_dir:
        return f"{path} is not a directory"
    bits = stat.S_IMODE(facts.mode)
    if bits & 0o077:
        return f"{path} has mode {bits:04o}: group and others must have no access (0700)"
    return None


def handed_by_root(facts: PathFacts) -> bool:
    """Whether only root could have created this directory and given it to its owner: its
    parent is root's and nobody else may write in it (``/run``, not ``/tmp``)."""
    return facts.parent_uid == ROOT and not stat.S_IMODE(facts.parent_mode) & 0o022


def server_dir_problem(path: str, facts: PathFacts, me: int) -> str | None:
    """Why the server must not bind into this directory, or None."""
    problem = _mode_problem(path, facts)
    if problem:
        return problem
    if facts.uid != me:
        return f"{path} is owned by uid {facts.uid}, not by this process (uid {me})"
    return None


def client_dir_problem(path: str, facts: PathFacts, me: int) -> str | None:
    """Why a client must not trust a socket in this directory, or None."""
    problem = _mode_problem(path, facts)
    if problem:
        return problem
    if facts.uid in (me, ROOT):
        return None
    if me == ROOT and handed_by_root(facts):
        return None
    return f"{path} is owned by uid {facts.uid}, not by uid {me} or root" + (
        "" if me != ROOT else ", and its parent is not root's alone"
    )


def trusted_peers(facts: PathFacts, me: int) -> frozenset[int]:
    """The uids a client accepts as the process serving a socket in this (trusted) directory."""
    peers = {me, ROOT}
    if me == ROOT and handed_by_root(facts):
        peers.add(facts.uid)
    return frozenset(peers)


def server_peer_problem(peer: int | None, me: int) -> str | None:
    """Why the server must not answer a client of this uid (None: unknown, or allowed)."""
    if peer is None or peer in (me, ROOT):
        return None
    return f"uid {peer} may not use this admin socket (only uid {me} and root)"
