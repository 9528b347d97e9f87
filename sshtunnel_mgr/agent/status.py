"""What the agent knows about one bastion link, ``LinkStatus``: read by ``sshtun status``,
the metrics and systemd's STATUS line; written only by the link's own modules."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LinkStatus:
    """What the agent knows about one bastion link (read by status reporting)."""

    bastion: str
    state: str = "connecting"  # connecting | up | backoff | failed | stopped
    up_since: float | None = None
    last_error: str = ""
    next_retry_at: float | None = None
    published: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    connects: int = 0
    last_connected_at: float | None = None
    probe_ok: bool = False
    last_probe_at: float | None = None
    probe_error: str = ""
