"""The bastion's access file: who may connect, and what each key may publish or reach.

The file uses OpenSSH's ``authorized_keys`` syntax, one key a line::

    permitlisten="homebox:22",expiry-time="20271231Z" ssh-ed25519 AAAA... agent@home
    permitopen="*.home.example.com:22",from="192.0.2.0/24" ssh-ed25519 AAAA... alice

``permitlisten`` lists the names an agent key may publish, ``permitopen`` the names a client
key may reach (patterns allowed), ``expiry-time`` bounds a key's life and ``from`` its source
addresses (IP patterns and CIDR only; names are never resolved). This module is pure: it
parses text and answers questions; it never touches a socket.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sshtunnel_mgr.core.addrmatch import match_from, parse_pattern
from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.core.names import HostPortPattern, InvalidName
from sshtunnel_mgr.core.policy import key_refusal

KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
# Set by the bastion on a key enrolled by ``sshtun keys rotate``: its predecessor's fingerprint.
ROTATED_FROM = "sshtun-rotated-from"
# Options that take a value, and flags. Anything else makes the line an error: a typo in a
# security file must never be silently ignored.
VALUE_OPTIONS = frozenset(
    {"permitlisten", "permitopen", "expiry-time", "from", "sshtun-note", ROTATED_FROM}
)
FLAG_OPTIONS = frozenset(
    {
        "restrict",
        "port-forwarding",
        "no-port-forwarding",
        "no-pty",
        "no-agent-forwarding",
        "no-x11-forwarding",
        "no-user-rc",
    }
)


_KEY_TYPE_SHAPE = re.compile(r"(ssh|ecdsa|sk|rsa|x509v3)-[a-z0-9@.-]+")


@dataclass(frozen=True)
class Decision:
    """The answer to an access question, with the reason that goes in the log."""

    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True)
class AccessEntry:
    key_type: str
    key_blob: bytes
    comment: str
    line: int
    permit_listen: tuple[HostPortPattern, ...] = ()
    permit_open: tuple[HostPortPattern, ...] = ()
    expiry: datetime | None = None
    from_patterns: tuple[str, ...] = ()
    no_port_forwarding: bool = False
    note: str = ""
    rotated_from: str = ""
    options: tuple[tuple[str, str | None], ...] = field(default=(), compare=False)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key_blob)

    @property
    def label(self) -> str:
        """How the key is named in logs: its fingerprint and comment."""
        return f"{self.fingerprint} ({self.comment})" if self.comment else self.fingerprint

    def is_expired(self, now: datetime) -> bool:
        return self.expiry is not None and now >= self.expiry

    def may_publish(self, name: str, port: int) -> Decision:
        if self.no_port_forwarding:
            return Decision(False, f"key {self.label} has no-port-forwarding")
        if not self.permit_listen:
            return Decision(False, f"key {self.label} has no permitlisten (it may not publish)")
        for pattern in self.permit_listen:
            if pattern.matches(name, port):
                return Decision(True, f"permitlisten={pattern} allows {name}:{port}")
        allowed = ",".join(str(p) for p in self.permit_listen)
        return Decision(False, f"key {self.label} may publish only {allowed}, not {name}:{port}")

    def may_reach(self, name: str, port: int) -> Decision:
        if self.no_port_forwarding:
            return Decision(False, f"key {self.label} has no-port-forwarding")
        if not self.permit_open:
            return Decision(False, f"key {self.label} has no permitopen (it may not reach names)")
        for pattern in self.permit_open:
            if pattern.matches(name, port):
                return Decision(True, f"permitopen={pattern} allows {name}:{port}")
        allowed = ",".join(str(p) for p in self.permit_open)
        return Decision(False, f"key {self.label} may reach only {allowed}, not {name}:{port}")


@dataclass(frozen=True)
class AccessPolicy:
    """All entries of one access file, indexed by key blob."""

    entries: tuple[AccessEntry, ...]
    source: str = "<access>"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_blob", {e.key_blob: e for e in self.entries})

    def find(self, key_blob: bytes) -> AccessEntry | None:
        by_blob: dict[bytes, AccessEntry] = self._by_blob  # type: ignore[attr-defined]
        return by_blob.get(key_blob)

    def authenticate(self, key_blob: bytes, source_ip: str, now: datetime) -> Decision:
        """May this key log in from this address now? (before any signature check)"""
        entry = self.find(key_blob)
        if entry is None:
            return Decision(False, f"unknown key {fingerprint(key_blob)}")
        if entry.is_expired(now):
            assert entry.expiry is not None
            return Decision(
                False, f"key {entry.label} expired at {entry.expiry.isoformat(timespec='seconds')}"
            )
        if entry.from_patterns and not match_from(entry.from_patterns, source_ip):
            return Decision(
                False,
                f"key {entry.label} not allowed from {source_ip} "
                f"(from={','.join(entry.from_patterns)})",
            )
        if not (entry.permit_listen or entry.permit_open):
            return Decision(False, f"key {entry.label} has neither permitlisten nor permitopen")
        return Decision(True, f"key {entry.label} accepted from {source_ip}")


def fingerprint(key_blob: bytes) -> str:
    """SHA256 fingerprint as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(key_blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_expiry(text: str) -> datetime:
    """``expiry-time`` as OpenSSH reads it: YYYYMMDD[HHMM[SS]], with ``Z`` for UTC."""
    utc = text.endswith(("Z", "z"))
    digits = text[:-1] if utc else text
    formats = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
    fmt = formats.get(len(digits))
    if fmt is None or not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"expiry-time {text!r} is not YYYYMMDD[HHMM[SS]][Z]")
    try:
        stamp = datetime.strptime(digits, fmt)
    except ValueError as exc:
        raise ValueError(f"expiry-time {text!r}: {exc}") from None
    if utc:
        return stamp.replace(tzinfo=UTC)
    return stamp.astimezone()  # local time, as OpenSSH does


