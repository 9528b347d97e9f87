#!/usr/bin/env python3
"""Raw peers for the attack and soak benchmarks (standard library only, no sshtun import).

``flood``: half key exchanges from many loopback source addresses. Each slot connects,
sends the SSH version and a KEXINIT choosing the most expensive key exchange the server
offers (diffie-hellman-group18-sha512, else group16, else whatever the server lists first),
then that exchange's first message with a random value (no crypto on this side), and never
finishes. When the server drops it, the slot waits ``--reopen-delay`` and connects again,
until ``--seconds`` have passed. Prints one JSON object of counters on stdout.

``stream``: a TCP service that writes zeros to every connection as fast as it can (the home
service behind the tunnel for aborted opens). Runs until killed.

    python benchmarks/peers.py flood --port P --sources 127.0.0.2-127.0.0.50 --per-source 10
    python benchmarks/peers.py stream --port P
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import random
import resource
import secrets
import struct
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

MSG_KEXINIT = 20
MSG_KEX_INIT = 30  # KEXDH_INIT / KEX_ECDH_INIT / hybrid KEM init
MSG_KEX_REPLY = 31  # KEXDH_REPLY (and KEX_DH_GEX_GROUP for group exchange)
MSG_GEX_REQUEST = 34
MSG_GEX_INIT = 32
MSG_GEX_REPLY = 33
VERSION = b"SSH-2.0-OpenSSH_9.2p1\r\n"  # what a scanner says
MARKERS = ("ext-info-", "kex-strict-")
DH_BITS = {
    "diffie-hellman-group1-sha1": 1024,
    "diffie-hellman-group14-sha1": 2048,
    "diffie-hellman-group14-sha256": 2048,
    "diffie-hellman-group15-sha512": 3072,
    "diffie-hellman-group16-sha512": 4096,
    "diffie-hellman-group17-sha512": 6144,
    "diffie-hellman-group18-sha512": 8192,
}
PREFERRED = ("diffie-hellman-group18-sha512", "diffie-hellman-group16-sha512")


# SSH wire encoding -------------------------------------------------------------------------
def ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def name_list(names: Sequence[str]) -> bytes:
    return ssh_string(",".join(names).encode())


def mpint(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big")  # leading 0 keeps it positive
    return ssh_string(raw)


def packet(payload: bytes) -> bytes:
    """An unencrypted binary packet (RFC 4253 6): length, padding length, payload, padding."""
    pad = 8 - (5 + len(payload)) % 8
    if pad < 4:
        pad += 8
    return struct.pack(">IB", 1 + len(payload) + pad, pad) + payload + os.urandom(pad)


def parse_name_lists(payload: bytes) -> list[list[str]]:
    """The ten name-lists of a KEXINIT payload (after the message number and the cookie)."""
    lists, pos = [], 17
    for _ in range(10):
        (n,) = struct.unpack_from(">I", payload, pos)
        pos += 4
        lists.append([x for x in payload[pos : pos + n].decode().split(",") if x])
        pos += n
    return lists


def choose_kex(offered: Sequence[str]) -> str:
    real = [k for k in offered if not k.startswith(MARKERS)]
    for k in PREFERRED:
        if k in real:
            return k
    return real[0]


def client_kexinit(server: list[list[str]], kex: str) -> bytes:
    """A KEXINIT that agrees with the server on everything, with ``kex`` as the exchange."""
    _kex_l, hostkey, enc_cs, enc_sc, mac_cs, mac_sc, *_ = server
    return (
        bytes([MSG_KEXINIT])
        + os.urandom(16)
        + name_list([kex])
        + name_list(hostkey[:1])
        + name_list(enc_cs[:1])
        + name_list(enc_sc[:1])
        + name_list(mac_cs[:1])
        + name_list(mac_sc[:1])
        + name_list(["none"])
        + name_list(["none"])
        + name_list([])
        + name_list([])
        + b"\x00"
        + struct.pack(">I", 0)
    )


def mlkem768_public_key() -> bytes:
    """A well-formed ML-KEM-768 encapsulation key from random numbers (every coefficient
    below q = 3329, so the server does the real encapsulation): 3 x 256 12-bit values
    packed two per three bytes, then a random 32-byte seed."""
    out = bytearray()
    for _ in range(3 * 128):
        a, b = random.randrange(3329), random.randrange(3329)
        out += bytes([a & 0xFF, (a >> 8) | ((b & 0x0F) << 4), b >> 4])
    return bytes(out) + os.urandom(32)


def kex_init_message(kex: str) -> bytes | None:
    """The client's first key-exchange message with a random value; None for group
    exchange (it starts with a request for a group)."""
    if kex in DH_BITS:
        bits = DH_BITS[kex]
        e = secrets.randbits(bits - 1) | (1 << (bits - 2))  # 1 < e < p: a random group element
        return bytes([MSG_KEX_INIT]) + mpint(e)
    if kex.startswith("diffie-hellman-group-exchange"):
        return None
    if kex.startswith("mlkem768x25519"):
        value = mlkem768_public_key() + os.urandom(32)
    elif kex.startswith("sntrup761x25519"):
        value = os.urandom(1158) + os.urandom(32)
    else:  # curve25519 (any 32 bytes is a public value); NIST curves get refused cheaply
        value = os.urandom(32)
    return bytes([MSG_KEX_INIT]) + ssh_string(value)


# The flood ---------------------------------------------------------------------------------
@dataclass
class FloodStats:
    counts: Counter[str] = field(default_factory=Counter)
    kex: Counter[str] = field(default_factory=Counter)
    open_now: int = 0
    open_max: int = 0


async def read_packet(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(5)
    length, _pad = struct.unpack(">IB", head)
    if not 5 <= length <= 256 * 1024:
        raise ConnectionError(f"bad packet length {length}")
    rest = await reader.readexactly(length - 1)
    return rest[: length - 1 - _pad]


async def half_kex(
    host: str, port: int, source: str, stats: FloodStats, timeout: float, churn: bool = False
) -> None:
    """One connection: version, KEXINIT, the first key-exchange message; then hold it open,
    reading whatever comes, until the server drops it."""
    c = stats.counts
    c["connects"] += 1
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(source, 0)), timeout
        )
    except (OSError, TimeoutError):
        c["connect_failed"] += 1
        return
    stats.open_now += 1
    stats.open_max = max(stats.open_max, stats.open_now)
    stage = "before_banner"
    try:
        writer.write(VERSION)
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout)
            if not line:
                raise ConnectionError("closed")
            if line.startswith(b"SSH-"):
                break
        c["banners"] += 1
        stage = "before_kexinit"
        payload = await asyncio.wait_for(read_packet(reader), timeout)
        if payload[:1] != bytes([MSG_KEXINIT]):
            raise ConnectionError("no KEXINIT")
        server = parse_name_lists(payload)
        kex = choose_kex(server[0])
        stats.kex[kex] += 1
        writer.write(packet(client_kexinit(server, kex)))
        first = kex_init_message(kex)
        if first is None:  # group exchange: ask for the biggest group, then send e
            writer.write(packet(bytes([MSG_GEX_REQUEST]) + struct.pack(">III", 2048, 8192, 8192)))
            stage = "before_group"
            while True:
                group = await asyncio.wait_for(read_packet(reader), timeout)
                if group[:1] == bytes([MSG_KEX_REPLY]):
                    break
            (plen,) = struct.unpack_from(">I", group, 1)
            p = int.from_bytes(group[5 : 5 + plen], "big")
            e = secrets.randbits(p.bit_length() - 1) | (1 << (p.bit_length() - 2))
            first = bytes([MSG_GEX_INIT]) + mpint(e)
        writer.write(packet(first))
        await writer.drain()
        c["kex_inits_sent"] += 1
        stage = "before_reply"
        while True:  # the server's reply means it did the work; we never answer NEWKEYS
            data = await reader.read(65536)
            if not data:
                break
            if stage == "before_reply":
                c["kex_replies"] += 1
                stage = "held"
                if churn:  # DHEat: the work is done; leave and make it do it again
                    c["closed_by_us"] += 1
                    break
    except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        stats.open_now -= 1
        c[f"dropped_{stage}"] += 1
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def flood_slot(
    host: str,
    port: int,
    source: str,
    stats: FloodStats,
    deadline: float,
    delay: float,
    churn: bool,
) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        timeout = max(1.0, deadline - loop.time())
        await half_kex(host, port, source, stats, timeout, churn)
        await asyncio.sleep(delay * (0.5 + random.random()))


def source_range(text: str) -> list[str]:
    first, _, last = text.partition("-")
    lo, hi = ipaddress.ip_address(first), ipaddress.ip_address(last or first)
    if not (lo.is_loopback and hi.is_loopback):
        raise SystemExit("peers.py flood: sources must be loopback addresses (127.0.0.0/8)")
    return [str(ipaddress.ip_address(int(lo) + i)) for i in range(int(hi) - int(lo) + 1)]


async def flood(args: argparse.Namespace) -> dict[str, object]:
    if not ipaddress.ip_address(args.host).is_loopback:
        raise SystemExit("peers.py flood: the target must be a loopback address")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stats = FloodStats()
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    deadline = loop.time() + args.seconds
    sources = source_range(args.sources)
    tasks = [
        asyncio.create_task(
            flood_slot(args.host, args.port, src, stats, deadline, args.reopen_delay, args.churn)
        )
        for src in sources
        for _ in range(args.per_source)
    ]
    _, pending = await asyncio.wait(tasks, timeout=args.seconds)
    for task in pending:  # held connections: close them now (the flood is over)
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return {
        "seconds": round(time.monotonic() - started, 1),
        "sources": len(sources),
        "per_source": args.per_source,
        "open_max": stats.open_max,
        "kex_chosen": dict(stats.kex),
        **dict(stats.counts),
    }


# The streaming home service ----------------------------------------------------------------
async def stream(args: argparse.Namespace) -> None:
    chunk = bytes(64 * 1024)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                writer.write(chunk)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", args.port)
    print(f"streaming on 127.0.0.1:{args.port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flood", help="half key exchanges from many loopback sources")
    f.add_argument("--host", default="127.0.0.1")
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--sources", default="127.0.0.2-127.0.0.50")
    f.add_argument("--per-source", type=int, default=10)
    f.add_argument("--seconds", type=float, default=30.0)
    f.add_argument("--reopen-delay", type=float, default=0.05)
    f.add_argument("--churn", action="store_true", help="close once answered, open another")
    s = sub.add_parser("stream", help="a TCP service that streams zeros as fast as it can")
    s.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    if args.cmd == "flood":
        if not 0 < args.seconds <= 600 or not 0 < args.per_source <= 100:
            p.error("--seconds must be 0..600 and --per-source 1..100")
        print(json.dumps(asyncio.run(flood(args))), flush=True)
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(stream(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
