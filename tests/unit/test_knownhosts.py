"""known_hosts, parsed once (sshtunnel_mgr/core/knownhosts.py): the line model, OpenSSH's
lookup, the exact naming edits use, and the edits (rotation, merge) as tables."""

from __future__ import annotations

import pytest

from sshtunnel_mgr.core.knownhosts import (
    KnownHostsLine,
    hash_host,
    host_pattern,
    merge_known_hosts,
    parse_known_hosts,
    pinned_keys,
    render_known_hosts,
    update_known_hosts,
)

OLD = "ssh-ed25519 AAAAold"
NEW = "ssh-ed25519 AAAAnew"
SALT = b"0123456789abcdef0123"


def _line(text: str) -> KnownHostsLine:
    (line,) = parse_known_hosts(text)
    return line


# The line model ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "marker", "hosts", "key", "comment", "error"),
    [
        (f"homebox {OLD}", "", "homebox", OLD, "", ""),
        (f"  a,b,[c]:2222 {OLD} alice@laptop  x", "", "a,b,[c]:2222", OLD, "alice@laptop x", ""),
        (f"@revoked * {OLD}", "@revoked", "*", OLD, "", ""),
        (f"@cert-authority *.example.com {OLD}", "@cert-authority", "*.example.com", OLD, "", ""),
        (f"{hash_host('homebox', SALT)} {OLD}", "", hash_host("homebox", SALT), OLD, "", ""),
        # not entries: each says why, and is kept as written
        (f"@bogus homebox {OLD}", "", "", " ", "", "unknown marker '@bogus'"),
        ("homebox ssh-ed25519", "", "", " ", "", "not 'hosts key-type base64'"),
        ("@revoked homebox", "@revoked", "", " ", "", "not 'hosts key-type base64'"),
        (f"|1|junk {OLD}", "", "|1|junk", OLD, "", "a hashed host that is not |1|salt|hash"),
        (f"|1|abc|def {OLD}", "", "|1|abc|def", OLD, "", "a hashed host that is not |1|salt|hash"),
    ],
)
def test_line_fields(
    text: str, marker: str, hosts: str, key: str, comment: str, error: str
) -> None:
    line = _line(text)
    assert (line.marker, line.hosts, line.key, line.comment, line.error) == (
        marker,
        hosts,
        key,
        comment,
        error,
    )
    assert line.text == text and line.number == 1
    assert line.is_entry is (not error)


@pytest.mark.parametrize("text", ["", "   ", "# a comment", "  # indented comment", "#"])
def test_comments_and_blank_lines_are_neither_entries_nor_errors(text: str) -> None:
    lines = parse_known_hosts(text + "\n")
    assert len(lines) == 1 and lines[0].is_comment and not lines[0].is_entry
    assert lines[0].text == text and not lines[0].matches("homebox", 22)


def test_every_line_is_kept_verbatim_and_numbered() -> None:
    text = f"# pinned\n\n  homebox {OLD}  c\ngarbage\n@bogus x {OLD}\n|1|x|y {OLD}\n"
    lines = parse_known_hosts(text)
    assert [line.number for line in lines] == [1, 2, 3, 4, 5, 6]
    assert render_known_hosts(lines) == text
    assert [n.number for n in lines if n.error] == [4, 5, 6]
    assert render_known_hosts([]) == ""


# OpenSSH's lookup ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("hosts", "host", "port", "matches"),
    [
        ("[bastion.example.com]:2222", "bastion.example.com", 2222, True),
        ("[bastion.example.com]:2222", "bastion.example.com", 22, False),
        ("bastion.example.com", "bastion.example.com", 22, True),
        ("bastion.example.com", "bastion.example.com", 2222, False),
        ("BASTION.example.com", "bastion.example.com", 22, True),
        ("bastion.example.com", "BASTION.example.com", 22, True),
        ("other,bastion.example.com", "bastion.example.com", 22, True),
        ("*.example.com", "bastion.example.com", 22, True),
        ("*.example.com", "example.com", 22, False),
        ("b?stion.example.com", "bastion.example.com", 22, True),
        ("*.example.com,!bastion.example.com", "bastion.example.com", 22, False),
        ("!bastion.example.com,*.example.com", "bastion.example.com", 22, False),
        ("!other.example.com", "bastion.example.com", 22, False),  # negation alone: no match
        ("[127.0.0.1]:*", "127.0.0.1", 2222, True),
        ("[127.0.0.1]:22*", "127.0.0.1", 2222, True),
        ("127.0.0.1", "127.0.0.1", 2222, False),
        ("::1", "::1", 22, True),
        ("[::1]:2222", "::1", 2222, True),
        ("a.b", "axb", 22, False),  # '.' is literal
        (hash_host("[127.0.0.1]:2222", SALT), "127.0.0.1", 2222, True),
        (hash_host("[127.0.0.1]:2222", SALT), "127.0.0.1", 2223, False),
        (hash_host("homebox", SALT), "HomeBox", 22, True),
        ("|1|junk", "127.0.0.1", 22, False),
    ],
)
def test_openssh_lookup(hosts: str, host: str, port: int, matches: bool) -> None:
    assert _line(f"{hosts} {OLD}").matches(host, port) is matches


