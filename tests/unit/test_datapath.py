"""sshcompat/datapath.py's AEAD glue against asyncssh's own encryption objects, packet by
packet: the same bytes out, the same plaintext back, a bad tag refused, and the cipher
state shared (stock and tuned calls can take turns on one object, as they do right after
a key exchange). The receive feeder is exercised on real connections in
tests/integration/test_datapath_wire.py."""

from __future__ import annotations

import os
import random

import pytest
from asyncssh.encryption import get_encryption

from sshtunnel_mgr import sshcompat
from sshtunnel_mgr.sshcompat import datapath

CIPHERS = {  # name: (key bytes, iv bytes)
    b"aes128-gcm@openssh.com": (16, 12),
    b"aes256-gcm@openssh.com": (32, 12),
    b"chacha20-poly1305@openssh.com": (64, 0),
}


def _pair(name: bytes) -> tuple[object, object]:
    key_len, iv_len = CIPHERS[name]
    key, iv = os.urandom(key_len), os.urandom(iv_len)
    return get_encryption(name, key, iv), get_encryption(name, key, iv)


def _packet(rng: random.Random, size: int) -> tuple[bytes, bytes]:
    body = rng.randbytes(size)
    return len(body).to_bytes(4, "big"), body


def test_checks_pass_on_the_installed_asyncssh() -> None:
    assert sshcompat.check("aead_glue") == ""
    assert sshcompat.check("recv_feed") == ""


@pytest.mark.parametrize("name", list(CIPHERS))
def test_glue_encrypts_as_asyncssh_does(name: bytes) -> None:
    stock, tuned = _pair(name)
    assert datapath.tune_encryption(tuned)
    assert not datapath.tune_encryption(tuned)  # once per object
    rng = random.Random(name)
    for seq, size in enumerate([16, 32, 1024, 32768 + 12, 5, 65536]):
        header, body = _packet(rng, size)
        want = b"".join(stock.encrypt_packet(seq, header, body))  # type: ignore[attr-defined]
        got = b"".join(tuned.encrypt_packet(seq, header, body))  # type: ignore[attr-defined]
        assert got == want


@pytest.mark.parametrize("name", list(CIPHERS))
def test_glue_decrypts_what_asyncssh_sent_and_refuses_a_bad_tag(name: bytes) -> None:
    sender, _ = _pair(name)
    key_len, iv_len = CIPHERS[name]
    rng = random.Random(1)
    for tune in (False, True):
        key, iv = os.urandom(key_len), os.urandom(iv_len)
        sender, receiver = get_encryption(name, key, iv), get_encryption(name, key, iv)
        if tune:
            datapath.tune_encryption(receiver)
        for seq in range(4):
            header, body = _packet(rng, rng.choice([12, 4000, 32768]))
            wire = b"".join(sender.encrypt_packet(seq, header, body))  # type: ignore[attr-defined]
            first, mac = wire[:16], wire[-16:]
            rest = wire[16:-16]
            if seq == 2:  # a flipped bit in the tag: refused, and the state moves on
                bad = bytes([mac[0] ^ 1]) + mac[1:]
                assert receiver.decrypt_packet(seq, first, rest, 4, bad) is None  # type: ignore[attr-defined]
                continue
            assert receiver.decrypt_packet(seq, first, rest, 4, mac) == body  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", [n for n in CIPHERS if b"gcm" in n])
def test_gcm_state_is_shared_with_stock_calls(name: bytes) -> None:
    """A connection's objects run stock until its next read tunes them: the invocation
    counter lives in asyncssh's GCMCipher, so both kinds of call can follow each other."""
    stock, mixed = _pair(name)
    encrypt = type(mixed).encrypt_packet  # asyncssh's own method
    rng = random.Random(2)
    for seq in range(6):
        header, body = _packet(rng, 100 + seq)
        want = b"".join(stock.encrypt_packet(seq, header, body))  # type: ignore[attr-defined]
        if seq == 3:
            datapath.tune_encryption(mixed)
        if seq < 3:
            got = b"".join(encrypt(mixed, seq, header, body))
        else:
            got = b"".join(mixed.encrypt_packet(seq, header, body))  # type: ignore[attr-defined]
        assert got == want


def test_other_ciphers_are_left_alone() -> None:
    enc = get_encryption(b"aes128-ctr", os.urandom(16), os.urandom(16), b"hmac-sha2-256", b"k" * 32)
    assert not datapath.tune_encryption(enc)
    assert "encrypt_packet" not in vars(enc)
    assert not datapath.tune_encryption(None)


@pytest.mark.parametrize("name", list(CIPHERS))
def test_seal_sends_what_asyncssh_would_send(name: bytes) -> None:
    """``_sshtun_seal`` (sendfast.py): header, ciphertext and tag in the buffer sent, the
    same bytes as asyncssh's ``encrypt_packet`` joined (GCM: ``encrypt_into``)."""
    stock, tuned = _pair(name)
    datapath.tune_encryption(tuned)
    rng = random.Random(7)
    for seq, size in enumerate([16, 4000, 131072 + 12, 32]):
        header, body = _packet(rng, size)
        want = b"".join(stock.encrypt_packet(seq, header, body))  # type: ignore[attr-defined]
        assert bytes(tuned._sshtun_seal(seq, header, body)) == want  # type: ignore[attr-defined]


def test_open_takes_a_whole_gcm_packet_and_moves_the_counter_only_when_committed() -> None:
    """``_sshtun_open`` (recvfast.py): a whole packet decrypted from views of a read; the
    counter moves on only on ``commit``, so a packet left to asyncssh decrypts there."""
    name = b"aes128-gcm@openssh.com"
    sender, receiver = _pair(name)
    datapath.tune_encryption(receiver)
    rng = random.Random(8)
    packets = [_packet(rng, size) for size in (32, 4000, 16)]
    wires = [
        b"".join(sender.encrypt_packet(seq, h, b))  # type: ignore[attr-defined]
        for seq, (h, b) in enumerate(packets)
    ]
    view = memoryview(wires[0])
    opened = receiver._sshtun_open(view[:4], view[4:])  # type: ignore[attr-defined]
    assert opened is not None and opened[0] == packets[0][1]
    opened[1]()  # taken: the next packet's counter
    view = memoryview(wires[1])
    opened = receiver._sshtun_open(view[:4], view[4:])  # type: ignore[attr-defined]
    assert opened is not None and opened[0] == packets[1][1]
    # not committed: asyncssh's own decrypt of the same packet still works
    wire = wires[1]
    got = receiver.decrypt_packet(1, wire[:16], wire[16:-16], 4, wire[-16:])  # type: ignore[attr-defined]
    assert got == packets[1][1]
    bad = bytearray(wires[2])
    bad[-1] ^= 1
    view = memoryview(bytes(bad))
    assert receiver._sshtun_open(view[:4], view[4:]) is None  # type: ignore[attr-defined]
    chacha = _pair(b"chacha20-poly1305@openssh.com")[0]
    assert datapath.tune_encryption(chacha)
    assert not hasattr(chacha, "_sshtun_open")  # its length is encrypted: asyncssh's path
