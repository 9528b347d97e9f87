"""The bastion's route table: which agent connections serve which ``name:port``.

Pure data. A table is immutable; every change returns a new table, and the bastion swaps
its reference whole, so a lookup always sees one consistent snapshot. Names belong to
identities (key fingerprints), not connections: when a key publishes a name it already
serves from another connection, the new route replaces the old one at once, so a stale
session never blocks a name. Two different keys (each allowed by the access file) may serve
the same name; lookups then spread connections over them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, TypeVar

H = TypeVar("H")

RouteKey = tuple[str, int]


@dataclass(frozen=True)
class Route(Generic[H]):
    name: str  # normalized (lower-case)
    port: int
    owner: str  # fingerprint of the key that published it
    conn_id: int  # the agent connection that serves it
    handle: H = field(compare=False)  # what the bastion needs to open a channel on it
    spelling: str = ""  # the bind address exactly as the agent sent it
    since: float = 0.0


@dataclass(frozen=True)
class RouteTable(Generic[H]):
    routes: Mapping[RouteKey, tuple[Route[H], ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def _with(self, key: RouteKey, served: tuple[Route[H], ...]) -> RouteTable[H]:
        routes = dict(self.routes)
        if served:
            routes[key] = served
        else:
            routes.pop(key, None)
        return RouteTable(MappingProxyType(routes))

    def publish(self, route: Route[H]) -> tuple[RouteTable[H], tuple[Route[H], ...]]:
        """Add a route; return the new table and the routes it took over (same owner)."""
        key = (route.name, route.port)
        current = self.routes.get(key, ())
        replaced = tuple(r for r in current if r.owner == route.owner)
        kept = tuple(r for r in current if r.owner != route.owner)
        return self._with(key, (*kept, route)), replaced

    def withdraw(self, name: str, port: int, conn_id: int) -> RouteTable[H]:
        """Remove the route ``name:port`` served by one connection (if it still serves it)."""
        key = (name, port)
        current = self.routes.get(key, ())
        kept = tuple(r for r in current if r.conn_id != conn_id)
        return self if len(kept) == len(current) else self._with(key, kept)

    def withdraw_connection(self, conn_id: int) -> RouteTable[H]:
        """Remove every route a connection serves (it closed)."""
        routes = {
            key: kept
            for key, served in self.routes.items()
            if (kept := tuple(r for r in served if r.conn_id != conn_id))
        }
        return RouteTable(MappingProxyType(routes))

    def lookup(self, name: str, port: int) -> tuple[Route[H], ...]:
        return self.routes.get((name, port), ())

    def pick(self, name: str, port: int, counter: int) -> Route[H] | None:
        """One route for a new connection; ``counter`` spreads load over several servers."""
        served = self.lookup(name, port)
        if not served:
            return None
        return served[counter % len(served)]

    def names_of(self, conn_id: int) -> list[RouteKey]:
        return [k for k, served in self.routes.items() if any(r.conn_id == conn_id for r in served)]

    def __iter__(self) -> Iterator[Route[H]]:
        for served in self.routes.values():
            yield from served

    def __len__(self) -> int:
        return len(self.routes)
