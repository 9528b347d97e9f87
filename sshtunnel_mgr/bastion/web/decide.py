"""The web route decision: which agent serves a name a browser asked for, if any.

From plain data (the ``[bastion.web]`` policy, the route table, the access entries), like
``bastion/routes.py`` for SSH clients. A name is served only when it is a valid route name,
public in the bastion's config, allowed from the client's address, under the per-source
cap, and published on the port by an agent whose key may (still) publish it. The reason of
a refusal goes to the log and the audit record only; the client learns nothing from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sshtunnel_mgr.bastion.peer import LiveConnection
from sshtunnel_mgr.bastion.state import BastionState
from sshtunnel_mgr.core.names import InvalidName, normalize_name
from sshtunnel_mgr.core.routing import Route
from sshtunnel_mgr.core.webconfig import PublicRule, SourceRate, WebPolicy


@dataclass(frozen=True)
class Refused:
    reason: str
    counter: str  # web_refused_<counter>: no_name, bad_name, not_public, not_allowed, ...


@dataclass(frozen=True)
class Public:
    name: str
    rule: PublicRule


def public_name(
    policy: WebPolicy, rate: SourceRate, raw: str | None, source_ip: str
) -> Public | Refused:
    """``raw`` (SNI or Host, as sent) as a public name this source may open now."""
    if raw is None:
        return Refused("no server name (SNI)", "no_name")
    try:
        name = normalize_name(raw)
    except InvalidName as exc:
        return Refused(exc.message, "bad_name")
    rule = policy.public_rule(name)
    if rule is None:
        return Refused(f"{name} is not public ([bastion.web] public)", "not_public")
    if not policy.allowed(rule, source_ip):
        return Refused(f"{source_ip} is not in allow_from of {rule.pattern}", "not_allowed")
    if not rate.admit(source_ip, rule):
        return Refused(
            f"more than {rule.max_new_per_source} new connections a minute from "
            f"{source_ip} to {rule.pattern}",
            "rate",
        )
    return Public(name, rule)


def serving(state: BastionState, name: str, port: int) -> list[Route[LiveConnection]]:
    """The routes for ``name:port`` whose key may publish it under the access file now."""
    return [
        r
        for r in state.routes.lookup(name, port)
        if r.handle.entry is not None and r.handle.entry.may_publish(name, port)
    ]


def pick(state: BastionState, routes: list[Route[LiveConnection]]) -> Route[LiveConnection]:
    return routes[state.next_pick() % len(routes)]
