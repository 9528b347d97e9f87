"""The global route table of a multi-process bastion, as plain data: every worker applies
the supervisor's changes in its order (wire.apply), and replays its own changes the
supervisor has not echoed yet (Mesh), so a name it just published is routable at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from sshtunnel_mgr.bastion.workers import wire
from sshtunnel_mgr.bastion.workers.mesh import Mesh
from sshtunnel_mgr.core.routing import Route, RouteTable


def route(conn: int, owner: str = "SHA256:agent", name: str = "homebox") -> Route[Any]:
    return Route(name=name, port=22, owner=owner, conn_id=conn, handle=None, since=float(conn))


def publish(conn: int, seq: int, owner: str = "SHA256:agent") -> dict[str, Any]:
    return {"op": "publish", "seq": seq, "route": wire.route_fields(route(conn, owner))}


def serving(table: RouteTable[int]) -> list[tuple[int, int]]:
    return [(r.handle, r.conn_id) for r in table.lookup("homebox", 22)]


def test_takeover_across_workers_and_a_worker_gone() -> None:
    table: RouteTable[int] = RouteTable()
    table = wire.apply(table, 1, publish(11, 1))
    table = wire.apply(table, 0, publish(21, 1))  # same key, newer, on worker 0: takes over
    assert serving(table) == [(0, 21)]
    assert [r.conn_id for r in table.standby[("homebox", 22)]] == [11]
    table = wire.apply(table, 0, {"op": "gone"})  # worker 0 died: the standby serves again
    assert serving(table) == [(1, 11)]
    table = wire.apply(table, 0, publish(31, 2, owner="SHA256:other"))  # another key: both
    assert serving(table) == [(1, 11), (0, 31)]
    table = wire.apply(table, 1, {"op": "drop", "seq": 2, "conn": 11})
    assert serving(table) == [(0, 31)]


def test_a_table_survives_the_wire() -> None:
    table: RouteTable[int] = RouteTable()
    table = wire.apply(table, 1, publish(11, 1))
    table = wire.apply(table, 0, publish(21, 1))
    again = wire.table_from(wire.decode(wire.encode(wire.table_message(table))))
    assert serving(again) == serving(table)
    assert again.standby == table.standby


def test_a_large_table_goes_in_parts_each_under_one_line(tmp_path: Path) -> None:
    """10,000 names do not fit one control line: the supervisor sends parts, the worker
    installs the table once the last part arrives (not a half table meanwhile)."""
    table: RouteTable[int] = RouteTable()
    for conn in range(1, 10_001):
        message = publish(conn, 1)
        message["route"]["name"] = f"n{conn}.many.test"
        table = wire.apply(table, conn % 2, message)
    parts = wire.table_messages(table)
    assert len(parts) > 1 and [p["more"] for p in parts] == [True] * (len(parts) - 1) + [False]
    mesh = Mesh(0, tmp_path, cast(Any, None))
    for part in parts:
        line = wire.encode(part)
        assert len(line) < wire.MAX_LINE
        assert len(mesh.table) == 0  # nothing installed until the last part
        mesh.received(wire.decode(line))

    def rows(t: RouteTable[int]) -> list[tuple[str, int, int]]:
        return sorted((r.name, r.handle, r.conn_id) for r in t)

    assert rows(mesh.table) == rows(table) and len(mesh.table) == 10_000
    assert wire.table_messages(RouteTable()) == [
        {"op": "table", "routes": [], "standby": [], "more": False}
    ]


def test_own_changes_count_before_the_supervisor_echoes_them(tmp_path: Path) -> None:
    mesh = Mesh(1, tmp_path, cast(Any, None))  # no line to the supervisor in this test
    mesh.published(route(11))
    assert serving(mesh.table) == [(1, 11)]  # at once, before any echo
    mesh.received({"op": "table", "routes": [], "standby": []})  # a snapshot without it
    assert serving(mesh.table) == [(1, 11)]  # still replayed on top
    mesh.received({**publish(21, 1), "worker": 0})  # worker 0 published first (same key)
    assert serving(mesh.table) == [(1, 11)]  # ours is replayed after it: the newest
    mesh.received({**publish(11, 1), "worker": 1})  # the echo of ours, in the same order
    assert serving(mesh.table) == [(1, 11)]
    mesh.withdrawn("homebox", 22, 11)  # ours leaves: worker 0's standby serves at once
    assert serving(mesh.table) == [(0, 21)]
    echo = {"op": "withdraw", "seq": 2, "name": "homebox", "port": 22, "conn": 11, "worker": 1}
    mesh.received(echo)
    assert serving(mesh.table) == [(0, 21)] and serving(mesh.confirmed) == [(0, 21)]


class _Lines:
    """A writer that keeps what the mesh wrote to the supervisor."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def write(self, data: bytes) -> None:
        self.lines.extend(wire.decode(line) for line in data.splitlines())

    def is_closing(self) -> bool:
        return False


async def test_channel_and_web_counts_are_summed_before_they_go(tmp_path: Path) -> None:
    """A web request claims and releases its key's count: 50 such requests and a channel
    that opened go as one line per key after the batch (the claims and releases cancel);
    a login goes at once, with what was waiting."""
    mesh = Mesh(0, tmp_path, cast(Any, None))
    lines = _Lines()
    mesh._writer = cast(Any, lines)
    for _ in range(50):
        mesh.web_claimed("SHA256:k", 1)
        mesh.web_claimed("SHA256:k", -1)
    mesh.usage("SHA256:k", 0, 1)  # a routed channel opened
    mesh.web_claimed("SHA256:k", 1)  # a web connection still open
    assert lines.lines == []
    for _ in range(500):  # the batch's timer (bounded wait, nothing timed)
        if lines.lines:
            break
        await asyncio.sleep(0.01)
    usage = {"op": "usage", "key": "SHA256:k"}
    assert lines.lines == [{**usage, "conns": 0, "chans": 1, "web": 1}]
    mesh.usage("SHA256:k", 0, -1)
    mesh.usage("SHA256:k", 1, 0)  # a login: at once, with the waiting channel count
    assert lines.lines[1:] == [{**usage, "conns": 1, "chans": -1}]
