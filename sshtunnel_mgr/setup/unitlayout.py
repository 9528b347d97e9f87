"""Can the shipped systemd units run this config? Checked by ``sshtun systemd install``
before it writes a unit, so a layout the sandboxed service cannot read is refused with the
fix, instead of turning up later as 'Permission denied' (exit 3 or 6) in the journal.

The units run as a dynamic user (``DynamicUser=yes``): no groups, nothing of root's
readable, and under ``ProtectSystem=strict`` only their own state, logs and runtime
directories writable. So:

- the config file must be readable by others, and every directory above it searchable;
- bastion: ``host_key`` and ``access_file`` in the state directory ``/var/lib/sshtun``
  (re-read on reload, the access file rewritten by the bastion itself), the audit log
  there or in ``/var/log/sshtun``;
- agent: ``key = "$CREDENTIALS_DIRECTORY/agent_key"`` (the unit's ``LoadCredential=``), and
  the file it is loaded from present.

``bastion_problems``/``agent_problems`` are pure; ``readable_problems`` does the ``stat``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sshtunnel_mgr.core.config import AgentConfig, BastionConfig

STATE_DIR = Path("/var/lib/sshtun")  # StateDirectory=sshtun
LOGS_DIR = Path("/var/log/sshtun")  # LogsDirectory=sshtun
CREDENTIAL = "$CREDENTIALS_DIRECTORY/agent_key"


def _inside(path: Path, directory: Path) -> bool:
    return path.parent == directory


def bastion_problems(cfg: BastionConfig) -> list[str]:
    found = []
    for field, path in (("host_key", cfg.host_key), ("access_file", cfg.access_file)):
        if not _inside(path, STATE_DIR):
            found.append(
                f"{field} = {str(path)!r} is not in {STATE_DIR}, the only directory the "
                "bastion's unit can read it from and rewrite it in"
            )
    if cfg.audit_log is not None and not (
        _inside(cfg.audit_log, LOGS_DIR) or _inside(cfg.audit_log, STATE_DIR)
    ):
        found.append(f"audit_log = {str(cfg.audit_log)!r} is not in {LOGS_DIR}")
    return found


def agent_problems(cfg: AgentConfig, key_source: Path, source_exists: bool) -> list[str]:
    found = []
    if not str(cfg.key).endswith(CREDENTIAL):  # unexpanded: relative to the config
        found.append(
            f"key = {str(cfg.key)!r}: the unit hands the key over as a credential; "
            f'set key = "{CREDENTIAL}"'
        )
    if not source_exists:
        found.append(f"{key_source} (the unit's LoadCredential= source) does not exist")
    return found


def others_may_read(mode: int, is_dir: bool) -> bool:
    return bool(mode & (stat.S_IXOTH if is_dir else stat.S_IROTH))


def readable_problems(config_path: Path) -> list[str]:
    """The config file and the directories above it, as the unit's dynamic user sees them."""
    found = []
    for path in (config_path, *config_path.parents):
        try:
            st = os.stat(path)
        except OSError as exc:
            return [f"cannot check {path}: {exc.strerror}"]
        if not others_may_read(st.st_mode, stat.S_ISDIR(st.st_mode)):
            fix = "chmod o+x" if stat.S_ISDIR(st.st_mode) else "chmod o+r"
            found.append(
                f"{path} (mode {stat.S_IMODE(st.st_mode):04o}) cannot be read by the "
                f"unit's dynamic user; it holds no secrets: {fix} {path}"
            )
    return found
