"""The bastion's route table (sshtunnel_mgr/core/routing.py): plain data, no sockets."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest

from sshtunnel_mgr.core.routing import Route, RouteTable

AGENT_A = "SHA256:agent-a"
AGENT_B = "SHA256:agent-b"


def route(
    name: str = "homebox", port: int = 22, owner: str = AGENT_A, conn: int = 1, **kw: object
) -> Route[str]:
    return Route(name, port, owner, conn, handle=f"conn{conn}", **kw)  # type: ignore[arg-type]


def table(*routes: Route[str]) -> RouteTable[str]:
    t: RouteTable[str] = RouteTable()
    for r in routes:
        t, _ = t.publish(r)
    return t


def test_empty_table() -> None:
    t: RouteTable[str] = RouteTable()
    assert len(t) == 0
    assert list(t) == []
    assert t.lookup("homebox", 22) == ()
    assert t.pick("homebox", 22, 0) is None
    assert t.names_of(1) == []
    assert t.withdraw("homebox", 22, 1) is t


def test_publish_and_lookup() -> None:
    r = route()
    t, replaced = RouteTable[str]().publish(r)
    assert replaced == ()
    assert t.lookup("homebox", 22) == (r,)
    assert t.pick("homebox", 22, 0) is r
    assert t.pick("homebox", 22, 12345) is r
    assert t.lookup("homebox", 2222) == ()
    assert t.lookup("other", 22) == ()
    assert t.pick("homebox", 2222, 0) is None
    assert list(t) == [r]
    assert len(t) == 1


def test_route_keeps_spelling_and_since() -> None:
    r = route(spelling="HomeBox", since=12.5)
    t = table(r)
    (found,) = t.lookup("homebox", 22)
    assert (found.spelling, found.since, found.handle) == ("HomeBox", 12.5, "conn1")


def test_route_equality_ignores_handle() -> None:
    a = Route("homebox", 22, AGENT_A, 1, handle="x")
    b = Route("homebox", 22, AGENT_A, 1, handle="y")
    assert a == b


def test_publish_returns_a_new_table_and_leaves_the_old_snapshot_alone() -> None:
    r1 = route()
    t1 = table(r1)
    snapshot = dict(t1.routes)
    t2, _ = t1.publish(route("nas", 443, conn=1))
    t3, _ = t2.publish(route(owner=AGENT_B, conn=2))
    assert t2 is not t1 and t3 is not t2
    assert dict(t1.routes) == snapshot
    assert t1.lookup("nas", 443) == ()
    assert t1.lookup("homebox", 22) == (r1,)
    assert len(t2.lookup("homebox", 22)) == 1
    assert len(t3.lookup("homebox", 22)) == 2
    # withdrawing from the newest table does not reach back into older ones
    t4 = t3.withdraw_connection(1)
    t5 = t4.withdraw("homebox", 22, 2)
    assert t3.lookup("nas", 443) != ()
    assert len(t3.lookup("homebox", 22)) == 2
    assert len(t5) == 0


def test_routes_mapping_is_read_only() -> None:
    t = table(route())
    with pytest.raises(TypeError):
        t.routes[("x", 1)] = ()  # type: ignore[index]
    with pytest.raises(AttributeError):
        t.routes = {}  # type: ignore[misc]


def test_same_owner_takeover_replaces_the_old_route_and_returns_it() -> None:
    old = route(conn=1)
    new = route(conn=2)
    t1 = table(old)
    t2, replaced = t1.publish(new)
    assert replaced == (old,)
    assert replaced[0].handle == "conn1"
    assert t2.lookup("homebox", 22) == (new,)
    assert t2.lookup("homebox", 22)[0].conn_id == 2
    assert t2.names_of(1) == [("homebox", 22)]  # on standby: it still holds the forward
    assert t2.route_of("homebox", 22, 1) == old
    assert t2.names_of(2) == [("homebox", 22)]
    assert t1.lookup("homebox", 22)[0].conn_id == 1  # old snapshot unchanged


def test_takeover_keeps_other_owners() -> None:
    a1 = route(owner=AGENT_A, conn=1)
    b = route(owner=AGENT_B, conn=2)
    a2 = route(owner=AGENT_A, conn=3)
    t, replaced = table(a1, b).publish(a2)
    assert replaced == (a1,)
    served = t.lookup("homebox", 22)
    assert [r.conn_id for r in served] == [2, 3]


def test_different_owners_both_serve_and_pick_round_robins() -> None:
    a = route(owner=AGENT_A, conn=1)
    b = route(owner=AGENT_B, conn=2)
    t1, _ = RouteTable[str]().publish(a)
    t2, replaced = t1.publish(b)
    assert replaced == ()
    assert t2.lookup("homebox", 22) == (a, b)
    picks = [t2.pick("homebox", 22, n) for n in range(6)]
    assert [p.conn_id for p in picks if p is not None] == [1, 2, 1, 2, 1, 2]
    assert len(t2) == 1  # one name:port, served twice
    assert sorted(r.conn_id for r in t2) == [1, 2]


def test_same_name_different_ports_are_different_routes() -> None:
    t = table(route(port=22, conn=1), route(port=2222, conn=1))
    assert len(t) == 2
    assert sorted(t.names_of(1)) == [("homebox", 22), ("homebox", 2222)]
    assert t.pick("homebox", 2222, 0) is not None


@pytest.mark.parametrize(
    ("name", "port", "conn", "remaining"),
    [
        ("homebox", 22, 1, [("nas", 443, 1), ("homebox", 22, 2)]),
        ("homebox", 22, 2, [("homebox", 22, 1), ("nas", 443, 1)]),
        ("nas", 443, 1, [("homebox", 22, 1), ("homebox", 22, 2)]),
        ("nas", 443, 2, None),  # conn 2 does not serve nas: nothing changes
        ("homebox", 2222, 1, None),
        ("unknown", 22, 1, None),
    ],
)
def test_withdraw(
    name: str, port: int, conn: int, remaining: list[tuple[str, int, int]] | None
) -> None:
    t = table(
        route("homebox", 22, AGENT_A, 1),
        route("nas", 443, AGENT_A, 1),
        route("homebox", 22, AGENT_B, 2),
    )
    after = t.withdraw(name, port, conn)
    if remaining is None:
        assert after is t
    else:
        assert sorted((r.name, r.port, r.conn_id) for r in after) == sorted(remaining)
        assert len(list(t)) == 3  # the old snapshot still has every route


def test_withdraw_last_server_removes_the_key() -> None:
    t = table(route()).withdraw("homebox", 22, 1)
    assert len(t) == 0
    assert ("homebox", 22) not in t.routes
    assert t.pick("homebox", 22, 0) is None


def test_withdraw_connection() -> None:
    t = table(
        route("homebox", 22, AGENT_A, 1),
        route("nas", 443, AGENT_A, 1),
        route("homebox", 22, AGENT_B, 2),
        route("printer", 631, AGENT_B, 2),
    )
    assert sorted(t.names_of(1)) == [("homebox", 22), ("nas", 443)]
    after = t.withdraw_connection(1)
    assert after.names_of(1) == []
    assert sorted(after.names_of(2)) == [("homebox", 22), ("printer", 631)]
    assert ("nas", 443) not in after.routes
    assert [r.conn_id for r in after.lookup("homebox", 22)] == [2]
    assert len(after) == 2
    assert len(t) == 3  # old snapshot unchanged
    gone = after.withdraw_connection(2)
    assert len(gone) == 0
    assert list(gone) == []
    assert len(gone.withdraw_connection(99)) == 0


def test_withdraw_by_stale_conn_after_takeover_keeps_the_new_route() -> None:
    """The old connection's late cancel-tcpip-forward must not drop the new route; it
    only takes the old one off standby."""
    old = route(conn=1)
    new = route(conn=2)
    t, _ = table(old).publish(new)
    after = t.withdraw("homebox", 22, 1)
    assert after.lookup("homebox", 22) == (new,)
    assert after.route_of("homebox", 22, 1) is None
    assert after.withdraw("homebox", 22, 1) is after
    after_close = t.withdraw_connection(1)
    assert after_close.lookup("homebox", 22) == (new,)
    assert after_close.names_of(2) == [("homebox", 22)]


def test_republish_on_the_same_connection_replaces() -> None:
    first = route(conn=1, spelling="homebox")
    again = route(conn=1, spelling="HomeBox")
    t, replaced = table(first).publish(again)
    assert replaced == (first,)
    assert [r.spelling for r in t.lookup("homebox", 22)] == ["HomeBox"]


def test_names_of() -> None:
    t = table(route("a", 1, AGENT_A, 1), route("b", 2, AGENT_A, 1), route("a", 1, AGENT_B, 2))
    assert sorted(t.names_of(1)) == [("a", 1), ("b", 2)]
    assert t.names_of(2) == [("a", 1)]
    assert t.names_of(3) == []


@pytest.mark.parametrize("leave", ["withdraw", "close"])
def test_when_the_newest_connection_leaves_the_older_one_of_the_same_key_serves_again(
    leave: str,
) -> None:
    """A duplicate agent (same key) takes the name; when it goes, the first one, still
    connected, serves it again at once."""
    first, second, third = route(conn=1), route(conn=2), route(conn=3)
    t = table(first, second, third)
    assert t.lookup("homebox", 22) == (third,)
    gone = t.withdraw("homebox", 22, 3) if leave == "withdraw" else t.withdraw_connection(3)
    assert gone.lookup("homebox", 22) == (second,)  # the newest of the older ones
    gone = gone.withdraw("homebox", 22, 2) if leave == "withdraw" else gone.withdraw_connection(2)
    assert gone.lookup("homebox", 22) == (first,)
    assert gone.withdraw_connection(1).lookup("homebox", 22) == ()
    assert len(gone.withdraw_connection(1)) == 0


def test_standby_is_per_key_and_never_serves_beside_its_own_key() -> None:
    a1, b, a2 = route(owner=AGENT_A, conn=1), route(owner=AGENT_B, conn=2), route(conn=3)
    t = table(a1, b, a2)
    assert [r.conn_id for r in t.lookup("homebox", 22)] == [2, 3]
    assert [r.conn_id for r in t.withdraw_connection(2).lookup("homebox", 22)] == [3]
    back = t.withdraw_connection(3)
    assert sorted(r.conn_id for r in back.lookup("homebox", 22)) == [1, 2]
    assert sorted(r.conn_id for r in back) == [1, 2]  # iteration shows serving routes only


def test_a_republish_on_the_same_connection_leaves_no_standby() -> None:
    t = table(route(conn=1), route(conn=1))
    assert t.withdraw_connection(1).lookup("homebox", 22) == ()
    assert dict(t.standby) == {}


def _sets(index: Mapping[int, tuple[tuple[str, int], ...]]) -> dict[int, set[tuple[str, int]]]:
    return {conn: set(keys) for conn, keys in index.items()}


def test_the_per_connection_index_stays_in_step_with_the_table() -> None:
    """``names_of`` and ``withdraw_connection`` read an index kept by every change (no scan
    of the whole table per change: 10,000 idle agents publishing made that quadratic).
    Seeded random changes; after each one the index equals one built from scratch, no
    name is left with an empty entry, and the snapshots before stay untouched."""
    rng = random.Random(1729)
    owners = [AGENT_A, AGENT_B]
    t: RouteTable[str] = RouteTable()
    for step in range(600):
        old = t
        saved = (dict(old.routes), dict(old.standby), dict(old.by_conn))
        pick = rng.random()
        name, conn = f"n{rng.randrange(6)}", rng.randrange(1, 9)
        if pick < 0.55:
            t = t.publish(route(name=name, conn=conn, owner=rng.choice(owners)))[0]
        elif pick < 0.8:
            t = t.withdraw(name, 22, conn)
        else:
            t = t.withdraw_connection(conn)
        rebuilt = RouteTable(t.routes, t.standby)
        assert _sets(t.by_conn) == _sets(rebuilt.by_conn), step  # the order is no meaning
        assert all(len(set(keys)) == len(keys) for keys in t.by_conn.values()), step
        assert all(t.routes.values()) and all(t.standby.values())
        for c in range(1, 9):
            assert t.names_of(c) == sorted(
                k for k in {*t.routes, *t.standby} if t.route_of(*k, c) is not None
            )
        assert (dict(old.routes), dict(old.standby), dict(old.by_conn)) == saved
