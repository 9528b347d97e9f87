"""What the supervisor and its workers say to each other: one JSON object per line.

Worker → supervisor: ``{"op": "publish"|"withdraw"|"drop", "seq": n, ...}`` (its route
changes, numbered), ``{"op": "usage", "key": k, "conns": d, "chans": d[, "web": d]}`` (its
per-key counts changed by these; the supervisor sends each worker's totals to all) and
``{"op": "ready"}``. Supervisor → worker: ``{"op": "table", ..., "more": bool}`` lines
(every route, once, when the worker starts, in parts of TABLE_ROWS) then each change of
any worker, in the supervisor's order, as ``{"op": ..., "worker": w, "seq": n, ...}``,
and ``{"op": "gone", "worker": w}`` when a worker died. Every worker applies the same
changes in the same order with ``apply``, so every table is the supervisor's (the route
handle is a worker number).
"""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

from sshtunnel_mgr.core.routing import Route, RouteKey, RouteTable

MAX_LINE = 1024 * 1024  # one control message; a table is sent in parts (table_messages)


def route_fields(route: Route[Any]) -> dict[str, Any]:
    return {
        "name": route.name,
        "port": route.port,
        "owner": route.owner,
        "conn": route.conn_id,
        "spelling": route.spelling,
        "since": route.since,
    }


def route_from(fields: dict[str, Any], worker: int) -> Route[int]:
    """A route of ``worker`` as the control line carried it; a spelling equal to the
    name is the name itself (every process keeps every worker's routes: one string less
    each). Not interned: names and owners are mostly unique, and an interned string
    costs its entry in the interpreter's table too."""
    name = str(fields["name"])
    spelling = str(fields.get("spelling", ""))
    return Route(
        name=name,
        port=int(fields["port"]),
        owner=str(fields["owner"]),
        conn_id=int(fields["conn"]),
        handle=worker,
        spelling=name if spelling == name else spelling,
        since=float(fields.get("since", 0.0)),
    )


def apply(table: RouteTable[int], worker: int, message: dict[str, Any]) -> RouteTable[int]:
    """``table`` after one change ``message`` of ``worker`` (the supervisor's rules)."""
    op = message.get("op")
    if op == "publish":
        return table.publish(route_from(message["route"], worker))[0]
    if op == "withdraw":
        return table.withdraw(str(message["name"]), int(message["port"]), int(message["conn"]))
    if op == "drop":
        return table.withdraw_connection(int(message["conn"]))
    if op == "gone":
        conns = {
            r.conn_id
            for served in (*table.routes.values(), *table.standby.values())
            for r in served
            if r.handle == worker
        }
        for conn_id in conns:
            table = table.withdraw_connection(conn_id)
        return table
    return table


def table_message(table: RouteTable[int]) -> dict[str, Any]:
    def rows(routes: Any) -> list[dict[str, Any]]:
        return [
            {**route_fields(r), "worker": r.handle} for served in routes.values() for r in served
        ]

    return {"op": "table", "routes": rows(table.routes), "standby": rows(table.standby)}


TABLE_ROWS = 1000  # rows per "table" line: ~250 KB, well under MAX_LINE


def table_messages(table: RouteTable[int]) -> list[dict[str, Any]]:
    """``table`` as several "table" lines of at most TABLE_ROWS rows (10,000 names do not
    fit one control line); every line but the last says ``"more": true``."""
    whole = table_message(table)
    rows = [("routes", r) for r in whole["routes"]] + [("standby", r) for r in whole["standby"]]
    parts: list[dict[str, Any]] = []
    for start in range(0, max(len(rows), 1), TABLE_ROWS):
        chunk = rows[start : start + TABLE_ROWS]
        parts.append(
            {
                "op": "table",
                "routes": [r for kind, r in chunk if kind == "routes"],
                "standby": [r for kind, r in chunk if kind == "standby"],
                "more": True,
            }
        )
    parts[-1]["more"] = False
    return parts


def table_from(message: dict[str, Any]) -> RouteTable[int]:
    def grouped(rows: list[dict[str, Any]]) -> dict[RouteKey, tuple[Route[int], ...]]:
        out: dict[RouteKey, tuple[Route[int], ...]] = {}
        for row in rows:
            route = route_from(row, int(row["worker"]))
            key = (route.name, route.port)
            out[key] = (*out.get(key, ()), route)
        return out

    return RouteTable(
        MappingProxyType(grouped(message.get("routes", []))),
        MappingProxyType(grouped(message.get("standby", []))),
    )


def usage_message(worker: int, key: str, row: list[int]) -> dict[str, Any]:
    """Worker ``worker``'s totals for ``key`` (connections, routed channels, routed web
    connections), as the supervisor tells every worker."""
    conns, chans, web = row
    return {"op": "usage", "worker": worker, "key": key, "conns": conns, "chans": chans, "web": web}


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("a control message is a JSON object")
    return message
