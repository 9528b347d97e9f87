"""What ``sshtun ssh-config`` writes, as pure text: the ``Host`` blocks a client needs to
reach published names, the known_hosts lines that pin each hop, and the idempotent merge
of the blocks into the user's ssh config (nothing of theirs is replaced). Merging the
known_hosts lines into the user's file is ``core.knownhosts.merge_known_hosts``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sshtunnel_mgr.core.addrset import is_ip_literal
from sshtunnel_mgr.core.knownhosts import host_pattern

BASTION_ALIAS = "sshtun-bastion"
BLOCK_BEGIN = "# BEGIN sshtun ssh-config"
BLOCK_END = "# END sshtun ssh-config"


@dataclass(frozen=True)
class Unpinned:
    """A hop whose key could not be read: which one, what happened, what to do."""

    hop: str
    reason: str
    fix: str


@dataclass
class Plan:
    """What one run found: the lines to pin, the names to configure, what is missing."""

    header: list[str]
    lines: list[str]
    names: list[tuple[str, int]]
    unpinned: list[Unpinned] = field(default_factory=list)


@dataclass(frozen=True)
class ClientSettings:
    bastion_host: str
    bastion_port: int
    # None: the lines go to the user's own known_hosts (no UserKnownHostsFile line)
    known_hosts: Path | None
    bastion_user: str = "sshtun"
    user: str | None = None
    identity: Path | None = None
    alias: str = BASTION_ALIAS


def known_hosts_line(host: str, port: int, public_key: str) -> str:
    """The line that pins ``host:port``'s key, as OpenSSH looks it up."""
    key = " ".join(public_key.split()[:2])
    return f"{host_pattern(host, port)} {key}"


def _common(s: ClientSettings) -> list[str]:
    lines = [f"    UserKnownHostsFile {s.known_hosts}"] if s.known_hosts is not None else []
    lines.append("    StrictHostKeyChecking yes")
    if s.identity is not None:
        lines += [f"    IdentityFile {s.identity}", "    IdentitiesOnly yes"]
    return lines


def _by_name(host: str) -> list[str]:
    """For a bastion given by name (several bastions may stand behind it): ssh tries each
    address in turn; a short connect timeout moves on from one that drops packets."""
    if is_ip_literal(host):
        return []
    return [
        "    # a name: ssh tries each of its addresses in turn (every bastion behind it)",
        "    ConnectTimeout 10",
    ]


def render(
    settings: ClientSettings,
    names: Iterable[tuple[str, int]],
    comments: Sequence[str] = (),
    unpinned: Iterable[tuple[str, int]] = (),
) -> str:
    """A ``Host`` block for the bastion and one per published name (or name pattern);
    ``comments`` head it, a name in ``unpinned`` is marked as such."""
    s = settings
    missing = set(unpinned)
    out = [f"# {c}".rstrip() for c in comments]
    out += [
        f"Host {s.alias}",
        f"    HostName {s.bastion_host}",
        f"    Port {s.bastion_port}",
        f"    User {s.bastion_user}",
        *_by_name(s.bastion_host),
        "    # learn a rotated bastion host key (sshtun keys rotate --host-key), no prompt",
        "    UpdateHostKeys yes",
        *_common(s),
    ]
    for name, port in sorted(set(names)):
        if name == "*":
            continue
        out.append("")
        if (name, port) in missing:
            out.append(f"# NOT PINNED yet: no known_hosts line for {host_pattern(name, port)}")
        out += [
            f"Host {name}",
            "    HostName %h" if "*" in name or "?" in name else f"    HostName {name}",
            f"    Port {port}",
            f"    ProxyJump {s.alias}",
        ]
        if s.user:
            out.append(f"    User {s.user}")
        out += _common(s)
    return "\n".join(out) + "\n"


def names_from_patterns(patterns: Sequence[tuple[str, int | None]]) -> list[tuple[str, int]]:
    """Names a bastion's access file lets agents publish (port * becomes 22)."""
    return [(host, port or 22) for host, port in patterns]


def merge_config_block(text: str, block: str, tag: str) -> str:
    """``text`` (an ssh config) with ``block`` between ``# BEGIN/END sshtun ssh-config
    TAG`` lines: the old block of that tag replaced in place, else inserted before the
    first ``Host``/``Match`` line (or appended). Everything else is kept byte for byte."""
    begin, end = f"{BLOCK_BEGIN} {tag}", f"{BLOCK_END} {tag}"
    wrapped = f"{begin}\n{block.rstrip()}\n{end}\n"
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == begin]
    if starts:
        first = starts[0]
        ends = [i for i in range(first, len(lines)) if lines[i].rstrip("\n") == end]
        if ends:
            return "".join(lines[:first]) + wrapped + "".join(lines[ends[0] + 1 :])
    # OpenSSH takes the first value it finds for an option: put the block before the
    # first `Host`/`Match` line, so a `Host *` of the user's cannot override it, while
    # the user's global options (before any Host line) stay global.
    for i, line in enumerate(lines):
        if line.split()[:1] and line.split()[0].lower() in ("host", "match"):
            return "".join(lines[:i]) + wrapped + "\n" + "".join(lines[i:])
    if not text:
        return wrapped
    sep = "" if text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    return text + sep + wrapped
