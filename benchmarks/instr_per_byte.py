#!/usr/bin/env python3
"""Instructions per byte of asyncssh's data path as sshtun tunes it, counted by callgrind.

CPU seconds on a shared 2-core machine spread by +-20-30 % (cpu_per_byte.py); instruction
counts do not. This script runs, in one process, an asyncssh server and client on
127.0.0.1 (ed25519 keys made here, the client pins the server's host key), both tuned
with ``sshcompat.sendpath.tune_connection`` as the bastion and the agent are, and moves
``--size-mib`` through one ``direct-tcpip`` channel: ``up`` (client -> server) or
``down`` (server -> client), in 32 KiB writes as the bastion's splice gets them from
OpenSSH. Each packet is encrypted once and decrypted once in this process: the per-byte
work of one bastion hop pair (the bastion decrypts on one connection, encrypts on the
other). The bytes are counted and their SHA-256 compared at the far end.

    python benchmarks/instr_per_byte.py --cipher aes128-gcm@openssh.com --size-mib 32 up
    python benchmarks/instr_per_byte.py --count ...   # re-runs itself under valgrind twice

``--count`` runs this script under ``valgrind --tool=callgrind`` with ``--size-mib`` and
with 0 MiB (set-up only) and prints (Ir(N) - Ir(0)) / N bytes: user-space instructions per
byte (system calls are the kernel's and not counted; ``--strace`` adds their count).
``PYTHONPATH`` chooses the sshtunnel_mgr tree measured (e.g. a ``git archive`` of the
code before a change). ``--stock`` leaves the connections untuned (plain asyncssh).
Bounded: one transfer, a timeout, everything on 127.0.0.1 in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CHUNK = 32 * 1024  # --chunk-kib: the size of each write
# PYTHONPATH (a tree to measure) first, then this checkout.
sys.path.append(str(Path(__file__).resolve().parent.parent))


TUNED: list[str] = []


def _tune(conn: Any, stock: bool) -> None:
    if not stock:
        from sshtunnel_mgr.sshcompat.sendpath import tune_connection

        TUNED.append(str(tune_connection(conn)))


async def transfer(cipher: str, nbytes: int, direction: str, stock: bool, verify: bool) -> str:
    import asyncssh

    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    payload = os.urandom(CHUNK)
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    class Receiver(asyncssh.SSHTCPSession[bytes]):
        def __init__(self) -> None:
            self.n = 0
            self.sha = hashlib.sha256()

        def data_received(self, data: bytes, datatype: Any) -> None:
            self.n += len(data)
            if verify:
                self.sha.update(data)

        def eof_received(self) -> bool:
            if not done.done():
                done.set_result(f"{self.n} {self.sha.hexdigest()}")
            return False

    class Sender(asyncssh.SSHTCPSession[bytes]):
        def __init__(self) -> None:
            self.left = nbytes
            self.chan: Any = None
            self.paused = False

        def connection_made(self, chan: Any) -> None:
            self.chan = chan

        def session_started(self) -> None:
            self.pump()

        def pump(self) -> None:
            while self.left > 0 and not self.paused:
                n = min(CHUNK, self.left)
                self.chan.write(payload[:n] if n < CHUNK else payload)
                self.left -= n
            if self.left <= 0:
                self.chan.write_eof()

        def pause_writing(self) -> None:
            self.paused = True

        def resume_writing(self) -> None:
            self.paused = False
            self.pump()

    class Server(asyncssh.SSHServer):
        def connection_made(self, conn: Any) -> None:
            _tune(conn, stock)

        def connection_requested(self, *args: Any) -> Any:
            return Sender() if direction == "down" else Receiver()

    class Client(asyncssh.SSHClient):
        def connection_made(self, conn: Any) -> None:
            _tune(conn, stock)

    algs = {"encryption_algs": [cipher], "kex_algs": ["curve25519-sha256"]}
    server = await asyncssh.create_server(
        Server,
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(
            client_key.export_public_key().decode()
        ),
        **algs,
    )
    port = server.sockets[0].getsockname()[1]
    known = asyncssh.import_known_hosts(
        f"[127.0.0.1]:{port} " + host_key.export_public_key().decode()
    )
    try:
        async with asyncssh.connect(
            "127.0.0.1",
            port,
            client_factory=Client,
            known_hosts=known,
            client_keys=[client_key],
            username="bench",
            **algs,
        ) as conn:
            if nbytes:
                factory = Receiver if direction == "down" else Sender
                chan, session = await conn.create_connection(factory, "sink", 9)
                if direction == "up":
                    session.pump()
                got = await asyncio.wait_for(done, 600)
                want = hashlib.sha256()
                for off in range(0, nbytes if verify else 0, CHUNK):
                    want.update(payload[: min(CHUNK, nbytes - off)])
                if got != f"{nbytes} {want.hexdigest()}":
                    raise SystemExit(f"bytes differ: {got}")
                chan.close()
            return conn.get_extra_info("send_cipher")
    finally:
        server.close()


def count(args: argparse.Namespace) -> int:
    """Run this script under callgrind with N and 0 MiB; print instructions per byte."""
    results: dict[int, int] = {}
    functions: dict[int, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="instr-") as tmp:
        for mib in (args.size_mib, 0):
            out = Path(tmp) / f"cg.{mib}"
            cmd = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--cipher",
                args.cipher,
                "--size-mib",
                str(mib),
                *(["--stock"] if args.stock else []),
                f"--chunk-kib={args.chunk_kib}",
                "--no-verify",  # SHA-256 is the benchmark's cost, not the tunnel's
                args.direction,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
            m = re.search(r"Collected : (\d+)", proc.stderr)
            if proc.returncode or not m:
                print(proc.stdout, proc.stderr[-3000:], file=sys.stderr)
                return 1
            results[mib] = int(m.group(1))
            functions[mib] = by_function(out)
            if args.keep and mib:
                Path(args.keep).write_bytes(out.read_bytes())
    per_byte = (results[args.size_mib] - results[0]) / (args.size_mib * 2**20)
    print(
        f"{args.cipher} {args.direction} {args.size_mib} MiB, {args.chunk_kib} KiB writes"
        f"{' stock' if args.stock else ''}: {per_byte:.3f} instructions/byte "
        f"(Ir {results[args.size_mib]} - {results[0]})"
    )
    nbytes = args.size_mib * 2**20
    diff = {f: (n - functions[0].get(f, 0)) / nbytes for f, n in functions[args.size_mib].items()}
    copies = sum(v for f, v in diff.items() if "memmove" in f or "memcpy" in f)
    print(f"  of which memcpy/memmove: {copies:.3f} (about the number of copies of each byte)")
    for f, v in sorted(diff.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {v:8.3f}  {f}")
    return 0


def by_function(path: Path) -> dict[str, int]:
    """Exclusive Ir per function from callgrind_annotate."""
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(\S.*)$", line)
        if m and "PROGRAM TOTALS" not in line:
            where = re.sub(r" \[.*\]$", "", m.group(2))  # file:function, object dropped
            file, _, func = where.rpartition(":")
            name = f"{Path(file).name}:{func}" if file else func
            out[name] = out.get(name, 0) + int(m.group(1).replace(",", ""))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("direction", choices=("up", "down"))
    p.add_argument("--cipher", default="aes128-gcm@openssh.com")
    p.add_argument("--size-mib", type=int, default=32)
    p.add_argument("--stock", action="store_true", help="no sshtun tuning")
    p.add_argument(
        "--chunk-kib", type=int, default=32, help="write size (256: a TCP read at the agent)"
    )
    p.add_argument("--count", action="store_true", help="count instructions with callgrind")
    p.add_argument("--keep", metavar="FILE", help="with --count: keep the N MiB callgrind file")
    p.add_argument("--top", type=int, default=15, help="with --count: functions shown")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="count bytes only")
    args = p.parse_args()
    if not 0 <= args.size_mib <= 1024:
        p.error("--size-mib must be 0..1024")
    global CHUNK
    CHUNK = args.chunk_kib * 1024
    if args.count:
        return count(args)
    cipher = asyncio.run(
        transfer(args.cipher, args.size_mib * 2**20, args.direction, args.stock, args.verify)
    )
    print(f"ok {cipher}, tuning: {' / '.join(TUNED) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
