"""The one exception tree of sshtun.

Library code raises these; only the CLI turns them into a message, a hint and an exit code.
"""

from __future__ import annotations

# Exit codes, distinct per failure family so scripts and systemd can tell them apart.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_HOSTKEY = 4
EXIT_PERMISSION = 5
EXIT_KEYS = 6
# `sshtun doctor` ran and at least one check failed (warnings alone exit 0).
EXIT_CHECKS_FAILED = 7
# A local socket or directory is not safe to trust (another user's, a symlink, too open).
EXIT_UNSAFE = 8
# `sshtun ssh-config` could not pin every hop (bastion down, a name not routed): what it
# could pin is written, the rest is named with its fix.
EXIT_UNPINNED = 9


class SshtunError(Exception):
    """Base of every error sshtun reports to a person."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(SshtunError):
    """A config or access file is missing or invalid."""

    exit_code = EXIT_CONFIG


class HostKeyError(SshtunError):
    """The bastion's host key does not match the pinned one (never retried)."""

    exit_code = EXIT_HOSTKEY


class PermissionRefused(SshtunError):
    """The bastion refused what we asked for (auth or a forward): retrying will not help."""

    exit_code = EXIT_PERMISSION


class KeyFileError(SshtunError):
    """A key file could not be read or written."""

    exit_code = EXIT_KEYS


class RotationError(SshtunError):
    """A key rotation step was refused or failed; the old key keeps working."""

    exit_code = EXIT_KEYS


class UnsafeAdminSocket(SshtunError):
    """The admin socket, its directory or the process serving it cannot be trusted."""

    exit_code = EXIT_UNSAFE


class UnpinnedHop(SshtunError):
    """A hop of ``ssh -J`` whose host key could not be read and verified."""

    exit_code = EXIT_UNPINNED
