"""The agent (``sshtun up``): outbound SSH connections that publish named tunnels."""

from sshtunnel_mgr.agent.serve import Agent, serve

__all__ = ["Agent", "serve"]
