"""The routing bastion: an asyncssh server that only splices named tunnels.

``Bastion`` (bastion/serve.py) is imported on first use, so a supervisor of workers
(bastion/run.py -> bastion/workers/supervisor.py), which runs no SSH, never loads asyncssh,
cryptography or keyring: about 40 MiB less per bastion with ``workers`` over 1. The
service entry point is ``sshtunnel_mgr.bastion.run.serve``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sshtunnel_mgr.bastion.serve import Bastion

__all__ = ["Bastion"]


def __getattr__(name: str) -> Any:
    if name == "Bastion":
        from sshtunnel_mgr.bastion.serve import Bastion

        return Bastion
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
