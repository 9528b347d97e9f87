"""What the CLI tests share: small valid configs for each role, and a fixture that undoes
what ``main()`` does to logging (it points the root logger at the captured stderr):
autouse, so a test module that imports it gets it for every test."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

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


def systemd_agent(directory: Path, rotating: bool) -> tuple[Path, Path]:
    """The agent layout ``sshtun init --systemd`` writes (``key =
    "$CREDENTIALS_DIRECTORY/agent_key"``, the unit's credential source ``agent_key`` beside
    the config), with an admin socket nobody serves; with ``rotating``, the record that
    ``sshtun keys rotate --key SOURCE`` writes before it enrols (keys/rotation.py). Returns
    (config, credential source)."""
    from sshtunnel_mgr.keys import rotation
    from sshtunnel_mgr.keys.store import generate_key

    source = directory / "agent_key"
    generate_key(source)
    config = directory / "agent.toml"
    text = AGENT_TOML.replace('key = "agent_key"', 'key = "$CREDENTIALS_DIRECTORY/agent_key"')
    config.write_text(text.replace("[agent]\n", f'[agent]\nadmin_socket = "{directory}/no.sock"\n'))
    if rotating:
        nxt, _ = rotation.prepare(source, reuse=False)
        old, new = rotation.file_fingerprint(source), rotation.file_fingerprint(nxt)
        rotation.save_state(source, rotation.RotationState(old, new, "enrol"))
    return config, source
