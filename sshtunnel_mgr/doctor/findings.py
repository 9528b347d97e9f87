"""What a check reports: a level, a stable check id, what was found, and how to fix it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Level(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        return {Level.OK: 0, Level.WARN: 1, Level.FAIL: 2}[self]


@dataclass(frozen=True)
class Finding:
    """One result. ``check`` is a stable dotted id (``sshd.password-auth``) that scripts and
    tests may rely on; ``fix`` says what to change (empty when the level is ok)."""

    level: Level
    check: str
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "level": self.level.value,
            "check": self.check,
            "message": self.message,
            "fix": self.fix,
        }


def ok(check: str, message: str) -> Finding:
    return Finding(Level.OK, check, message)


def warn(check: str, message: str, fix: str) -> Finding:
    return Finding(Level.WARN, check, message, fix)


def fail(check: str, message: str, fix: str) -> Finding:
    return Finding(Level.FAIL, check, message, fix)


def worst(findings: Iterable[Finding]) -> Level:
    return max((f.level for f in findings), key=lambda lv: lv.rank, default=Level.OK)


def summarize(findings: Iterable[Finding]) -> dict[str, int]:
    counts = {level.value: 0 for level in Level}
    for finding in findings:
        counts[finding.level.value] += 1
    return counts
