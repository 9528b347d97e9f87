"""The bastion's route table: which agent connections serve which ``name:port``.

Pure data. A table is immutable; every change returns a new table, and the bastion swaps
its reference whole, so a lookup always sees one consistent snapshot. Names belong to
identities (key fingerprints), not connections: when a key publishes a name it already
serves from another connection, the new route replaces the old one at once, so a stale
session never blocks a name. The connection it replaced is kept on *standby* for that name:
if the newest connection leaves while an older one of the same key is still up (a duplicate
agent started and stopped by mistake), the older one serves the name again at once. Two
different keys (each allowed by the access file) may serve the same name; lookups then
spread connections over them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from sshtunnel_mgr.core.pmap import PMap

H = TypeVar("H")
K = TypeVar("K")
V = TypeVar("V")

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


Routes = Mapping[RouteKey, tuple[Route[H], ...]]


def _set(table: Mapping[K, V], key: K, value: V | None) -> PMap[K, V]:
    """``table`` with ``key`` set (or removed when ``value`` is empty), sharing the rest."""
    pmap = table if isinstance(table, PMap) else PMap(table)
    return pmap.set(key, value) if value else pmap.remove(key)


def _index(routes: Routes[H], standby: Routes[H]) -> Mapping[int, tuple[RouteKey, ...]]:
    """conn_id -> every ``name:port`` it serves or stands by for (built once, for a table
    made whole, e.g. one a worker received). Tuples, not sets: an agent publishes a name
    or a few, and a one-key tuple costs 48 bytes where a frozenset costs 216 (per route,
    in the supervisor and in every worker)."""
    index: dict[int, dict[RouteKey, None]] = {}
    for table in (routes, standby):
        for key, served in table.items():
            for route in served:
                index.setdefault(route.conn_id, {})[key] = None
    return PMap({conn: tuple(keys) for conn, keys in index.items()})


@dataclass(frozen=True)
class RouteTable(Generic[H]):
    routes: Routes[H] = field(default_factory=PMap)  # serving
    # Older connections of a serving route's key, newest last: they take over when it goes.
    standby: Routes[H] = field(default_factory=PMap)
    # conn_id -> its names, serving or on standby (derived; kept in step by every change).
    index: Mapping[int, tuple[RouteKey, ...]] | None = field(
        default=None, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        for name in ("routes", "standby"):  # a table made whole (e.g. received) is shared
            value = getattr(self, name)
            if not isinstance(value, PMap):
                object.__setattr__(self, name, PMap((k, v) for k, v in value.items() if v))
        if self.index is None:
            object.__setattr__(self, "index", _index(self.routes, self.standby))

    @property
    def by_conn(self) -> Mapping[int, tuple[RouteKey, ...]]:
        assert self.index is not None  # set by __post_init__
        return self.index

    def _with(
        self, key: RouteKey, served: tuple[Route[H], ...], standby: tuple[Route[H], ...]
    ) -> RouteTable[H]:
        """This table with ``key``'s serving and standby routes replaced."""
        before = {r.conn_id for r in (*self.routes.get(key, ()), *self.standby.get(key, ()))}
        after = {r.conn_id for r in (*served, *standby)}
        by_conn = self.by_conn
        for conn in before - after:
            by_conn = _set(by_conn, conn, tuple(k for k in by_conn.get(conn, ()) if k != key))
        for conn in after - before:
            have = by_conn.get(conn, ())
            by_conn = _set(by_conn, conn, have if key in have else (*have, key))
        routes = self.routes
        if served != routes.get(key, ()):
            routes = _set(routes, key, served)
        old_standby = self.standby
        if standby != old_standby.get(key, ()):
            old_standby = _set(old_standby, key, standby)
        return RouteTable(routes, old_standby, by_conn)

    def publish(self, route: Route[H]) -> tuple[RouteTable[H], tuple[Route[H], ...]]:
        """Add a route; return the new table and the routes it took over (same owner).
        Those stay on standby unless they were on the same connection (a republish)."""
        key = (route.name, route.port)
        current = self.routes.get(key, ())
        replaced = tuple(r for r in current if r.owner == route.owner)
        kept = tuple(r for r in current if r.owner != route.owner)
        standby = tuple(r for r in self.standby.get(key, ()) if r.conn_id != route.conn_id)
        standby += tuple(r for r in replaced if r.conn_id != route.conn_id)
        return self._with(key, (*kept, route), standby), replaced

    def withdraw(self, name: str, port: int, conn_id: int) -> RouteTable[H]:
        """Remove the route ``name:port`` of one connection, serving or on standby; the
        newest standby of the same key serves in its place."""
        key = (name, port)
        served, standby = self._without(key, conn_id)
        if served == self.routes.get(key, ()) and standby == self.standby.get(key, ()):
            return self
        return self._with(key, served, standby)

    def withdraw_connection(self, conn_id: int) -> RouteTable[H]:
        """Remove every route a connection serves or stands by for (it closed)."""
        table = self
        for key in sorted(self.by_conn.get(conn_id, ())):
            served, standby = table._without(key, conn_id)
            table = table._with(key, served, standby)
        return table

    def _without(
        self, key: RouteKey, conn_id: int
    ) -> tuple[tuple[Route[H], ...], tuple[Route[H], ...]]:
        served = list(self.routes.get(key, ()))
        standby = [r for r in self.standby.get(key, ()) if r.conn_id != conn_id]
        for gone in [r for r in served if r.conn_id == conn_id]:
            served.remove(gone)
            heirs = [r for r in standby if r.owner == gone.owner]
            if heirs:  # the newest older connection of that key serves again
                standby.remove(heirs[-1])
                served.append(heirs[-1])
        return tuple(served), tuple(standby)

    def lookup(self, name: str, port: int) -> tuple[Route[H], ...]:
        """The routes serving ``name:port`` (not those on standby)."""
        return self.routes.get((name, port), ())

    def route_of(self, name: str, port: int, conn_id: int) -> Route[H] | None:
        """The route a connection published for ``name:port``, serving or on standby."""
        for route in (*self.routes.get((name, port), ()), *self.standby.get((name, port), ())):
            if route.conn_id == conn_id:
                return route
        return None

    def pick(self, name: str, port: int, counter: int) -> Route[H] | None:
        """One route for a new connection; ``counter`` spreads load over several servers."""
        served = self.lookup(name, port)
        if not served:
            return None
        return served[counter % len(served)]

    def names_of(self, conn_id: int) -> list[RouteKey]:
        """Every ``name:port`` a connection published, serving or on standby."""
        return sorted(self.by_conn.get(conn_id, ()))

    def __iter__(self) -> Iterator[Route[H]]:
        for served in self.routes.values():
            yield from served

    def __len__(self) -> int:
        return len(self.routes)