def split_options(text: str) -> tuple[list[tuple[str, str | None]], str]:
    """Split the leading option list off a line; return (options, rest of line)."""
    options: list[tuple[str, str | None]] = []
    i, n = 0, len(text)
    while i < n:
        start = i
        while i < n and text[i] not in ',= \t"':
            i += 1
        name = text[start:i].lower()
        if not name:
            raise ValueError("empty option")
        value: str | None = None
        if i < n and text[i] == "=":
            i += 1
            if i >= n or text[i] != '"':
                raise ValueError(f"option {name} needs a double-quoted value")
            i += 1
            chars: list[str] = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n and text[i + 1] == '"':
                    i += 1
                chars.append(text[i])
                i += 1
            if i >= n:
                raise ValueError(f"option {name}: missing closing quote")
            i += 1
            value = "".join(chars)
        options.append((name, value))
        if i < n and text[i] == ",":
            i += 1
            continue
        if i < n and text[i] in " \t":
            return options, text[i:].strip()
        raise ValueError("options must be followed by a key")
    raise ValueError("options must be followed by a key")


# How many SSH strings (or mpints) follow the type name in each key type's public blob.
_KEY_FIELDS = {
    "ssh-ed25519": 1,  # the 32-byte key
    "ssh-rsa": 2,  # e, n
    "ecdsa-sha2-nistp256": 2,  # curve name, point
    "ecdsa-sha2-nistp384": 2,
    "ecdsa-sha2-nistp521": 2,
    "sk-ssh-ed25519@openssh.com": 2,  # key, application
    "sk-ecdsa-sha2-nistp256@openssh.com": 3,  # curve name, point, application
}


def _ssh_strings(blob: bytes) -> list[bytes]:
    """Split an SSH wire blob into its length-prefixed strings; ValueError if it does not
    split exactly (a truncated or padded key)."""
    out, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            raise ValueError("key data is truncated")
        (size,) = struct.unpack(">I", blob[at : at + 4])
        if at + 4 + size > len(blob):
            raise ValueError("key data is truncated")
        out.append(blob[at + 4 : at + 4 + size])
        at += 4 + size
    return out


def decode_key(key_type: str, b64: str) -> bytes:
    """The public key blob of an access line, checked whole: its type name matches and it
    holds exactly the fields that key type has (a truncated key is refused, not read as a
    smaller key)."""
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("key data is not valid base64") from None
    fields = _ssh_strings(blob)
    embedded = fields[0].decode("ascii", "replace") if fields else ""
    if embedded != key_type:
        raise ValueError(f"key data is a {embedded!r} key, not {key_type!r}")
    want = _KEY_FIELDS.get(key_type)
    if want is not None and len(fields) - 1 != want:
        raise ValueError(f"key data is not a complete {key_type} key (truncated?)")
    if key_type.endswith("ed25519") and len(fields[1]) != 32:
        raise ValueError("key data is not a complete ed25519 key (truncated?)")
    if key_type == "ssh-rsa" and not fields[2].lstrip(b"\0"):
        raise ValueError("key data is not a complete ssh-rsa key (no modulus)")
    return blob


