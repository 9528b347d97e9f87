"""File modes and owners (pure: inputs are stat results, not paths to look at)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sshtunnel_mgr.doctor.findings import Finding, Level, fail, ok

GROUP_OTHER_WRITE = 0o022
GROUP_OTHER_ANY = 0o077
OTHER_WRITE = 0o002
GROUP_WRITE = 0o020


@dataclass(frozen=True)
class FileStat:
    """What ``os.stat`` says about a path; ``exists`` False leaves the rest meaningless."""

    path: str
    exists: bool
    mode: int = 0  # permission bits only (st_mode & 0o7777)
    uid: int = 0
    is_dir: bool = False
    error: str = ""


def check_file(
    stat: FileStat,
    check: str,
    label: str,
    *,
    fail_bits: int,
    warn_bits: int = 0,
    want: int,
    owners: Collection[int] | None = None,
    owner_level: Level = Level.FAIL,
    missing: Level | None = Level.FAIL,
    missing_fix: str = "",
) -> Finding | None:
    """Mode bits in ``fail_bits`` fail, those in ``warn_bits`` warn (fix: chmod to ``want``);
    an owner outside ``owners`` (when given) is reported at ``owner_level``. A missing file
    is reported at ``missing`` (None: not reported)."""
    where = f"{label} {stat.path}"
    if stat.error:
        return fail(check, f"{where}: {stat.error}", "check the path and its permissions")
    if not stat.exists:
        if missing is None:
            return None
        return Finding(missing, check, f"{where} does not exist", missing_fix or "create it")
    mode = stat.mode & 0o7777
    chmod = f"chmod {want:o} {stat.path}"
    problems: list[tuple[Level, str, str]] = []
    if mode & fail_bits:
        problems.append((Level.FAIL, f"mode {mode:04o} lets {_who(mode & fail_bits)}", chmod))
    elif mode & warn_bits:
        problems.append((Level.WARN, f"mode {mode:04o} lets {_who(mode & warn_bits)}", chmod))
    if owners is not None and stat.uid not in owners:
        wanted = " or ".join(str(u) for u in sorted(owners))
        problems.append(
            (
                owner_level,
                f"owned by uid {stat.uid} (want uid {wanted})",
                f"chown {max(owners)} {stat.path}",
            )
        )
    if not problems:
        return ok(check, f"{where}: mode {mode:04o}, owner uid {stat.uid}")
    level = max((p[0] for p in problems), key=lambda lv: lv.rank)
    message = f"{where}: " + "; ".join(p[1] for p in problems)
    return Finding(level, check, message, "; ".join(p[2] for p in problems))


def _who(bits: int) -> str:
    """A human reading of the offending bits: "group and others write"."""
    who = [w for w, mask in (("group", 0o070), ("others", 0o007)) if bits & mask]
    what = [w for w, mask in (("read", 0o044), ("write", 0o022), ("execute", 0o011)) if bits & mask]
    return f"{' and '.join(who)} {'/'.join(what)} it"


def check_private_key_file(
    stat: FileStat, check: str, label: str, owners: Collection[int] | None = None
) -> Finding | None:
    """A private key: readable by its owner only (0600)."""
    return check_file(
        stat,
        check,
        label,
        fail_bits=GROUP_OTHER_ANY,
        want=0o600,
        owners=owners,
        owner_level=Level.WARN,
        missing_fix="create it with `sshtun keys gen PATH`",
    )


def check_ssh_dir(stat: FileStat, owners: Collection[int]) -> Finding | None:
    """``~/.ssh``: nobody else may write it (fail); 0700 wanted (warn otherwise)."""
    return check_file(
        stat,
        "files.ssh-dir",
        "directory",
        fail_bits=GROUP_OTHER_WRITE,
        warn_bits=GROUP_OTHER_ANY,
        want=0o700,
        owners=owners,
        missing=None,
    )


def check_home_dir(stat: FileStat, owners: Collection[int]) -> Finding | None:
    """A login's home: others who can write it can replace ``~/.ssh``."""
    return check_file(
        stat,
        "files.home-dir",
        "home directory",
        fail_bits=GROUP_OTHER_WRITE,
        want=0o755,
        owners=owners,
        missing=None,
    )


def check_authorized_keys(stat: FileStat, owners: Collection[int]) -> Finding | None:
    """``authorized_keys``: public, but nobody else may write it."""
    return check_file(
        stat,
        "files.authorized-keys",
        "authorized keys file",
        fail_bits=GROUP_OTHER_WRITE,
        want=0o600,
        owners=owners,
        missing=None,
    )


def check_config_file(stat: FileStat, check: str, label: str) -> Finding | None:
    """An sshtun config (or known_hosts) file: world-writable fails, group-writable warns."""
    return check_file(
        stat,
        check,
        label,
        fail_bits=OTHER_WRITE,
        warn_bits=GROUP_WRITE,
        want=0o644,
        missing=None,
    )


def check_access_file_mode(stat: FileStat, owners: Collection[int]) -> Finding | None:
    """The bastion's access file: whoever can write it can grant themselves any name."""
    return check_file(
        stat,
        "bastion.access-file-mode",
        "access file",
        fail_bits=GROUP_OTHER_WRITE,
        want=0o600,
        owners=owners,
        owner_level=Level.WARN,
    )
