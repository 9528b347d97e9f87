"""Why a connection ended before logging in, in words an operator can act on (pure)."""

from __future__ import annotations

import re

MAX_OFFERED = 300  # a client's algorithm list is its own choice: keep the log line short

_NO_MATCH = re.compile(r"No matching (.+?) algorithm found, sent .* and received (.*)", re.S)


def handshake_reason(text: str) -> str:
    """asyncssh's disconnect reason, with a failed negotiation said as what was missing and
    what the client offered: ``no common MAC algorithm; client offered hmac-sha1``."""
    text = text.strip() or "closed by the client"
    match = _NO_MATCH.fullmatch(text)
    if match is None:
        return text[:MAX_OFFERED]
    kind, offered = match[1], match[2]
    if len(offered) > MAX_OFFERED:
        offered = offered[:MAX_OFFERED] + "..."
    return f"no common {kind} algorithm; client offered {offered}"
