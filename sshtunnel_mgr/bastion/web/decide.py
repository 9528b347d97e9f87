"""The web route decision: which agent serves a name a browser asked for, if any.

From plain data (the ``[bastion.web]`` policy, the route table, the access entries), like
``bastion/routes.py`` for SSH clients. A name is served only when it is a valid route name,
public in the bastion's config, allowed from the client's address, under the per-source
cap, and published on the port by an agent whose key may (still) publish it: in a worker of
a multi-process bastion, by an agent on any worker (another worker's is reached through
its relay socket, conn.py). The reason of
a refusal goes to the log and the audit record only; the client learns nothing from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sshtunnel_mgr.bastion.peer import LiveConnection
from sshtunnel_mgr.bastion.state import BastionState
from sshtunnel_mgr.core.access import AccessEntry, AccessPolicy
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


# A route on this bastion's own agent connection, or (a worker of a multi-process
# bastion) one another worker holds: its handle is that worker's number.
Target = Route[LiveConnection] | Route[int]


def serving(state: BastionState, name: str, port: int) -> list[Target]:
    """The routes for ``name:port`` whose key may publish it under the access file now; a
    worker's: from every worker's (the mesh's table), its own as its live routes."""
    mesh = state.mesh
    if mesh is None:
        return [r for r in state.routes.lookup(name, port) if _may(r.handle.entry, name, port)]
    found: list[Target] = []
    for route in mesh.lookup(name, port):
        if route.handle == mesh.worker:
            local = state.routes.route_of(name, port, route.conn_id)
            if local is not None and _may(local.handle.entry, name, port):
                found.append(local)
        elif _may(_owners(state.access).get(route.owner), name, port):
            found.append(route)
    return found


def _may(entry: AccessEntry | None, name: str, port: int) -> bool:
    return entry is not None and bool(entry.may_publish(name, port))


_index: list[tuple[AccessPolicy, dict[str, AccessEntry]]] = []


def _owners(access: AccessPolicy) -> dict[str, AccessEntry]:
    """The access file's entries by fingerprint (kept for the policy last asked about)."""
    if not _index or _index[0][0] is not access:
        _index[:] = [(access, {e.fingerprint: e for e in access.entries})]
    return _index[0][1]


def pick(state: BastionState, routes: list[Target]) -> Target:
    return routes[state.next_pick() % len(routes)]
