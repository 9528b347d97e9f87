"""The send-path shims (sshtunnel_mgr/sshcompat/sendpath.py) on real connections: bytes arrive
intact in both directions through rekeying, the countermeasure stays for CBC, the packet
log still works when turned on, and a connection the cork cannot apply to (one tunnelled
through another) stays stock. Then real OpenSSH through the tuned bastion and agent."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from asyncssh.logging import SSHLogger

from sshtunnel_mgr.sshcompat.datapath import GLUE_AFTER
from sshtunnel_mgr.sshcompat.sendpath import Tuning, tune_connection
from tests.harness import (
    Keys,
    access_text,
    agent_config,
    bastion_config,
    home_sshd,
    pub_of,
    run_ssh,
    running_agent,
    running_bastion,
    write_ssh_config,
)

MSG_IGNORE, MSG_KEXINIT, MSG_CHANNEL_DATA = 2, 20, 94
MIB = 1 << 20
FULL = Tuning(
    cork=True,
    skip_ignore=True,
    quiet_packet_log=True,
    aead_glue=True,
    recv_feed=True,
    data_packets=True,
)


class Recorder:
    """Tunes a connection, then counts the connection-level packets it receives. With
    ``split``, every read is handed on in pieces of random sizes (1 byte to 40 KiB), so
    the receive feeder (recv_feed) meets packets cut anywhere."""

    def __init__(self, split: random.Random | None = None) -> None:
        self.tuning: list[Tuning] = []
        self.received: Counter[int] = Counter()
        self.slow: Counter[int] = Counter()  # packets sent through asyncssh's send_packet
        self.conns: list[Any] = []
        self._split = split

    def tune(self, conn: Any) -> None:
        self.tuning.append(tune_connection(conn))
        self.conns.append(conn)
        sending = conn.send_packet

        def sent(pkttype: int, *args: bytes, **kwargs: Any) -> None:
            self.slow[pkttype] += 1  # data_packets (sendfast.py) sends data not this way
            sending(pkttype, *args, **kwargs)

        conn.send_packet = sent
        if self._split is not None:
            rng, fed = self._split, conn.data_received

            def pieces(data: bytes, datatype: Any = None) -> None:
                pos = 0
                while pos < len(data):
                    n = rng.choice([1, 3, 16, 17, 100, 4096, 32 * 1024 + 29, 40 * 1024])
                    fed(data[pos : pos + n], datatype)
                    pos += n

            conn.data_received = pieces
        gated = conn.log_received_packet

        def count(pkttype: int, pktid: int | None, packet: Any, note: str = "") -> None:
            self.received[pkttype] += 1
            gated(pkttype, pktid, packet, note)

        conn.log_received_packet = count


class TunedServer(asyncssh.SSHServer):
    def __init__(self, recorder: Recorder, own_port: list[int]) -> None:
        self._recorder, self._own_port = recorder, own_port

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._recorder.tune(conn)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        # Only back to this very server on loopback (for the tunnelled connection).
        return (dest_host, dest_port) == ("127.0.0.1", self._own_port[0])


class TunedClient(asyncssh.SSHClient):
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._recorder.tune(conn)


def payload(size: int) -> bytes:
    return hashlib.shake_256(b"sshtun").digest(size)


async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """``sink``: the sha256 of everything on stdin; ``source N``: N bytes of payload."""
    command = (process.command or "").split()
    if command[:1] == ["sink"]:
        digest = hashlib.sha256()
        while chunk := await process.stdin.read(MIB):
            digest.update(chunk)
        process.stdout.write(digest.hexdigest().encode())
    elif command[:1] == ["source"]:
        process.stdout.write(payload(int(command[1])))
    process.exit(0)


@pytest.fixture
def server_recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client_recorder() -> Recorder:
    return Recorder()


@contextlib.asynccontextmanager
async def _serve(keys: Keys, recorder: Recorder, cipher: str, **opts: Any) -> AsyncIterator[int]:
    own_port: list[int] = [0]
    server = await asyncssh.create_server(
        lambda: TunedServer(recorder, own_port),
        "127.0.0.1",
        0,
        server_host_keys=[str(keys.bastion_host.path)],
        authorized_client_keys=asyncssh.import_authorized_keys(keys.client.public_line),
        process_factory=handle,
        encoding=None,
        encryption_algs=[cipher],
        **opts,
    )
    own_port[0] = server.sockets[0].getsockname()[1]
    try:
        yield own_port[0]
    finally:
        server.close()
        await server.wait_closed()


def _client_opts(keys: Keys, port: int, recorder: Recorder, cipher: str) -> dict[str, Any]:
    host_key = asyncssh.import_public_key(pub_of(keys.bastion_host))
    return dict(
        port=port,
        client_factory=lambda: TunedClient(recorder),
        known_hosts=([host_key], [], []),
        client_keys=[str(keys.client.path)],
        username="tester",
        config=None,
        agent_path=None,
        encryption_algs=[cipher],
    )


async def _round_trip(conn: asyncssh.SSHClientConnection, size: int) -> None:
    data = payload(size)
    up = await conn.run("sink", input=data, encoding=None, check=True)
    assert up.stdout == hashlib.sha256(data).hexdigest().encode()
    down = await conn.run(f"source {size}", encoding=None, check=True)
    assert down.stdout == data


@pytest.mark.parametrize(
    ("cipher", "countermeasure"),
    [
        ("aes128-gcm@openssh.com", False),
        ("chacha20-poly1305@openssh.com", False),
        ("aes128-ctr", False),
        ("aes128-cbc", True),
    ],
)
async def test_tuned_peers_exchange_intact_data_through_rekeying(
    keys: Keys,
    server_recorder: Recorder,
    client_recorder: Recorder,
    cipher: str,
    countermeasure: bool,
) -> None:
    rekey = {"rekey_bytes": "256k"}
    async with _serve(keys, server_recorder, cipher, **rekey) as port:
        opts = _client_opts(keys, port, client_recorder, cipher)
        async with asyncssh.connect("127.0.0.1", **opts, **rekey) as conn:
            assert conn.get_extra_info("send_cipher") == cipher
            await _round_trip(conn, 4 * MIB)
    assert server_recorder.tuning == [FULL] and client_recorder.tuning == [FULL]
    for side in (server_recorder, client_recorder):
        assert side.received[MSG_KEXINIT] >= 4  # the first kex and rekeys every 256 KiB
        if countermeasure:  # CBC: one empty ignore before every packet, as stock asyncssh
            assert side.received[MSG_IGNORE] > 50
        else:
            assert side.received[MSG_IGNORE] == 0


@pytest.mark.parametrize(
    "cipher", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr"]
)
async def test_reads_cut_anywhere_reach_the_parser_intact(keys: Keys, cipher: str) -> None:
    """recv_feed and aead_glue (sshcompat/datapath.py) with every read cut into random
    pieces on both ends, rekeying every 256 KiB: 4 MiB each way arrive intact, and the
    encryption objects of the last key exchange were tuned (AEAD) or left alone (CTR)."""
    server_recorder, client_recorder = Recorder(random.Random(1)), Recorder(random.Random(2))
    rekey = {"rekey_bytes": "256k"}
    async with _serve(keys, server_recorder, cipher, **rekey) as port:
        opts = _client_opts(keys, port, client_recorder, cipher)
        async with asyncssh.connect("127.0.0.1", **opts, **rekey) as conn:
            await _round_trip(conn, 4 * MIB)
            aead = cipher != "aes128-ctr"
            ends = (conn, *server_recorder.conns)
            for _ in range(5):  # new objects are tuned on the reads after a key exchange
                await _round_trip(conn, 1000)
                tuned = [
                    getattr(enc, "_sshtun_glue", False)
                    for side in ends
                    for enc in (side._send_encryption, side._recv_encryption)
                ]
                if all(tuned):
                    break
            assert tuned == [aead] * 4
    assert server_recorder.tuning == [FULL] and client_recorder.tuning == [FULL]


@pytest.mark.parametrize(
    "cipher", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr"]
)
async def test_data_packets_built_by_the_shim_only_for_aead(keys: Keys, cipher: str) -> None:
    """No rekeying: with an AEAD cipher every data packet once the connection carries a
    transfer is built by data_packets (sendfast.py): only those of about the first
    GLUE_AFTER bytes (256 KiB: an idle link stays stock, without the glue's cipher
    objects) go by asyncssh's send_packet; with CTR all of them are asyncssh's. 2 MiB each
    way (64 packets of 32 KiB), intact."""
    server_recorder, client_recorder = Recorder(), Recorder()
    async with _serve(keys, server_recorder, cipher) as port:
        opts = _client_opts(keys, port, client_recorder, cipher)
        async with asyncssh.connect("127.0.0.1", **opts) as conn:
            await _round_trip(conn, 2 * MIB)
    for side in (server_recorder, client_recorder):
        assert side.tuning == [FULL]
        slow = side.slow[MSG_CHANNEL_DATA]
        assert slow <= 2 * GLUE_AFTER // (32 * 1024) if cipher != "aes128-ctr" else slow >= 64


@pytest.mark.parametrize(
    ("cipher", "split", "rekey"),
    [
        ("aes128-gcm@openssh.com", False, False),
        ("aes128-gcm@openssh.com", True, True),
        ("chacha20-poly1305@openssh.com", False, False),
    ],
)
async def test_channel_data_taken_whole_from_reads_only_for_gcm(
    keys: Keys, monkeypatch: pytest.MonkeyPatch, cipher: str, split: bool, rekey: bool
) -> None:
    """recvfast.py: on a GCM connection carrying a transfer, most data packets are taken
    straight from the read (one decrypt, one copy); with reads cut anywhere and rekeying
    every 256 KiB, the packets cut across reads and those of each new key go to asyncssh,
    and every byte still arrives intact. ChaCha20-Poly1305 (encrypted length): none."""
    from sshtunnel_mgr.sshcompat import recvfast

    taken = Counter[str]()
    take = recvfast.take

    def counted(conn: Any, data: bytes, pos: int, end: int) -> int:
        used = take(conn, data, pos, end)
        taken["fast" if used else "stock"] += 1
        return used

    monkeypatch.setattr(recvfast, "take", counted)
    server_recorder = Recorder(random.Random(3) if split else None)
    client_recorder = Recorder(random.Random(4) if split else None)
    opts = {"rekey_bytes": "256k"} if rekey else {}
    async with _serve(keys, server_recorder, cipher, **opts) as port:
        client = _client_opts(keys, port, client_recorder, cipher)
        async with asyncssh.connect("127.0.0.1", **client, **opts) as conn:
            await _round_trip(conn, 4 * MIB)
    data_packets = server_recorder.received[MSG_CHANNEL_DATA]  # the rest: asyncssh's
    if cipher.startswith("aes"):
        # 2 x 128 packets of 32 KiB, both ends together; reads cut into pieces of at most
        # 40 KiB hold few whole packets
        assert taken["fast"] >= (1 if split else 32)
        assert data_packets < 2 * 4 * MIB // (32 * 1024)
    else:
        assert taken["fast"] == 0


async def test_an_idle_link_keeps_the_stock_cipher_objects_until_a_transfer(
    keys: Keys, server_recorder: Recorder, client_recorder: Recorder
) -> None:
    """aead_glue's cipher objects cost ~2.5 KiB each (10,000 idle agents: +70 MiB on the
    bastion): a link that only logs in and trades a few small messages stays stock; the
    first transfer tunes both ends' objects."""
    cipher = "aes128-gcm@openssh.com"
    async with _serve(keys, server_recorder, cipher) as port:
        opts = _client_opts(keys, port, client_recorder, cipher)
        async with asyncssh.connect("127.0.0.1", **opts) as conn:
            ends = (conn, *server_recorder.conns)

            def tuned() -> list[bool]:
                return [
                    getattr(enc, "_sshtun_glue", False)
                    for side in ends
                    for enc in (side._send_encryption, side._recv_encryption)
                ]

            for _ in range(5):
                await _round_trip(conn, 1000)
            assert tuned() == [False] * 4
            await _round_trip(conn, 2 * MIB)
            await _round_trip(conn, 1000)  # the sender's objects: tuned on its next read
            assert tuned() == [True] * 4


