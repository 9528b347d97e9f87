"""The routing bastion: an asyncssh server that only splices named tunnels."""

from sshtunnel_mgr.bastion.serve import Bastion, serve

__all__ = ["Bastion", "serve"]
