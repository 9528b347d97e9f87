"""What the CLI tests share: small valid configs for each role, and a fixture that undoes
what ``main()`` does to logging (it points the root logger at the captured stderr):
autouse, so a test module that imports it gets it for every test."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

HK = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
AGENT_TOML = f"""\
[agent]
key = "agent_key"
[[agent.bastions]]
address = "bastion.example.com:2222"
host_key = "{HK}"
[[agent.tunnels]]
name = "homebox"
"""
BASTION_TOML = """\
[bastion]
listen = ["127.0.0.1:0"]
host_key = "bastion_host_key"
access_file = "access"
"""


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """main() points the root logger at the (captured) stderr of the moment; undo that."""
    root = logging.getLogger()
    asyncssh_logger = logging.getLogger("asyncssh")
    saved = (root.handlers[:], root.level, asyncssh_logger.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    asyncssh_logger.setLevel(saved[2])
