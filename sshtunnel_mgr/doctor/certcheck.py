"""``sshtun doctor`` on a ``tls = "files"`` or ``"acme"`` tunnel's certificate: readable, not
expired, not expiring within ``WARN_DAYS`` (pure: the facts come from collect.py). An acme
certificate is renewed at two thirds of its lifetime (30 days before the end for Let's
Encrypt's 90): one this close to its end means the renewals keep failing."""

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
    acme: bool = False  # ordered and renewed by the agent (tls = "acme")
    missing: bool = False  # acme: none saved yet


ACME_HINT = (
    "the agent renews it by itself at two thirds of its lifetime: this close to the end, "
    "its orders keep failing; `sshtun status` and the agent's log ('acme order failed') "
    "say why"
)
FILES_HINT = "renew it and replace the file; the agent picks up the new one by itself"


def check_certificate(facts: CertFacts, now: float) -> Finding:
    check = "agent.tls-certificate"
    if facts.acme and facts.missing:
        return warn(
            check,
            f"{facts.label}: no ACME certificate saved yet ({facts.path})",
            "the agent orders it when it runs; until then HTTPS to the name fails",
        )
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
            ACME_HINT if facts.acme else FILES_HINT,
        )
    if days < WARN_DAYS:
        return warn(
            check,
            f"{facts.label}: certificate {facts.path} expires in {days:.1f} day(s)",
            ACME_HINT if facts.acme else FILES_HINT,
        )
    return ok(check, f"{facts.label}: certificate {facts.path} valid for {days:.0f} more day(s)")
