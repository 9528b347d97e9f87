"""What every measurement shares: the ciphers and setups compared, the aims, logging, medians."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Sequence
from typing import TypeVar

MiB = 1024 * 1024


GiB = 1024 * MiB


CIPHERS = ("aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com")


SETUPS = ("sshtun", "openssh")


DIRECTIONS = ("upload", "download")


CLK_TCK = os.sysconf("SC_CLK_TCK")


# Aims (sshtun relative to OpenSSH as the bastion, or absolute).
AIM_THROUGHPUT_RATIO = 0.8  # sshtun >= 0.8x OpenSSH, each way, aes128-gcm


AIM_SETUP_RATIO = 0.8  # sshtun set-up time <= 0.8x OpenSSH


AIM_IDLE_KIB = 64.0  # sshtun bastion memory per idle agent connection


def check_bounds(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    bounds: dict[str, tuple[float, float]],
) -> None:
    """Every option named in ``bounds`` (dest name: (low, high)) within its range, or the
    parser's usage error; an option left at None is not checked."""
    for dest, (lo, hi) in bounds.items():
        value = getattr(args, dest)
        if value is not None and not lo <= value <= hi:
            parser.error(f"--{dest.replace('_', '-')} must be {lo}..{hi}")


def short(cipher: str) -> str:
    return cipher.split("@")[0]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# Orchestration ------------------------------------------------------------------------------
def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pow2_mib(x_mib: float, lo: int, hi: int) -> int:
    x = max(lo, min(hi, x_mib))
    return int(min(hi, max(lo, 2 ** round(math.log2(x)))))


T = TypeVar("T")


async def cancellable(work: Awaitable[T]) -> T:
    """SIGINT/SIGTERM cancel the run, so that its clean-up stops every child by PID (also
    when started in the background, where SIGINT is otherwise ignored)."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
