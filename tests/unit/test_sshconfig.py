"""The pure text of ``sshtun ssh-config``: known_hosts and ssh config merges that keep what
the user had, and rerun to the same bytes."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

from sshtunnel_mgr.core.knownhosts import merge_known_hosts, pinned_keys
from sshtunnel_mgr.setup import sshconfig

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
RSA = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC"


def _hashed(pattern: str, salt: bytes = b"0123456789abcdefghij") -> str:
    digest = hmac.new(salt, pattern.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def test_known_hosts_lines_are_appended_once_and_others_kept() -> None:
    text = "# mine\nother.example ssh-ed25519 AAAAother\n"
    wanted = [f"[b.example]:2222 {KEY_A}", f"homebox {KEY_B}"]
    first = merge_known_hosts(text, wanted)
    assert first.text == text + "\n".join(wanted) + "\n"
    assert first.added == wanted and not first.conflicts
    again = merge_known_hosts(first.text, wanted)
    assert again.text == first.text and again.added == [] and again.present == wanted


def test_another_key_of_the_same_type_is_a_conflict_never_replaced() -> None:
    text = f"homebox {KEY_A}\n"
    merged = merge_known_hosts(text, [f"homebox {KEY_B}"])
    assert merged.text == text
    assert merged.conflicts == [(f"homebox {KEY_B}", f"homebox {KEY_A}")]
    # A key of another type for the same host is no conflict: both are pinned.
    rsa = merge_known_hosts(f"homebox {RSA}\n", [f"homebox {KEY_B}"])
    assert rsa.added == [f"homebox {KEY_B}"] and not rsa.conflicts


def test_hashed_known_hosts_lines_are_recognised() -> None:
    same = f"{_hashed('homebox')} {KEY_A}\n"
    assert merge_known_hosts(same, [f"homebox {KEY_A}"]).added == []
    assert merge_known_hosts(same, [f"homebox {KEY_B}"]).conflicts
    other = f"{_hashed('otherbox')} {KEY_A}\n"
    assert merge_known_hosts(other, [f"homebox {KEY_A}"]).added
    assert pinned_keys(same, "homebox") == [KEY_A]


def test_missing_final_newline_does_not_glue_lines() -> None:
    merged = merge_known_hosts("a.example ssh-ed25519 AAAA", [f"homebox {KEY_A}"])
    assert merged.text == f"a.example ssh-ed25519 AAAA\nhomebox {KEY_A}\n"


def test_config_block_goes_before_the_users_first_host_and_is_replaced_in_place() -> None:
    user = "ForwardAgent no\n\nHost *\n    User bob\n"
    first = sshconfig.merge_config_block(user, "Host homebox\n    Port 22\n", "b:22")
    assert first == (
        "ForwardAgent no\n\n"
        "# BEGIN sshtun ssh-config b:22\nHost homebox\n    Port 22\n# END sshtun ssh-config b:22\n"
        "\nHost *\n    User bob\n"
    )
    assert sshconfig.merge_config_block(first, "Host homebox\n    Port 22\n", "b:22") == first
    second = sshconfig.merge_config_block(first, "Host homebox\n    Port 2222\n", "b:22")
    assert second == first.replace("Port 22\n", "Port 2222\n")
    other = sshconfig.merge_config_block(second, "Host nas\n", "c:22")
    assert "# BEGIN sshtun ssh-config b:22" in other and "Host nas\n" in other
    assert sshconfig.merge_config_block("", "Host a\n", "t") == (
        "# BEGIN sshtun ssh-config t\nHost a\n# END sshtun ssh-config t\n"
    )


def test_render_marks_unpinned_names_and_omits_the_known_hosts_file_for_stdout() -> None:
    settings = sshconfig.ClientSettings("b.example", 2222, None, user="me")
    text = sshconfig.render(settings, [("homebox", 22), ("nas", 2222)], ["hi"], [("nas", 2222)])
    assert text.startswith("# hi\nHost sshtun-bastion\n    HostName b.example\n    Port 2222\n")
    assert "UserKnownHostsFile" not in text
    assert "# NOT PINNED yet: no known_hosts line for [nas]:2222\nHost nas\n" in text
    pinned = sshconfig.ClientSettings("b.example", 22, Path("/k"))
    assert "    UserKnownHostsFile /k\n" in sshconfig.render(pinned, [("homebox", 22)])