async def test_packet_log_still_written_at_debug_level_3(
    keys: Keys,
    server_recorder: Recorder,
    client_recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cipher = "aes128-gcm@openssh.com"
    caplog.set_level(logging.DEBUG, logger="asyncssh")
    async with _serve(keys, server_recorder, cipher) as port:
        opts = _client_opts(keys, port, client_recorder, cipher)
        async with asyncssh.connect("127.0.0.1", **opts) as conn:
            await _round_trip(conn, 1000)
            assert not any("MSG_CHANNEL_DATA" in r.getMessage() for r in caplog.records)
            level = SSHLogger._debug_level
            asyncssh.set_debug_level(3)
            try:
                await _round_trip(conn, 1000)
            finally:
                asyncssh.set_debug_level(level)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("[conn=") and "Sent MSG_CHANNEL_DATA (94)" in m for m in messages)
    assert any("Received MSG_CHANNEL_DATA (94)" in m for m in messages)
    assert any("Received MSG_GLOBAL_REQUEST" in m or "MSG_CHANNEL_OPEN" in m for m in messages)


async def test_a_tunnelled_connection_stays_uncorked_and_works(
    keys: Keys, server_recorder: Recorder, client_recorder: Recorder
) -> None:
    """Its transport is an SSH channel, not a socket: the cork steps aside."""
    cipher = "aes128-gcm@openssh.com"
    async with _serve(keys, server_recorder, cipher) as port:
        opts = _client_opts(keys, port, client_recorder, cipher)
        async with (
            asyncssh.connect("127.0.0.1", **opts) as outer,
            asyncssh.connect("127.0.0.1", tunnel=outer, **opts) as inner,
        ):
            await _round_trip(inner, 2 * MIB)
    inner = Tuning(
        skip_ignore=True, quiet_packet_log=True, aead_glue=True, recv_feed=True, data_packets=True
    )
    assert client_recorder.tuning == [FULL, inner]
    assert server_recorder.tuning == [FULL, FULL]  # the server sees two TCP connections


