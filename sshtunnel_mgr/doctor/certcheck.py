"""``sshtun doctor`` on a ``tls = "files"`` tunnel's certificate: readable, not expired,
not expiring within ``WARN_DAYS`` (pure: the facts come from collect.py)."""

from __future__ import annotations

from dataclasses import dataclass

from sshtunnel_mgr.doctor.findings import Finding, fail, ok, warn

WARN_DAYS = 14


@dataclass(frozen=True)
class CertFacts:
    label: str  # the tunnel, name:port
    path: str
    not_after: float | None = None  # seconds since the epoch
    error: str = ""  # why it could not be read


def check_certificate(facts: CertFacts, now: float) -> Finding:
    check = "agent.tls-certificate"
    if facts.not_after is None:
        return fail(
            check,
            f"{facts.label}: certificate {facts.path} cannot be read: {facts.error}",
            "point cert at a readable PEM certificate (the agent will not start without one)",
        )
    days = (facts.not_after - now) / 86400
    if days <= 0:
        return fail(
            check,
            f"{facts.label}: certificate {facts.path} expired {-days:.0f} day(s) ago",
            "renew it and replace the file; the agent picks up the new one by itself",
        )
    if days < WARN_DAYS:
        return warn(
            check,
            f"{facts.label}: certificate {facts.path} expires in {days:.1f} day(s)",
            "renew it and replace the file; the agent picks up the new one by itself",
        )
    return ok(check, f"{facts.label}: certificate {facts.path} valid for {days:.0f} more day(s)")
