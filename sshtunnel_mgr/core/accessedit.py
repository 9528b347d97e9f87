"""Edits to the access file's *text*: enrol a rotated key beside its predecessor, bound a
key's life, remove a key. Pure: text in, text out; every other line (comments, order,
options) is kept byte for byte. The I/O (lock, atomic write) lives with the callers.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime

from sshtunnel_mgr.core.access import (
    KEY_TYPES,
    ROTATED_FROM,
    AccessEntry,
    decode_key,
    fingerprint,
    parse_line,
    split_options,
)
from sshtunnel_mgr.core.errors import ConfigError, RotationError
from sshtunnel_mgr.core.policy import key_refusal

Options = list[tuple[str, str | None]]


def _is_entry(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


def split_line(line: str) -> tuple[Options, str]:
    """(options, "type base64 [comment]") of one access line."""
    text = line.strip()
    if text.split(None, 1)[0] in KEY_TYPES:
        return [], text
    return split_options(text)


def render_options(options: Options) -> str:
    parts = []
    for name, value in options:
        if value is None:
            parts.append(name)
        else:
            escaped = value.replace('"', '\\"')
            parts.append(f'{name}="{escaped}"')
    return ",".join(parts)


def _render(options: Options, key: str) -> str:
    opts = render_options(options)
    return f"{opts} {key}" if opts else key


def stamp(when: datetime) -> str:
    """``expiry-time`` in UTC, to the second: ``YYYYMMDDHHMMSSZ``."""
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%SZ")


def bound_expiry(line: str, until: datetime) -> str:
    """The line with ``expiry-time`` no later than ``until`` (an earlier one is kept)."""
    entry = parse_line(line, 0)
    if entry.expiry is not None and entry.expiry <= until:
        return line.strip()
    options, key = split_line(line)
    options = [(n, v) for n, v in options if n != "expiry-time"]
    options.append(("expiry-time", stamp(until)))
    return _render(options, key)


@dataclass(frozen=True)
class Enrolment:
    text: str  # the new access file
    changed: bool  # False when a rerun found everything already in place
    new_fingerprint: str
    old_expiry: datetime


def parse_public_line(public: str) -> tuple[str, bytes, str]:
    """``type base64 [comment]`` → (type, blob, comment); weak or odd keys are refused."""
    parts = public.strip().split(None, 2)
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise RotationError("the new key is not an OpenSSH public key line (type base64 comment)")
    try:
        blob = decode_key(parts[0], parts[1])
    except ValueError as exc:
        raise RotationError(f"the new key is malformed: {exc}") from None
    problem = key_refusal(parts[0], blob)
    if problem:
        raise RotationError(f"the new key is refused: {problem}")
    comment = parts[2] if len(parts) > 2 else ""
    if any(c in comment for c in "\r\n\0"):
        raise RotationError("the new key's comment has control characters")
    return parts[0], blob, comment


def _entries(text: str, source: str) -> list[tuple[int, str, AccessEntry]]:
    found = []
    for index, line in enumerate(text.splitlines()):
        if _is_entry(line):
            try:
                found.append((index, line, parse_line(line, index + 1)))
            except ValueError as exc:
                raise ConfigError(f"{source}:{index + 1}: {exc}") from None
    return found


def _find(entries: list[tuple[int, str, AccessEntry]], fp: str) -> tuple[int, str, AccessEntry]:
    for found in entries:
        if found[2].fingerprint == fp:
            return found
    raise RotationError(f"key {fp} is not in the access file")


def _permissions(options: Options) -> Options:
    return [(n, v) for n, v in options if n not in ("expiry-time", ROTATED_FROM)]


def enrol_successor(
    text: str,
    requester: str,
    new_public: str,
    until: datetime,
    source: str = "<access>",
) -> Enrolment:
    """Add ``new_public`` right after the requester's line with exactly the requester's
    permissions and expiry (a rotation never widens or extends anything), marked
    ``sshtun-rotated-from="<requester>"``; bound the requester's life to ``until``.

    A key has at most one successor at a time, so a stolen key cannot mint a family of
    others. Rerunning with the same new key changes nothing more (it is idempotent)."""
    key_type, blob, comment = parse_public_line(new_public)
    new_fp = fingerprint(blob)
    if new_fp == requester:
        raise RotationError("the new key is the key being rotated")
    lines = text.splitlines()
    entries = _entries(text, source)
    index, old_line, old_entry = _find(entries, requester)
    if old_entry.rotated_from and any(e.fingerprint == old_entry.rotated_from for *_, e in entries):
        raise RotationError(
            f"key {requester} is itself a successor whose predecessor "
            f"{old_entry.rotated_from} is still enrolled; finish that rotation first"
        )
    old_options, _ = split_line(old_line)
    bounded = bound_expiry(old_line, until)
    old_expiry = parse_line(bounded, 0).expiry
    assert old_expiry is not None
    for _, line, entry in entries:
        if entry.fingerprint == new_fp:
            their_options, _ = split_line(line)
            if entry.rotated_from != requester or _permissions(their_options) != _permissions(
                old_options
            ):
                raise RotationError(
                    f"key {new_fp} is already in the access file (not as the successor of "
                    f"{requester}); refusing to change it"
                )
            lines[index] = bounded
            return Enrolment(_join(lines, text), bounded != old_line.strip(), new_fp, old_expiry)
        if entry.rotated_from == requester:
            raise RotationError(
                f"key {requester} already has a successor enrolled ({entry.fingerprint}); "
                "finish or undo that rotation first"
            )
    b64 = base64.b64encode(blob).decode()
    key = " ".join(x for x in (key_type, b64, comment) if x)
    new_line = _render(
        [*_permissions(old_options), *_expiry_of(old_options), (ROTATED_FROM, requester)], key
    )
    lines[index : index + 1] = [bounded, new_line]
    return Enrolment(_join(lines, text), True, new_fp, old_expiry)


def _expiry_of(options: Options) -> Options:
    return [(n, v) for n, v in options if n == "expiry-time"]


def unenrol_successor(text: str, requester: str, source: str = "<access>") -> tuple[str, str]:
    """Undo ``enrol_successor``: remove the requester's successor and give the requester
    back the expiry it had before (the successor carries a copy). Returns (text, the
    removed fingerprint or "" when there was none)."""
    lines = text.splitlines()
    entries = _entries(text, source)
    successors = [(i, line, e) for i, line, e in entries if e.rotated_from == requester]
    index, old_line, _ = _find(entries, requester)
    if not successors:
        return text, ""
    s_index, s_line, s_entry = successors[0]
    options, key = split_line(old_line)
    kept = [(n, v) for n, v in options if n != "expiry-time"]
    restored = _render([*kept, *_expiry_of(split_line(s_line)[0])], key)
    lines[index] = restored
    del lines[s_index]
    return _join(lines, text), s_entry.fingerprint


def retire_predecessor(text: str, successor: str, source: str = "<access>") -> tuple[str, str]:
    """Finish a rotation: remove the successor's predecessor and drop the successor's
    ``sshtun-rotated-from`` mark. Returns (text, the removed fingerprint or "")."""
    lines = text.splitlines()
    entries = _entries(text, source)
    index, line, entry = _find(entries, successor)
    if not entry.rotated_from:
        return text, ""
    options, key = split_line(line)
    lines[index] = _render([(n, v) for n, v in options if n != ROTATED_FROM], key)
    gone = {i for i, _, e in entries if e.fingerprint == entry.rotated_from}
    lines = [line for i, line in enumerate(lines) if i not in gone]
    return _join(lines, text), entry.rotated_from if gone else ""


def _join(lines: list[str], original: str) -> str:
    return "\n".join(lines) + ("\n" if original.endswith("\n") or not original else "")
