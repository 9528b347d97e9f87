"""known_hosts, parsed in one place (the format of sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT").

``parse_known_hosts(text)`` gives one ``KnownHostsLine`` per line, each keeping its text as
written, so an edit rewrites only the lines it means to: comments, blank lines, lines for
other hosts and lines it cannot read stay byte for byte. An entry is typed: its marker
(``@cert-authority``/``@revoked``), its host field (a comma list of patterns, or one hashed
``|1|salt|hash`` name), its key and comment. Two ways to ask about a host:

- ``matches(host, port)``: OpenSSH's lookup (``host`` for port 22, else ``[host]:port``;
  hashed names; ``*``/``?`` wildcards; ``!`` negation; case-insensitive);
- ``names(pattern)``: the line names exactly that spelling (``homebox``, ``[b]:2222``), as
  one plain item or as its hash, never through a wildcard: what an edit may touch, as
  OpenSSH's UpdateHostKeys and ``ssh-keygen -R`` do.

The edits: ``update_known_hosts`` (a host key rotation: add the keys a bastion proved,
drop the ones it no longer serves), ``merge_known_hosts`` (append the lines not there yet;
another key already pinned is a conflict, never replaced) and ``pinned_keys``. Pure.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

MARKERS = ("@cert-authority", "@revoked")
HASH_MAGIC = "|1|"


def host_pattern(host: str, port: int) -> str:
    """How known_hosts names ``host:port``: ``host`` for 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def _wildcard(pattern: str) -> re.Pattern[str]:
    """OpenSSH host patterns know only ``*`` and ``?`` (``[`` is literal: ``[host]:port``)."""
    return re.compile(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), re.DOTALL)


def _hash_parts(hosts: str) -> tuple[bytes, bytes] | None:
    """(salt, digest) of a ``|1|salt|hash`` host field, or None if it is not one."""
    try:
        salt_b64, digest_b64 = hosts.removeprefix(HASH_MAGIC).split("|")
        salt = base64.b64decode(salt_b64, validate=True)
        digest = base64.b64decode(digest_b64, validate=True)
    except (ValueError, binascii.Error):
        return None
    return (salt, digest) if salt and len(digest) == hashlib.sha1().digest_size else None


def _digest(salt: bytes, name: str) -> bytes:
    return hmac.new(salt, name.lower().encode(), hashlib.sha1).digest()


def hash_host(name: str, salt: bytes) -> str:
    """``name`` (already ``[host]:port`` for another port) as a hashed host field, as
    ``ssh-keygen -H`` writes it."""
    digest = _digest(salt, name)
    return f"{HASH_MAGIC}{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@dataclass(frozen=True)
class KnownHostsLine:
    """One line of a known_hosts file. Entries have ``key_type``; comments and blank lines
    have neither a key nor an ``error``; a line that is not an entry says why in ``error``."""

    number: int  # from 1
    text: str  # as written, without its newline
    marker: str = ""  # "", "@cert-authority" or "@revoked"
    hosts: str = ""  # the comma-separated patterns, or one |1|salt|hash name
    key_type: str = ""
    key_base64: str = ""
    comment: str = ""
    error: str = ""

    @property
    def is_entry(self) -> bool:
        return bool(self.key_type) and not self.error

    @property
    def is_comment(self) -> bool:
        """A ``#`` comment or a blank line."""
        return not self.key_type and not self.error

    @property
    def hashed(self) -> bool:
        return self.hosts.startswith(HASH_MAGIC)

    @property
    def key(self) -> str:
        """The key as ``type base64`` (how ``public_line`` and ``*.pub`` files spell it)."""
        return f"{self.key_type} {self.key_base64}"

    def _hash_is(self, name: str) -> bool:
        parts = _hash_parts(self.hosts)
        if parts is None:
            return False
        salt, digest = parts
        return hmac.compare_digest(_digest(salt, name), digest)

    def matches(self, host: str, port: int) -> bool:
        """OpenSSH's lookup of ``host:port`` in this line's host field (the marker is the
        caller's to weigh: an ``@revoked`` line matches too)."""
        if not self.is_entry:
            return False
        name = host_pattern(host.lower(), port)
        if self.hashed:
            return self._hash_is(name)
        matched = False
        for pattern in self.hosts.lower().split(","):
            negate = pattern.startswith("!")
            if _wildcard(pattern.removeprefix("!")).fullmatch(name):
                if negate:
                    return False
                matched = True
        return matched

    def names(self, pattern: str) -> bool:
        """Whether the line names ``pattern`` (``homebox``, ``[b]:2222``) itself: one item
        of its list, or its hash; never through a wildcard or a negation."""
        if not self.is_entry:
            return False
        if self.hashed:
            return self._hash_is(pattern)
        return pattern.lower() in self.hosts.lower().split(",")