def parse_line(line: str, lineno: int) -> AccessEntry:
    text = line.strip()
    first = text.split(None, 1)[0]
    if first not in KEY_TYPES and _KEY_TYPE_SHAPE.fullmatch(first):
        raise ValueError(f"unsupported key type {first!r}")
    if first in KEY_TYPES:
        options: list[tuple[str, str | None]] = []
        rest = text
    else:
        options, rest = split_options(text)
    parts = rest.split(None, 2)
    if len(parts) < 2:
        raise ValueError("expected a key type and key data")
    key_type, b64 = parts[0], parts[1]
    comment = parts[2] if len(parts) > 2 else ""
    if key_type not in KEY_TYPES:
        raise ValueError(f"unsupported key type {key_type!r}")
    blob = decode_key(key_type, b64)

    listen: list[HostPortPattern] = []
    opens: list[HostPortPattern] = []
    froms: list[str] = []
    expiry: datetime | None = None
    note = ""
    rotated_from = ""
    no_pf = False
    for name, value in options:
        if name in FLAG_OPTIONS:
            if value is not None:
                raise ValueError(f"option {name} takes no value")
            no_pf = no_pf or name == "no-port-forwarding"
            continue
        if name not in VALUE_OPTIONS:
            raise ValueError(f"unknown option {name!r}")
        if value is None:
            raise ValueError(f'option {name} needs a value, like {name}="..."')
        if name in ("permitlisten", "permitopen"):
            try:
                pats = [HostPortPattern.parse(v) for v in value.split(",") if v.strip()]
            except InvalidName as exc:
                raise ValueError(f"{name}: {exc.message}") from None
            if not pats:
                raise ValueError(f"{name} is empty")
            (listen if name == "permitlisten" else opens).extend(pats)
        elif name == "expiry-time":
            if expiry is not None:
                raise ValueError("expiry-time given twice")
            expiry = parse_expiry(value)
        elif name == "from":
            sources = [p.strip() for p in value.split(",") if p.strip()]
            if not sources:
                raise ValueError("from= is empty (it would allow nothing; remove the line)")
            for source in sources:
                parse_pattern(source)  # fail closed: a pattern that never matches is an error
            froms.extend(sources)
        elif name == ROTATED_FROM:
            if not value.startswith("SHA256:"):
                raise ValueError(f"{ROTATED_FROM} must be a SHA256: fingerprint")
            rotated_from = value
        else:
            note = value
    return AccessEntry(
        key_type=key_type,
        key_blob=blob,
        comment=comment,
        line=lineno,
        permit_listen=tuple(listen),
        permit_open=tuple(opens),
        expiry=expiry,
        from_patterns=tuple(froms),
        no_port_forwarding=no_pf,
        note=note,
        rotated_from=rotated_from,
        options=tuple(options),
    )


def parse_access(text: str, source: str = "<access>") -> AccessPolicy:
    """Parse an access file's text; any bad line is a ConfigError naming file and line."""
    entries: list[AccessEntry] = []
    seen: dict[bytes, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entry = parse_line(line, lineno)
        except ValueError as exc:
            raise ConfigError(
                f"{source}:{lineno}: {exc}",
                hint="access lines are authorized_keys syntax: "
                'permitlisten="name:port" ssh-ed25519 AAAA... comment',
            ) from None
        if entry.key_blob in seen:
            raise ConfigError(
                f"{source}:{lineno}: key {entry.fingerprint} already appears on line "
                f"{seen[entry.key_blob]}",
                hint="give each key one line; list all its names in that line's options",
            )
        seen[entry.key_blob] = lineno
        entries.append(entry)
    return AccessPolicy(tuple(entries), source)


def refused_keys(access: AccessPolicy) -> list[tuple[AccessEntry, str]]:
    """Entries whose key the bastion refuses at login (key type or size), with why."""
    found = [(e, key_refusal(e.key_type, e.key_blob)) for e in access.entries]
    return [(e, why) for e, why in found if why]


def remove_key(text: str, fingerprint_: str, source: str = "<access>") -> tuple[str, list[str]]:
    """The access file's text without the line(s) of one key (comments and the order of
    every other line kept), and the removed lines."""
    kept, removed = [], []
    for lineno, line in enumerate(text.splitlines(keepends=True), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                entry = parse_line(line, lineno)
            except ValueError as exc:
                raise ConfigError(f"{source}:{lineno}: {exc}") from None
            if entry.fingerprint == fingerprint_:
                removed.append(line.rstrip("\n"))
                continue
        kept.append(line)
    return "".join(kept), removed
