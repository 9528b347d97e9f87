"""The few words agent and bastion say to each other beyond plain SSH (pure constants).

The bastion announces a graceful shutdown with an SSH debug message (SSH_MSG_DEBUG, which
every SSH implementation accepts and ignores if it does not know it): an sshtun agent then
reconnects at once — a restarted or another bastion behind the same address gets its names
— while the sessions already routed over the old connection drain.
"""

from __future__ import annotations

DRAIN_NOTICE = "sshtun-drain: this bastion is shutting down; reconnect"

# How the bastion refuses a name nobody serves (the reason of a failed channel open). An
# agent whose probe of its own name gets this has lost the name: it publishes it again.
NOT_PUBLISHED = "is not published (no agent serves it)"