def _parse_line(number: int, text: str) -> KnownHostsLine:
    fields = text.split()
    if not fields or fields[0].startswith("#"):
        return KnownHostsLine(number, text)
    marker = ""
    if fields[0].startswith("@"):
        marker, fields = fields[0], fields[1:]
        if marker not in MARKERS:
            return KnownHostsLine(number, text, error=f"unknown marker {marker!r}")
    if len(fields) < 3:
        return KnownHostsLine(number, text, marker, error="not 'hosts key-type base64'")
    hosts, key_type, key_base64 = fields[:3]
    error = ""
    if hosts.startswith(HASH_MAGIC) and _hash_parts(hosts) is None:
        error = "a hashed host that is not |1|salt|hash"
    return KnownHostsLine(
        number, text, marker, hosts, key_type, key_base64, " ".join(fields[3:]), error
    )


def parse_known_hosts(text: str) -> list[KnownHostsLine]:
    """Every line of ``text``, in order (entries, comments, blanks and unreadable ones)."""
    return [_parse_line(n, line) for n, line in enumerate(text.splitlines(), start=1)]


def render_known_hosts(lines: Sequence[KnownHostsLine | str]) -> str:
    """The file's text: each line as written (or a new line as given), newline-ended."""
    texts = [line if isinstance(line, str) else line.text for line in lines]
    return "\n".join(texts) + "\n" if texts else ""


def pinned_keys(text: str, pattern: str) -> list[str]:
    """The "type base64" keys that plain (unmarked) lines of ``text`` pin for ``pattern``."""
    return [e.key for e in parse_known_hosts(text) if e.marker == "" and e.names(pattern)]


def update_known_hosts(
    text: str, pattern: str, added: Sequence[str], removed: Sequence[str]
) -> tuple[str, int, int]:
    """A host key rotation, as OpenSSH's UpdateHostKeys does it: plain lines naming
    ``pattern`` (hashed ones too) that pin a key in ``removed`` go; keys in ``added`` that
    no such line pins yet are appended as ``pattern type base64``. ``added``/``removed``
    are "type base64" strings. Returns (text, lines added, lines removed)."""
    gone = {k.split()[1] for k in removed}
    kept: list[KnownHostsLine | str] = []
    present: set[str] = set()
    dropped = 0
    for line in parse_known_hosts(text):
        mine = line.marker == "" and line.names(pattern)
        if mine and line.key_base64 in gone:
            dropped += 1
            continue
        if mine:
            present.add(line.key_base64)
        kept.append(line)
    new = [f"{pattern} {k}" for k in added if k.split()[1] not in present]
    kept += new
    return render_known_hosts(kept), len(new), dropped


@dataclass
class KnownHostsMerge:
    text: str
    added: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    # (wanted line, the line already there that pins another key of the same type)
    conflicts: list[tuple[str, str]] = field(default_factory=list)


def merge_known_hosts(text: str, wanted: Sequence[str]) -> KnownHostsMerge:
    """Append the ``wanted`` lines ("pattern type base64") that are not there yet. A line
    already pinning another key of the same type for that pattern is a conflict and is
    left alone: trust that was given is never replaced here."""
    entries = [e for e in parse_known_hosts(text) if e.marker == ""]
    merged = KnownHostsMerge(text)
    new: list[str] = []
    for line in dict.fromkeys(wanted):
        pattern, key_type, blob = line.split()[:3]
        same = [e for e in entries if e.key_type == key_type and e.names(pattern)]
        if any(e.key_base64 == blob for e in same) or line in new:
            merged.present.append(line)
        elif same:
            merged.conflicts.append((line, same[0].text))
        else:
            new.append(line)
    if new:
        body = text if not text or text.endswith("\n") else text + "\n"
        merged.text = body + "\n".join(new) + "\n"
        merged.added = new
    return merged
