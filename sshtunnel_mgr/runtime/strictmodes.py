"""Like OpenSSH's ``StrictModes``: a file that decides who may log in is trusted only if
nobody but its owner can change it.

The access file, and every directory above it, must be owned by root or by the user the
bastion runs as, and not be writable by group or others (a directory with the sticky bit,
like ``/tmp``, may be: nobody can rename or delete another's entry in it). A symbolic link
is followed to its target and both the link's and the target's directories are checked.

``problem()`` is the pure decision (a stat result in, a reason and a fix out);
``read_trusted()`` and ``edit_trusted()`` do the I/O and raise ``ConfigError``.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.runtime.fsutil import edit_atomic

GROUP_OTHER_WRITE = 0o022
ACCESS_MODE = 0o600  # what rewrites of the access file get


@dataclass(frozen=True)
class Problem:
    reason: str
    fix: str


def service_owners() -> frozenset[int]:
    """Who may own a trusted file: root and the user this process runs as."""
    return frozenset({0, os.geteuid()})


def running_as_root() -> bool:
    """An admin's ``sshtun keys``/``doctor`` as root may read and edit a file owned by the
    bastion's own (e.g. systemd dynamic) user; modes are still checked."""
    return os.geteuid() == 0


def problem(path: str, st_mode: int, st_uid: int, owners: Collection[int] | None) -> Problem | None:
    """Why a file or directory cannot be trusted, or None. ``owners`` None: any owner."""
    is_dir = stat.S_ISDIR(st_mode)
    kind = "directory" if is_dir else "file"
    perm = stat.S_IMODE(st_mode)
    if owners is not None and st_uid not in owners:
        want = " or ".join("root" if u == 0 else f"uid {u}" for u in sorted(set(owners)))
        return Problem(
            f"{kind} {path} is owned by uid {st_uid}, not by {want}: that user could "
            "grant any key access",
            f"chown {max(owners)} {path}",
        )
    writable = perm & GROUP_OTHER_WRITE
    if writable and not (is_dir and perm & stat.S_ISVTX):
        who = " and ".join(w for w, bit in (("group", 0o020), ("others", 0o002)) if writable & bit)
        return Problem(
            f"{kind} {path} is writable by {who} (mode {perm:04o}): anyone who can write it "
            "could grant any key access",
            f"chmod go-w {path}" if is_dir else f"chmod 600 {path}",
        )
    if not is_dir and not stat.S_ISREG(st_mode):
        return Problem(f"{path} is not a regular file", f"replace {path} with a regular file")
    return None


def _directories(path: Path) -> list[Path]:
    """Every directory a change of ``path`` could come through: those above the link (if
    it is one) and above its target."""
    dirs: dict[str, Path] = {}
    for start in (Path(os.path.realpath(path.parent)), Path(os.path.realpath(path)).parent):
        for d in (start, *start.parents):
            dirs.setdefault(str(d), d)
    return list(dirs.values())


def directory_problem(path: Path, owners: Collection[int] | None) -> Problem | None:
    """The first unsafe directory above ``path`` (and above its target, for a link)."""
    for directory in _directories(path):
        try:
            dst = os.stat(directory)
        except OSError as exc:
            return Problem(f"cannot check directory {directory}: {exc}", "check the path")
        found = problem(str(directory), dst.st_mode, dst.st_uid, owners)
        if found is not None:
            return found
    return None


def check(path: Path, st: os.stat_result, owners: Collection[int] | None) -> None:
    """Raise ``ConfigError`` if the file (its ``fstat``) or a directory above it is unsafe."""
    found = problem(str(path), st.st_mode, st.st_uid, owners) or directory_problem(path, owners)
    if found is not None:
        raise ConfigError(
            f"refusing access file {path}: {found.reason}; fix: {found.fix}",
            hint="the access file is checked like OpenSSH's StrictModes",
        )


def read_trusted(path: Path, owners: Collection[int] | None, *, strict: bool = True) -> str:
    """The access file's text, after ``check`` (unless not ``strict``); the mode and owner
    checked are those of the very file read (``fstat`` of the open descriptor)."""
    with open(path, "rb") as handle:
        if strict:
            check(path, os.fstat(handle.fileno()), owners)
        return handle.read().decode("utf-8")


def edit_trusted(
    path: Path,
    edit: Callable[[str], str],
    *,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    any_owner: bool = False,
) -> None:
    """``edit_atomic`` for the access file: an unsafe file is refused, never rewritten
    (a rewrite must not launder it), and the result is written 0600 with the same owner.
    ``any_owner`` (root running ``sshtun keys``): skip the owner check; the owner is kept,
    so the bastion still judges it on its next load."""
    owners = None if any_owner else service_owners()
    edit_atomic(
        path,
        edit,
        timeout=timeout,
        cancel=cancel,
        mode=ACCESS_MODE,
        verify=lambda p, st: check(p, st, owners),
    )