# Real OpenSSH through the tuned bastion and agent -----------------------------------------
@pytest.mark.openssh
@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"])
async def test_openssh_through_tuned_bastion_with_rekeying(
    keys: Keys, tmp_path: Path, cipher: str, caplog: pytest.LogCaptureFixture
) -> None:
    """ssh -J, the client rekeying its hop to the bastion often: 8 MiB each way, checksummed."""
    caplog.set_level(logging.DEBUG, logger="asyncssh")
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(8 * MIB))
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    async with (
        home_sshd(keys, tmp_path / "home") as home,
        running_bastion(bastion_config(keys, access)) as bastion,
        running_agent(
            agent_config(keys, bastion.port, [("homebox", 22, f"127.0.0.1:{home.port}")])
        ) as agent,
    ):
        cfg = write_ssh_config(
            tmp_path / "client",
            keys,
            bastion.port,
            extra_opts=f"  Ciphers {cipher}\n",
        )
        # Rekey the hop to the bastion only: OpenSSH's own end-to-end hop to the home sshd
        # uploads very slowly with a small RekeyLimit even with no bastion at all.
        cfg.write_text(cfg.read_text().replace("User sshtun\n", "User sshtun\n  RekeyLimit 512K\n"))
        down = await run_ssh(cfg, "homebox", f"cat {blob}", timeout=120)
        assert down.returncode == 0, down.stderr
        assert hashlib.sha256(down.stdout).hexdigest() == digest
        up = await run_ssh(cfg, "homebox", "sha256sum", stdin=blob.read_bytes(), timeout=120)
        assert up.returncode == 0, up.stderr
        assert up.stdout.decode().split()[0] == digest
        [agent_conn] = [c for c in bastion.state.connections.values() if c.published]
        assert agent_conn.tuning == FULL
        assert agent.agent.links[0].status.connects == 1
    rekeys = sum("Received key exchange request" in r.getMessage() for r in caplog.records)
    assert rekeys >= 2 * 8  # the client's hop to the bastion rekeyed every 512 KiB
