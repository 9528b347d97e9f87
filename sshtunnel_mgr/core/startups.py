"""OpenSSH's ``MaxStartups start:rate:full`` (pure): parsed once from the config, and the
random early drop it describes, with the randomness passed in. Used by the bastion's
admission (``bastion/admission.py``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MaxStartups:
    """OpenSSH's ``MaxStartups start:rate:full``."""

    start: int
    rate: int  # percent
    full: int

    def __str__(self) -> str:
        return f"{self.start}:{self.rate}:{self.full}"


def parse_max_startups(text: str) -> MaxStartups:
    """``"10:30:100"`` (or ``"100"``: ``start`` = ``full``, no early drop), as sshd_config
    takes it; ``ValueError`` with a message naming what is wrong."""
    parts = [p.strip() for p in text.split(":")]
    if len(parts) not in (1, 3) or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"{text!r} is not start:rate:full (e.g. 10:30:100) or a number")
    if len(parts) == 1:
        start, rate, full = int(parts[0]), 100, int(parts[0])
    else:
        start, rate, full = (int(p) for p in parts)
    if start < 1:
        raise ValueError(f"{text!r}: start must be at least 1")
    if not 1 <= rate <= 100:
        raise ValueError(f"{text!r}: rate is a percentage, 1 to 100")
    if not start <= full <= 1_000_000:
        raise ValueError(f"{text!r}: full must be at least start (and at most 1000000)")
    return MaxStartups(start, rate, full)


def early_drop(startups: int, limit: MaxStartups, roll: float) -> bool:
    """OpenSSH's ``drop()``: whether a new connection is dropped when ``startups`` are
    already in progress; ``roll`` is uniform in [0, 1)."""
    if startups >= limit.full:
        return True
    if startups < limit.start:
        return False
    percent = limit.rate + (100 - limit.rate) * (startups - limit.start) // (
        limit.full - limit.start
    )
    return int(roll * 100) < percent
