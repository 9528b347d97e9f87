"""Every TOML snippet in README.md is config the code accepts: each ```toml block and each
``<<'TOML'`` heredoc is parsed, merged over the smallest complete config (a fragment such
as ``[bastion.web]`` or ``[[agent.tunnels]]`` alone gets the required keys around it) and
validated by ``parse_config``, so a key the README shows cannot be misspelt or gone."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from sshtunnel_mgr.core.access import parse_line
from sshtunnel_mgr.core.config import parse_config

README = Path(__file__).resolve().parents[2] / "README.md"
HK = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
BASE_AGENT = {
    "key": "agent_key",
    "bastions": [{"address": "bastion.example.com:2222", "host_key": HK}],
    "tunnels": [{"name": "homebox"}],
}
BASE_BASTION = {"host_key": "bastion_host_key", "access_file": "access"}
PLACEHOLDER = re.compile(r'"ssh-ed25519 AAAA\.\.\."')  # the README's elided keys


def snippets() -> list[tuple[int, str]]:
    text = README.read_text(encoding="utf-8")
    found = []
    for match in re.finditer(r"^```toml\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        found.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    for match in re.finditer(r"<<'TOML'\n(.*?)^TOML$", text, re.MULTILINE | re.DOTALL):
        found.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    return found


def complete(fragment: dict[str, Any]) -> dict[str, Any]:
    """The fragment over the smallest complete config for the role(s) it touches."""
    out: dict[str, Any] = {}
    for role, base in (("agent", BASE_AGENT), ("bastion", BASE_BASTION)):
        if role in fragment:
            out[role] = {**base, **fragment[role]}
    return out


def test_the_readme_has_toml_snippets() -> None:
    assert len(snippets()) >= 5


@pytest.mark.parametrize(("line", "text"), snippets(), ids=lambda v: str(v)[:20])
def test_a_readme_snippet_is_valid_config(line: int, text: str, tmp_path: Path) -> None:
    raw = tomllib.loads(PLACEHOLDER.sub(f'"{HK}"', text))
    assert set(raw) <= {"agent", "bastion"}, f"README.md:{line}: unknown section"
    config = parse_config(tomli_w.dumps(complete(raw)), f"README.md:{line}", tmp_path)
    assert config.agent is not None or config.bastion is not None


def test_the_web_sections_access_lines_allow_what_they_say() -> None:
    """The access-file lines the web sections show (keys elided in the README) publish
    both ports of the name for HTTP-01."""
    text = README.read_text(encoding="utf-8")
    lines = re.findall(r'`(permitlisten="cloud\.example\.com:443,[^`]*) ssh-ed25519', text)
    assert lines
    for options in lines:
        entry = parse_line(f"{options} {HK}", 1)
        assert entry.may_publish("cloud.example.com", 443)
        assert entry.may_publish("cloud.example.com", 80)
