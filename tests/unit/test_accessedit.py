"""Access-file edits for key rotation (sshtunnel_mgr/core/accessedit.py), as tables."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import asyncssh
import pytest

from sshtunnel_mgr.core.access import fingerprint, parse_access
from sshtunnel_mgr.core.accessedit import (
    bound_expiry,
    enrol_successor,
    parse_public_line,
    render_options,
    retire_predecessor,
    unenrol_successor,
)
from sshtunnel_mgr.core.errors import RotationError

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
UNTIL = NOW + timedelta(days=1)


def _pub(kind: str = "ssh-ed25519", **kw: object) -> tuple[str, str]:
    key = asyncssh.generate_private_key(kind, **kw)  # type: ignore[arg-type]
    line = key.export_public_key("openssh").decode().split()
    return f"{line[0]} {line[1]}", fingerprint(key.public_data)


OLD, OLD_FP = _pub()
NEW, NEW_FP = _pub()
OTHER, OTHER_FP = _pub()
CLIENT, CLIENT_FP = _pub()

ACCESS = (
    "# agents\n"
    f'permitlisten="homebox:22,web:80",from="127.0.0.1" {OLD} agent@home\n'
    f'permitopen="*:22" {CLIENT} alice\n'
)


def entries(text: str) -> dict[str, object]:
    return {e.fingerprint: e for e in parse_access(text).entries}


def test_enrol_adds_successor_with_same_permissions_and_bounds_old_key() -> None:
    result = enrol_successor(ACCESS, OLD_FP, NEW + " agent@home-2", UNTIL)
    assert result.changed and result.new_fingerprint == NEW_FP
    lines = result.text.splitlines()
    assert lines[0] == "# agents"  # comments and order kept
    assert lines[3].endswith("alice")  # the other key's line untouched
    assert lines[3] == ACCESS.splitlines()[2]
    by_fp = {e.fingerprint: e for e in parse_access(result.text).entries}
    old, new = by_fp[OLD_FP], by_fp[NEW_FP]
    assert old.expiry == UNTIL
    assert new.expiry is None  # the old key had none: the successor keeps that
    assert new.permit_listen == old.permit_listen and new.from_patterns == ("127.0.0.1",)
    assert new.rotated_from == OLD_FP and new.comment == "agent@home-2"
    assert result.old_expiry == UNTIL


def test_enrol_is_idempotent() -> None:
    first = enrol_successor(ACCESS, OLD_FP, NEW, UNTIL)
    again = enrol_successor(first.text, OLD_FP, NEW, UNTIL + timedelta(hours=1))
    assert not again.changed and again.text == first.text


def test_enrol_keeps_an_earlier_expiry_and_copies_it_to_the_successor() -> None:
    text = f'permitlisten="homebox:22",expiry-time="20260601130000Z" {OLD} a\n'
    result = enrol_successor(text, OLD_FP, NEW, UNTIL)
    by_fp = {e.fingerprint: e for e in parse_access(result.text).entries}
    soon = datetime(2026, 6, 1, 13, 0, tzinfo=UTC)
    assert by_fp[OLD_FP].expiry == soon and by_fp[NEW_FP].expiry == soon


@pytest.mark.parametrize(
    ("text", "requester", "new", "message"),
    [
        (ACCESS, OLD_FP, OLD, "is the key being rotated"),
        (ACCESS, OTHER_FP, NEW, f"key {OTHER_FP} is not in the access file"),
        (ACCESS, OLD_FP, CLIENT, "already in the access file (not as the successor"),
        (ACCESS, OLD_FP, "ssh-ed25519 !!!", "malformed"),
        (ACCESS, OLD_FP, "hello", "not an OpenSSH public key line"),
        (ACCESS, OLD_FP, _pub("ssh-rsa", key_size=2048)[0], "RSA key of 2048 bits"),
        (ACCESS, OLD_FP, _pub("ecdsa-sha2-nistp256")[0], "use ssh-ed25519"),
    ],
)
def test_enrol_refusals(text: str, requester: str, new: str, message: str) -> None:
    with pytest.raises(RotationError) as info:
        enrol_successor(text, requester, new, UNTIL)
    assert message in info.value.message


def test_one_successor_at_a_time_and_no_chains_while_the_predecessor_lives() -> None:
    first = enrol_successor(ACCESS, OLD_FP, NEW, UNTIL).text
    with pytest.raises(RotationError, match="already has a successor enrolled"):
        enrol_successor(first, OLD_FP, OTHER, UNTIL)
    with pytest.raises(RotationError, match="finish that rotation first"):
        enrol_successor(first, NEW_FP, OTHER, UNTIL)


def test_unenrol_restores_the_old_expiry_and_removes_the_successor() -> None:
    enrolled = enrol_successor(ACCESS, OLD_FP, NEW, UNTIL).text
    text, removed = unenrol_successor(enrolled, OLD_FP)
    assert removed == NEW_FP
    assert text == ACCESS  # byte for byte what it was before the rotation
    assert unenrol_successor(text, OLD_FP) == (text, "")


def test_bound_expiry_and_render() -> None:
    line = f'permitlisten="a:22",sshtun-note="say \\"hi\\"" {OLD} c'
    bounded = bound_expiry(line, UNTIL)
    assert bounded.startswith('permitlisten="a:22",sshtun-note="say \\"hi\\"",expiry-time=')
    assert parse_access(bounded).entries[0].note == 'say "hi"'
    assert render_options([("restrict", None), ("from", "1.2.3.4")]) == 'restrict,from="1.2.3.4"'


def test_parse_public_line_accepts_rsa_3072() -> None:
    line, fp = _pub("ssh-rsa", key_size=3072)
    kind, blob, comment = parse_public_line(line + " me")
    assert kind == "ssh-rsa" and fingerprint(blob) == fp and comment == "me"
    assert base64.b64encode(blob).decode() == line.split()[1]


def test_finish_removes_the_predecessor_and_the_mark() -> None:
    enrolled = enrol_successor(ACCESS, OLD_FP, NEW + " agent@home", UNTIL).text
    text, retired = retire_predecessor(enrolled, NEW_FP)
    assert retired == OLD_FP
    assert text == ACCESS.replace(OLD, NEW)  # the successor took the old line's place
    assert retire_predecessor(text, NEW_FP) == (text, "")  # a rerun is a no-op
    with pytest.raises(RotationError, match="not in the access file"):
        retire_predecessor(text, OLD_FP)
    # the finished successor may rotate again
    assert enrol_successor(text, NEW_FP, OTHER, UNTIL).changed
