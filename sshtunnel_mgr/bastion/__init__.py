"""The routing bastion: an asyncssh server that only splices named tunnels."""

from sshtunnel_mgr.bastion.run import serve
from sshtunnel_mgr.bastion.serve import Bastion

__all__ = ["Bastion", "serve"]
