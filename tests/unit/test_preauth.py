"""asyncssh's disconnect reasons said plainly, as a table."""

from __future__ import annotations

import pytest

from sshtunnel_mgr.bastion.preauth import MAX_OFFERED, handshake_reason


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            "No matching MAC algorithm found, sent hmac-sha2-256-etm@openssh.com and "
            "received hmac-sha1",
            "no common MAC algorithm; client offered hmac-sha1",
        ),
        (
            "No matching key exchange algorithm found, sent curve25519-sha256 and received "
            "diffie-hellman-group14-sha1,ext-info-c",
            "no common key exchange algorithm; client offered "
            "diffie-hellman-group14-sha1,ext-info-c",
        ),
        ("Login timeout expired", "Login timeout expired"),
        ("", "closed by the client"),
    ],
)
def test_handshake_reason(text: str, said: str) -> None:
    assert handshake_reason(text) == said


def test_a_long_offer_is_cut() -> None:
    text = "No matching MAC algorithm found, sent x and received " + "a" * 5000
    said = handshake_reason(text)
    assert said.endswith("...") and len(said) < MAX_OFFERED + 80
