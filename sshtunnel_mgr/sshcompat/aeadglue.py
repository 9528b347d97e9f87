"""The AEAD glue's encryption objects (shim ``aead_glue``; installed per connection by
``datapath.py``).

For ``aes*-gcm@openssh.com`` asyncssh builds a new ``AESGCM`` object per packet and copies
the ciphertext three times to split and re-join the tag; for
``chacha20-poly1305@openssh.com`` it builds three ``Cipher`` objects per packet.
``tune_encryption`` gives one of asyncssh's encryption objects ``encrypt_packet``/
``decrypt_packet`` that keep one ``AESGCM`` per key and join header, ciphertext and tag
once (GCM), and take the Poly1305 key and the payload from one ChaCha20 stream (block 0,
then block 1 on, as RFC 8439 and OpenSSH's PROTOCOL.chacha20poly1305 define it); and two
entries of our own: ``_sshtun_seal`` (header + ciphertext + tag in the buffer sent;
GCM encrypts into it with ``AESGCM.encrypt_into``; sendfast.py) and, for GCM,
``_sshtun_open`` (a whole packet decrypted from a read, the counter moved on only when
the caller takes it; recvfast.py). The cipher state (the GCM invocation counter in
``GCMCipher._iv``) stays where asyncssh keeps it, so asyncssh's own methods and these can
take turns.

asyncssh internals used: ``asyncssh.encryption.GCMEncryption``/``ChachaEncryption`` with
their ``_cipher``, ``GCMCipher._key``/``_iv``, ``ChachaCipher._key``/``_adkey``; checked by
``datapath.AEAD_GLUE``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20
from cryptography.hazmat.primitives.poly1305 import Poly1305

_CTR0 = bytes(8)  # ChaCha20 block counter 0 (little-endian), before OpenSSH's 8-byte nonce
_POLY_BLOCK = bytes(64)  # keystream block 0: its first 32 bytes are the Poly1305 key
_TAG = 16
_INVOCATION = 0xFFFFFFFFFFFFFFFF


def encryption_module() -> Any:
    return importlib.import_module("asyncssh.encryption")


def tune_encryption(enc: object) -> bool:
    """Give one asyncssh encryption object the faster glue if it is GCM or ChaCha20-Poly1305
    (True); any other object (None before the first key exchange, CTR, CBC) is left alone."""
    if enc is None or getattr(enc, "_sshtun_glue", False):
        return False
    mod = encryption_module()
    if type(enc) is mod.GCMEncryption:
        _gcm_glue(enc)
    elif type(enc) is mod.ChachaEncryption:
        _chacha_glue(enc)
    else:
        return False
    enc._sshtun_glue = True  # type: ignore[attr-defined]
    return True


def _gcm_glue(enc: Any) -> None:
    cipher = enc._cipher
    aead = AESGCM(cipher._key)
    encrypt, decrypt = aead.encrypt, aead.decrypt
    encrypt_into = getattr(aead, "encrypt_into", None)  # cryptography >= 45

    def encrypt_packet(seq: int, header: bytes, packet: bytes) -> tuple[bytes, bytes]:
        iv = cipher._iv
        out = encrypt(iv, packet, header)
        cipher._iv = iv[:4] + ((int.from_bytes(iv[4:], "big") + 1) & _INVOCATION).to_bytes(8, "big")
        # asyncssh sends ``packet + mac``: with the tag already joined and an empty mac
        # that is the same object, not one more copy.
        return header + out, b""

    def decrypt_packet(
        seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes
    ) -> bytes | None:
        iv = cipher._iv
        try:
            data: bytes | None = decrypt(
                iv, b"".join((first[header_len:], rest, mac)), first[:header_len]
            )
        except InvalidTag:
            data = None
        cipher._iv = iv[:4] + ((int.from_bytes(iv[4:], "big") + 1) & _INVOCATION).to_bytes(8, "big")
        return data

    def open_packet(
        header: memoryview, body: memoryview
    ) -> tuple[bytes, Callable[[], None]] | None:
        """Decrypt one whole packet (ciphertext and tag) from a read; the counter moves on
        only when the caller ``commit``s (it takes the packet)."""
        iv = cipher._iv
        try:
            plain: bytes = decrypt(iv, body, header)
        except InvalidTag:
            return None

        def commit() -> None:
            cipher._iv = iv[:4] + ((int.from_bytes(iv[4:], "big") + 1) & _INVOCATION).to_bytes(
                8, "big"
            )

        return plain, commit

    enc.encrypt_packet = encrypt_packet
    enc.decrypt_packet = decrypt_packet
    enc._sshtun_open = open_packet
    enc._sshtun_seal = _sealed(encrypt_packet)
    if encrypt_into is None:
        return
    into: Callable[[bytes, bytes, bytes, memoryview], int] = encrypt_into

    def seal(seq: int, header: bytes, packet: bytes) -> bytearray:
        """``header`` + ciphertext + tag, encrypted straight into the buffer sent."""
        iv = cipher._iv
        out = bytearray(len(header) + len(packet) + _TAG)
        out[: len(header)] = header
        into(iv, packet, header, memoryview(out)[len(header) :])
        cipher._iv = iv[:4] + ((int.from_bytes(iv[4:], "big") + 1) & _INVOCATION).to_bytes(8, "big")
        return out

    enc._sshtun_seal = seal


def _chacha_glue(enc: Any) -> None:
    cipher = enc._cipher
    key, adkey = cipher._key, cipher._adkey

    def encrypt_packet(seq: int, header: bytes, packet: bytes) -> tuple[bytes, bytes]:
        nonce = _CTR0 + seq.to_bytes(8, "big")
        hdr = Cipher(ChaCha20(adkey, nonce), None).encryptor().update(header)
        stream = Cipher(ChaCha20(key, nonce), None).encryptor()
        poly = Poly1305(stream.update(_POLY_BLOCK)[:32])
        body = stream.update(packet)  # keystream from block 1 on
        poly.update(hdr)
        poly.update(body)
        return b"".join((hdr, body, poly.finalize())), b""

    def decrypt_packet(
        seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes
    ) -> bytes | None:
        nonce = _CTR0 + seq.to_bytes(8, "big")
        stream = Cipher(ChaCha20(key, nonce), None).encryptor()
        poly = Poly1305(stream.update(_POLY_BLOCK)[:32])
        poly.update(first)  # the encrypted length, then the rest of the packet
        poly.update(rest)
        try:
            poly.verify(mac)
        except InvalidSignature:
            return None
        body = stream.update(first[header_len:] + rest if len(first) > header_len else rest)
        return body

    enc.encrypt_packet = encrypt_packet
    enc.decrypt_packet = decrypt_packet
    enc._sshtun_seal = _sealed(encrypt_packet)


def _sealed(
    encrypt_packet: Callable[[int, bytes, bytes], tuple[bytes, bytes]],
) -> Callable[[int, bytes, bytes], bytes]:
    """``_sshtun_seal`` from a glue ``encrypt_packet`` (which joins the tag already)."""
    return lambda seq, header, packet: encrypt_packet(seq, header, packet)[0]