@pytest.mark.parametrize(
    ("hosts", "pattern", "names"),
    [
        ("homebox", "homebox", True),
        ("HomeBox", "homebox", True),
        ("a,[b]:2222,c", "[b]:2222", True),
        ("[b]:2222", "b", False),
        ("*", "homebox", False),  # a wildcard matches it, but does not name it
        ("home*", "homebox", False),
        ("!homebox", "homebox", False),
        (hash_host("[b]:2222", SALT), "[b]:2222", True),
        (hash_host("[b]:2222", SALT), "b", False),
    ],
)
def test_a_line_names_a_pattern_only_exactly(hosts: str, pattern: str, names: bool) -> None:
    assert _line(f"{hosts} {OLD}").names(pattern) is names


@pytest.mark.parametrize(
    ("host", "port", "pattern"),
    [
        ("bastion.example.com", 22, "bastion.example.com"),
        ("127.0.0.1", 2222, "[127.0.0.1]:2222"),
        ("::1", 22, "::1"),
        ("::1", 2222, "[::1]:2222"),
    ],
)
def test_host_pattern(host: str, port: int, pattern: str) -> None:
    assert host_pattern(host, port) == pattern


# Edits --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "added", "removed", "expected", "counts"),
    [
        (f"[b]:2222 {OLD}\n", [NEW], [], f"[b]:2222 {OLD}\n[b]:2222 {NEW}\n", (1, 0)),
        (f"[b]:2222 {OLD}\n[b]:2222 {NEW}\n", [], [OLD], f"[b]:2222 {NEW}\n", (0, 1)),
        (f"[b]:2222 {OLD}\n", [OLD], [], f"[b]:2222 {OLD}\n", (0, 0)),  # already there
        ("", [NEW], [], f"[b]:2222 {NEW}\n", (1, 0)),
        ("", [], [OLD], "", (0, 0)),
        # other hosts, unreadable hashed lines, markers and comments are never touched
        (
            f"# pinned\nother {OLD}\n|1|abc|def {OLD}\n@revoked [b]:2222 {OLD}\n[b]:2222 {OLD}\n",
            [NEW],
            [OLD],
            f"# pinned\nother {OLD}\n|1|abc|def {OLD}\n@revoked [b]:2222 {OLD}\n[b]:2222 {NEW}\n",
            (1, 1),
        ),
        (f"x,[b]:2222 {OLD} comment\n", [], [OLD], "", (0, 1)),
        # a wildcard line matches [b]:2222 but is not its own: left alone
        (f"[b]:* {OLD}\n", [], [OLD], f"[b]:* {OLD}\n", (0, 0)),
        # a hashed line of [b]:2222 is its own: its key counts as there, and it can go
        (
            f"{hash_host('[b]:2222', SALT)} {OLD}\n",
            [OLD, NEW],
            [],
            f"{hash_host('[b]:2222', SALT)} {OLD}\n[b]:2222 {NEW}\n",
            (1, 0),
        ),
        (f"{hash_host('[b]:2222', SALT)} {OLD}\n", [], [OLD], "", (0, 1)),
    ],
)
def test_update(
    text: str, added: list[str], removed: list[str], expected: str, counts: tuple[int, int]
) -> None:
    new, n_added, n_removed = update_known_hosts(text, "[b]:2222", added, removed)
    assert new == expected and (n_added, n_removed) == counts


@pytest.mark.parametrize(
    ("text", "wanted", "added", "present", "conflicts"),
    [
        ("", [f"homebox {OLD}"], 1, 0, 0),
        (f"homebox {OLD}\n", [f"homebox {OLD}"], 0, 1, 0),
        (f"HOMEBOX {OLD}\n", [f"homebox {OLD}"], 0, 1, 0),
        (f"homebox {OLD}\n", [f"homebox {NEW}"], 0, 0, 1),
        ("homebox ssh-rsa AAAAB3\n", [f"homebox {NEW}"], 1, 0, 0),  # another type: no conflict
        (f"@revoked homebox {OLD}\n", [f"homebox {NEW}"], 1, 0, 0),  # markers are not pins
        (f"home* {OLD}\n", [f"homebox {NEW}"], 1, 0, 0),  # a wildcard is not a pin of it
        (f"{hash_host('homebox', SALT)} {OLD}\n", [f"homebox {NEW}"], 0, 0, 1),
        ("", [f"homebox {OLD}", f"homebox {OLD}"], 1, 0, 0),  # asked twice: added once
    ],
)
def test_merge(text: str, wanted: list[str], added: int, present: int, conflicts: int) -> None:
    merged = merge_known_hosts(text, wanted)
    assert (len(merged.added), len(merged.present), len(merged.conflicts)) == (
        added,
        present,
        conflicts,
    )
    assert merged.text.startswith(text)
    assert merged.text == text + "".join(f"{line}\n" for line in merged.added)


def test_pinned_keys_are_the_plain_lines_that_name_the_pattern() -> None:
    text = (
        f"[b]:2222 {OLD}\n@revoked [b]:2222 {NEW}\n[b]:* ssh-rsa AAAAwild\n"
        f"{hash_host('[b]:2222', SALT)} ssh-rsa AAAAhashed\nother {NEW}\n"
    )
    assert pinned_keys(text, "[b]:2222") == [OLD, "ssh-rsa AAAAhashed"]
    assert pinned_keys(text, "b") == []
