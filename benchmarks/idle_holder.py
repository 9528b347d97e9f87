#!/usr/bin/env python3
"""Many idle agents in one process, for idle_agents.py: each an asyncssh client connection
that logs in with its own key (or one shared key) from its own loopback source address and
publishes one name with a remote forward (``idle-<i>:22`` -> the home sshd), as an agent
does; then it holds them open, idle, until its stdin closes.

Protocol on stdin/stdout (one JSON object a line on stdout):
  {"ready": n}                    keys derived, waiting for "go" on stdin
  {"progress": k, "failed": f}    every ~2 s while connecting
  {"done": k, "failed": f, "retries": r, "seconds": s, "errors": {...}}
then it waits for EOF on stdin, closes every connection and exits 0.

Keys are derived, not stored: agent i's ed25519 key is the seed sha256(SEED || i), so that
the access file idle_agents.py writes and this process agree without 10,000 key files.
Bounded: at most ``--concurrency`` logins in flight, ``--attempts`` tries per agent, each
with ``connect_timeout``; everything on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import asyncssh
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# How every benchmark client logs in with asyncssh (as bench_tunnel.sides.LOGIN_OPTIONS):
# the key given, nothing else tried, no ~/.ssh/config or ssh-agent of the user.
LOGIN_OPTIONS: dict[str, Any] = dict(
    config=None,
    agent_path=None,
    password=None,
    kbdint_auth=False,
    gss_auth=False,
    host_based_auth=False,
    preferred_auth="publickey",
)


def agent_key(seed: bytes, i: int) -> asyncssh.SSHKey:
    """Idle agent ``i``'s key (``i = -1``: the one shared key of ``--one-key``)."""
    raw = hashlib.sha256(seed + str(i).encode()).digest()
    pem = Ed25519PrivateKey.from_private_bytes(raw).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return asyncssh.import_private_key(pem)


def source_address(i: int) -> str:
    """Agent ``i``'s own loopback address, 127.1.0.1 upwards (250 a /24, no .0 or .255):
    one address per agent, as home boxes behind their own NAT, and ephemeral ports spread."""
    hi, lo = divmod(i, 250)
    return f"127.1.{hi % 250}.{lo + 1}" if hi < 250 else f"127.2.{hi % 250}.{lo + 1}"


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def hold(args: argparse.Namespace) -> int:
    seed = bytes.fromhex(args.seed)
    shared = agent_key(seed, -1) if args.one_key else None
    indices = range(args.first, args.first + args.count)
    keys = {i: shared or agent_key(seed, i) for i in indices}
    host_key = asyncssh.import_public_key(args.host_key)
    emit({"ready": len(keys)})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    if (await reader.readline()).strip() != b"go":
        return 1

    conns: list[asyncssh.SSHClientConnection] = []
    errors: Counter[str] = Counter()
    failed = retries = 0
    sem = asyncio.Semaphore(args.concurrency)

    async def one(i: int) -> None:
        nonlocal failed, retries
        for attempt in range(args.attempts):
            if attempt:
                retries += 1
                await asyncio.sleep(0.5 * attempt)
            async with sem:
                conn = None
                try:
                    conn = await asyncssh.connect(
                        "127.0.0.1",
                        args.port,
                        username="sshtun",
                        client_keys=[keys[i]],
                        known_hosts=([host_key], [], []),
                        local_addr=(source_address(i), 0),
                        **LOGIN_OPTIONS,
                        encryption_algs=["aes128-gcm@openssh.com"],
                        kex_algs=["curve25519-sha256"],
                        connect_timeout=args.connect_timeout,
                    )
                    await asyncio.wait_for(
                        conn.forward_remote_port(f"idle-{i}", 22, "127.0.0.1", args.home_port),
                        args.connect_timeout,
                    )
                except (OSError, asyncssh.Error, TimeoutError) as exc:
                    errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
                    if conn is not None:
                        conn.abort()
                    continue
                conns.append(conn)
                return
        failed += 1

    async def progress() -> None:
        while True:
            await asyncio.sleep(2.0)
            emit({"progress": len(conns), "failed": failed})

    t0 = time.perf_counter()
    ticker = asyncio.create_task(progress())
    try:
        await asyncio.gather(*(one(i) for i in indices))
    finally:
        ticker.cancel()
    took = time.perf_counter() - t0
    emit(
        {
            "done": len(conns),
            "failed": failed,
            "retries": retries,
            "seconds": took,
            "errors": dict(errors.most_common(5)),
        }
    )
    await reader.read()  # idle until idle_agents.py closes our stdin (or stops us)
    for conn in conns:
        conn.close()
    await asyncio.wait(
        [asyncio.ensure_future(c.wait_closed()) for c in conns] or [asyncio.sleep(0)], timeout=20
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Hold many idle agent connections (idle_agents.py).")
    p.add_argument("--port", type=int, required=True, help="the bastion's port on 127.0.0.1")
    p.add_argument("--host-key", required=True, help="the bastion's public host key line")
    p.add_argument("--home-port", type=int, required=True, help="where each forward points")
    p.add_argument("--seed", required=True, help="hex seed the agents' keys derive from")
    p.add_argument("--first", type=int, required=True, help="first agent index")
    p.add_argument("--count", type=int, required=True, help="how many agents")
    p.add_argument("--one-key", action="store_true", help="all agents share one key")
    p.add_argument("--concurrency", type=int, default=16, help="logins in flight")
    p.add_argument("--attempts", type=int, default=3, help="tries per agent")
    p.add_argument("--connect-timeout", type=float, default=60.0, help="per try")
    args = p.parse_args(argv)
    if not (0 <= args.count <= 100_000 and 1 <= args.concurrency <= 1000):
        p.error("--count 0..100000, --concurrency 1..1000")
    return asyncio.run(hold(args))


if __name__ == "__main__":
    sys.exit(main())
