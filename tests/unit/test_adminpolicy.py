"""Who is trusted at either end of the admin socket: the rules as tables, no sockets."""

from __future__ import annotations

import stat

import pytest

from sshtunnel_mgr.core.adminpolicy import (
    PathFacts,
    client_dir_problem,
    handed_by_root,
    server_dir_problem,
    server_peer_problem,
    trusted_peers,
)

ME, OTHER, DYN = 1000, 1001, 61234
TMP = stat.S_IFDIR | 0o1777  # /tmp: root's, sticky, writable by all
RUN = stat.S_IFDIR | 0o755  # /run: root's, writable by root alone


def facts(
    mode: int = 0o700,
    uid: int = ME,
    kind: int = stat.S_IFDIR,
    parent_uid: int = 0,
    parent_mode: int = TMP,
) -> PathFacts:
    return PathFacts(
        is_symlink=kind == stat.S_IFLNK,
        is_dir=kind == stat.S_IFDIR,
        uid=uid,
        mode=kind | mode,
        parent_uid=parent_uid,
        parent_mode=parent_mode,
    )


@pytest.mark.parametrize(
    ("f", "me", "problem"),
    [
        (facts(), ME, None),
        (facts(0o500), ME, None),
        (facts(uid=0), 0, None),
        (facts(0o755), ME, "has mode 0755"),
        (facts(0o710), ME, "has mode 0710"),
        (facts(0o701), ME, "has mode 0701"),
        (facts(0o777), ME, "has mode 0777"),
        (facts(kind=stat.S_IFLNK, mode=0o777), ME, "is a symlink"),
        (facts(kind=stat.S_IFREG, mode=0o600), ME, "is not a directory"),
        (facts(uid=OTHER), ME, "owned by uid 1001, not by this process (uid 1000)"),
        (facts(uid=0), ME, "owned by uid 0"),  # root's: the server cannot own what is in it
        (facts(uid=ME, parent_mode=RUN), 0, "owned by uid 1000"),
    ],
)
def test_server_binds_only_into_its_own_private_directory(
    f: PathFacts, me: int, problem: str | None
) -> None:
    got = server_dir_problem("/d", f, me)
    assert got is None if problem is None else (got is not None and problem in got), got


@pytest.mark.parametrize(
    ("f", "me", "problem"),
    [
        (facts(), ME, None),  # /tmp/sshtun-1000 made by its user
        (facts(uid=0), ME, None),  # root's directory
        (facts(uid=0, parent_mode=RUN), 0, None),
        (facts(uid=DYN, parent_mode=RUN), 0, None),  # RuntimeDirectory= of a DynamicUser
        (facts(uid=OTHER), ME, "owned by uid 1001, not by uid 1000 or root"),  # pre-created
        (facts(uid=OTHER), 0, "its parent is not root's alone"),  # in /tmp: anybody's
        (facts(uid=OTHER, parent_uid=OTHER, parent_mode=RUN), 0, "not root's alone"),
        (facts(uid=DYN, parent_mode=stat.S_IFDIR | 0o775), 0, "not root's alone"),
        (facts(uid=DYN, parent_mode=RUN), ME, "owned by uid 61234"),  # not root: no exception
        (facts(0o755), ME, "has mode 0755"),
        (facts(0o750, uid=DYN, parent_mode=RUN), 0, "has mode 0750"),
        (facts(kind=stat.S_IFLNK, mode=0o777), ME, "is a symlink"),
        (facts(kind=stat.S_IFLNK, mode=0o777, uid=0), 0, "is a symlink"),
    ],
)
def test_client_trusts_a_directory_of_its_own_of_root_or_handed_out_by_root(
    f: PathFacts, me: int, problem: str | None
) -> None:
    got = client_dir_problem("/d", f, me)
    assert got is None if problem is None else (got is not None and problem in got), got


@pytest.mark.parametrize(
    ("f", "me", "peers"),
    [
        (facts(), ME, {ME, 0}),
        (facts(uid=0), ME, {ME, 0}),
        (facts(uid=0, parent_mode=RUN), 0, {0}),
        (facts(uid=DYN, parent_mode=RUN), 0, {0, DYN}),
        (facts(uid=OTHER), 0, {0}),  # (the directory itself is refused anyway)
    ],
)
def test_trusted_peers(f: PathFacts, me: int, peers: set[int]) -> None:
    assert trusted_peers(f, me) == peers


@pytest.mark.parametrize(
    ("parent_uid", "parent_mode", "handed"),
    [(0, RUN, True), (0, TMP, False), (0, stat.S_IFDIR | 0o775, False), (ME, RUN, False)],
)
def test_handed_by_root(parent_uid: int, parent_mode: int, handed: bool) -> None:
    assert handed_by_root(facts(parent_uid=parent_uid, parent_mode=parent_mode)) is handed


@pytest.mark.parametrize(
    ("peer", "me", "allowed"),
    [(ME, ME, True), (0, ME, True), (None, ME, True), (OTHER, ME, False), (ME, DYN, False)],
)
def test_server_answers_its_own_uid_and_root(peer: int | None, me: int, allowed: bool) -> None:
    problem = server_peer_problem(peer, me)
    assert (problem is None) is allowed
    if not allowed:
        assert f"uid {peer} may not use this admin socket" in (problem or "")
