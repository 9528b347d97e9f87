"""The one refusal path: every "no" the bastion says is logged, counted and audited here.

A refusal is one call, ``Refusals.refuse(stage, reason, ...)``: one log event (``refused``,
``auth refused``, ``refused publish``, ``refused open``, ...; WARNING unless said), one bump
of a metrics counter when the refusal has one, and one ``refused`` audit record with its
``stage`` and ``reason``. Fields given to it go to the log line and the audit record alike,
so the two always say the same thing. Refusals that come in floods (a penalised source,
sessions over the cap, connections leaving before login) are counted every time and
recorded (logged and audited) only when ``record`` is true: their caller rate-limits.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Protocol

from sshtunnel_mgr.bastion.audit import AuditLog, Peer
from sshtunnel_mgr.runtime.logsetup import event as log_event

log = logging.getLogger("sshtunnel_mgr.bastion")


class RefusalSink(Protocol):
    """Where refusals go: the bastion's audit log and metrics counters (``BastionState``)."""

    audit: AuditLog
    counters: Counter[str]


class Refusals:
    """A connection's refusals: ``peer`` says who is refused (conn, address, key)."""

    def __init__(self, sink: RefusalSink, peer: Peer) -> None:
        self._sink = sink
        self._peer = peer

    def refuse(
        self,
        stage: str,
        reason: str,
        *,
        event: str = "refused",
        level: int = logging.WARNING,
        counter: str = "",
        record: bool = True,
        audit: bool = True,
        log_only: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        """Refuse at ``stage`` (audit's vocabulary: auth, penalty, limit, publish, open,
        session, key_request, connection, handshake, revoked) for ``reason``.

        ``counter`` names the ``BastionState.counters`` entry to bump (always, even when
        not recorded); ``audit=False`` for a refusal with no audit record (shutting down);
        ``log_only`` adds fields to the log line alone (a note for the operator)."""
        sink, peer = self._sink, self._peer
        if counter:
            sink.counters[counter] += 1
        if not record:
            return
        who: dict[str, Any] = {"conn": peer.conn_id}
        if peer.entry is not None:
            who["key"] = peer.entry.label
        extra = log_only or {}
        log_event(log, level, event, **who, from_=peer.peer_ip, **fields, **extra, reason=reason)
        if audit:
            sink.audit.refused(peer, stage, reason, **fields)
