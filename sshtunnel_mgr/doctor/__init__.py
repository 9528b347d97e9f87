"""``sshtun doctor``: hardening checks for the home box (its sshd, keys, files, pinning) and
the bastion (access file, host key, algorithm policy).

The check functions (``sshd``, ``algorithms``, ``files``, ``keycheck``, ``accesscheck``) are
pure: parsed data in, ``Finding`` values out. ``collect`` is the thin I/O layer that runs
``sshd -T``, stats files and loads configs.
"""

from sshtunnel_mgr.doctor.findings import Finding, Level, summarize, worst

__all__ = ["Finding", "Level", "summarize", "worst"]
