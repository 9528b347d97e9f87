"""The one exception tree of sshtun.

Library code raises these; only the CLI turns them into a message, a hint and an exit code.
"""

from __future__ import annotations

from dataclasses import dataclass

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
# A service stopped at once on a second SIGINT/SIGTERM, without draining (128 + SIGINT).
EXIT_FORCED = 130


@dataclass(frozen=True)
class ExitStatus:
    """One row of the exit status table: README's "Exit codes" and ``sshtun --help`` are
    generated from (and tested against) ``EXIT_STATUSES``, the single source."""

    code: int
    name: str
    meaning: str
    example: str
    # systemd must not restart a service that exits so: retrying cannot help
    # (the units' RestartPreventExitStatus= lists exactly these).
    final: bool = False


EXIT_STATUSES: tuple[ExitStatus, ...] = (
    ExitStatus(EXIT_OK, "ok", "done", "`sshtun keys gen KEY`"),
    ExitStatus(
        EXIT_ERROR,
        "error",
        "any other failure, e.g. the running service is not reachable or refused the request",
        "`sshtun status -c agent.toml` with no agent running",
    ),
    ExitStatus(
        EXIT_USAGE,
        "usage",
        "the command line is wrong: an unknown command or option, a missing argument, a bad "
        "value, a file named on it that does not exist (a missing `--config` is 3); "
        "nothing was done",
        "`sshtun status -c agent.toml --role foo`",
    ),
    ExitStatus(
        EXIT_CONFIG,
        "config",
        "the config or access file is missing or invalid (the message names the file and "
        "the field)",
        "`sshtun up -c missing.toml`",
        final=True,
    ),
    ExitStatus(
        EXIT_HOSTKEY,
        "host-key",
        "the bastion's host key does not match the pinned one",
        "`sshtun up` after the bastion's host key changed",
        final=True,
    ),
    ExitStatus(
        EXIT_PERMISSION,
        "refused",
        "the bastion refused the agent's key or a forward: retrying will not help",
        "`sshtun up` with a key the access file does not list",
        final=True,
    ),
    ExitStatus(
        EXIT_KEYS,
        "keys",
        "a key file cannot be read or written, or a key rotation step failed (the old key "
        "keeps working)",
        "`sshtun keys gen KEY` when KEY exists",
        final=True,
    ),
    ExitStatus(
        EXIT_CHECKS_FAILED,
        "checks-failed",
        "`sshtun doctor` ran and a check failed (warnings alone exit 0)",
        "`sshtun doctor` with sshd's PasswordAuthentication yes",
    ),
    ExitStatus(
        EXIT_UNSAFE,
        "unsafe",
        "a local admin socket, its directory or the process behind it cannot be trusted",
        "`sshtun status` when the socket's directory is group-writable",
    ),
    ExitStatus(
        EXIT_UNPINNED,
        "unpinned",
        "`sshtun ssh-config` could not pin every hop; what it could pin is written",
        "`sshtun ssh-config` while the bastion is down",
    ),
    ExitStatus(
        EXIT_FORCED,
        "forced",
        "a service stopped at once on a second SIGINT/SIGTERM, without draining",
        "Ctrl-C twice on `sshtun bastion`",
    ),
)


class SshtunError(Exception):
    """Base of every error sshtun reports to a person."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(SshtunError):
    """The command line is wrong (a bad option value, a named file that does not exist):
    the same status as the usage errors click finds itself, whatever the command."""

    exit_code = EXIT_USAGE


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


class ForcedStop(SshtunError):
    """A second SIGINT/SIGTERM during shutdown: sessions were cut without draining."""

    exit_code = EXIT_FORCED


class UnpinnedHop(SshtunError):
    """A hop of ``ssh -J`` whose host key could not be read and verified."""

    exit_code = EXIT_UNPINNED
