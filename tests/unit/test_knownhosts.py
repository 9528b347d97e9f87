"""known_hosts updates for host key rotation (sshtunnel_mgr/core/knownhosts.py)."""

from __future__ import annotations

import pytest

from sshtunnel_mgr.core.knownhosts import host_pattern, update_known_hosts

OLD = "ssh-ed25519 AAAAold"
NEW = "ssh-ed25519 AAAAnew"


@pytest.mark.parametrize(
    ("text", "added", "removed", "expected", "counts"),
    [
        (f"[b]:2222 {OLD}\n", [NEW], [], f"[b]:2222 {OLD}\n[b]:2222 {NEW}\n", (1, 0)),
        (f"[b]:2222 {OLD}\n[b]:2222 {NEW}\n", [], [OLD], f"[b]:2222 {NEW}\n", (0, 1)),
        (f"[b]:2222 {OLD}\n", [OLD], [], f"[b]:2222 {OLD}\n", (0, 0)),  # already there
        # other hosts, hashed lines, markers and comments are never touched
        (
            f"# pinned\nother {OLD}\n|1|abc|def {OLD}\n@revoked [b]:2222 {OLD}\n[b]:2222 {OLD}\n",
            [NEW],
            [OLD],
            f"# pinned\nother {OLD}\n|1|abc|def {OLD}\n@revoked [b]:2222 {OLD}\n[b]:2222 {NEW}\n",
            (1, 1),
        ),
        (f"x,[b]:2222 {OLD} comment\n", [], [OLD], "", (0, 1)),
    ],
)
def test_update(
    text: str, added: list[str], removed: list[str], expected: str, counts: tuple[int, int]
) -> None:
    new, n_added, n_removed = update_known_hosts(text, "[b]:2222", added, removed)
    assert new == expected and (n_added, n_removed) == counts


def test_host_pattern() -> None:
    assert host_pattern("bastion.example.com", 22) == "bastion.example.com"
    assert host_pattern("127.0.0.1", 2222) == "[127.0.0.1]:2222"
