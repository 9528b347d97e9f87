"""The users' key policy (pure) and the two asyncssh shims' stock fallbacks, as tables."""

from __future__ import annotations

import asyncio
import struct

import pytest

from sshtunnel_mgr.core import policy
from sshtunnel_mgr.sshcompat import disconnects, sigpolicy


def blob(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def rsa(bits: int) -> bytes:
    return blob(b"ssh-rsa", b"\x01\x00\x01", (1 << (bits - 1) | 1).to_bytes(bits // 8 + 1, "big"))


ED25519 = blob(b"ssh-ed25519", bytes(32))
ECDSA = blob(b"ecdsa-sha2-nistp256", b"nistp256", b"\x04" + bytes(64))


@pytest.mark.parametrize(
    ("key_type", "key", "refused"),
    [
        ("ssh-ed25519", ED25519, ""),
        ("sk-ssh-ed25519@openssh.com", ED25519, ""),
        ("ssh-rsa", rsa(3072), ""),
        ("ssh-rsa", rsa(4096), ""),
        ("ssh-rsa", rsa(3071), "RSA key of 3071 bits (at least 3072 are required)"),
        ("ssh-rsa", rsa(2048), "RSA key of 2048 bits (at least 3072 are required)"),
        ("ssh-rsa", b"", "RSA key of 0 bits (at least 3072 are required)"),
        ("ecdsa-sha2-nistp256", ECDSA, "ecdsa-sha2-nistp256 keys are not accepted; use"),
        ("ecdsa-sha2-nistp521", ECDSA, "ecdsa-sha2-nistp521 keys are not accepted; use"),
        ("sk-ecdsa-sha2-nistp256@openssh.com", ECDSA, "sk-ecdsa-sha2-nistp256@openssh.com"),
        ("ssh-dss", b"", "ssh-dss keys are not accepted"),
    ],
)
def test_key_refusal(key_type: str, key: bytes, refused: str) -> None:
    got = policy.key_refusal(key_type, key)
    assert got.startswith(refused) and bool(got) == bool(refused)


@pytest.mark.parametrize(
    ("algorithm", "refused"),
    [
        ("ssh-ed25519", ""),
        ("sk-ssh-ed25519@openssh.com", ""),
        ("rsa-sha2-256", ""),
        ("rsa-sha2-512", ""),
        ("ssh-rsa", "ssh-rsa signatures (SHA-1) are not accepted"),
        ("ecdsa-sha2-nistp256", "signature algorithm 'ecdsa-sha2-nistp256' is not accepted"),
        ("?", "signature algorithm '?' is not accepted"),
    ],
)
def test_signature_refusal(algorithm: str, refused: str) -> None:
    got = policy.signature_refusal(algorithm)
    assert got.startswith(refused) and bool(got) == bool(refused)


@pytest.mark.parametrize(
    ("signature", "algorithm"),
    [
        (blob(b"rsa-sha2-256", b"sig"), "rsa-sha2-256"),
        (blob(b"ssh-rsa", b"sig"), "ssh-rsa"),
        (b"", ""),
        (b"\x00\x00\x00\x10ssh", ""),  # truncated
        (blob("ssh-é".encode()), ""),  # not ASCII
    ],
)
def test_signature_algorithm(signature: bytes, algorithm: str) -> None:
    assert sigpolicy.signature_algorithm(signature) == algorithm


class StandIn:
    """What the shims wrap on an asyncssh connection, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    async def validate_public_key(
        self, username: str, key_data: bytes, msg: bytes, signature: bytes
    ) -> bool:
        self.calls.append((username, signature))
        return True

    def _send_disconnect(self, code: int, reason: str, lang: str) -> None:
        self.calls.append((code, reason))


def test_sigpolicy_refuses_sha1_passes_sha2_and_queries() -> None:
    conn = StandIn()
    refused: list[tuple[str, str]] = []
    assert sigpolicy.install(conn, lambda user, key, alg, why: refused.append((alg, why)))

    async def run(signature: bytes) -> bool:
        return await conn.validate_public_key("u", ED25519, b"msg" if signature else b"", signature)

    assert asyncio.run(run(blob(b"ssh-rsa", b"x"))) is False
    assert asyncio.run(run(blob(b"rsa-sha2-512", b"x"))) is True
    assert asyncio.run(run(b"")) is True  # a query: the key is judged, not a signature
    assert [alg for alg, _ in refused] == ["ssh-rsa"]
    assert len(conn.calls) == 2  # the refused one never reached asyncssh


def test_shims_fall_back_to_stock_when_the_internal_is_missing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG", logger="sshtunnel_mgr")
    assert not sigpolicy.install(object(), lambda *a: None)
    assert not disconnects.install(object(), lambda *a: None)

    class Sync:
        def validate_public_key(self) -> bool:  # not a coroutine: not wrapped
            return True

    assert not sigpolicy.install(Sync(), lambda *a: None)
    assert "signature algorithms not checked" in caplog.text


def test_disconnects_records_the_reason_sent() -> None:
    conn = StandIn()
    sent: list[tuple[int, str]] = []
    assert disconnects.install(conn, lambda code, reason: sent.append((code, reason)))
    conn._send_disconnect(3, "No matching MAC algorithm found", "")
    assert sent == [(3, "No matching MAC algorithm found")] == conn.calls
