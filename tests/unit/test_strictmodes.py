"""StrictModes for the access file (issue 8, item 9): the pure decision, as a table."""

from __future__ import annotations

import stat

import pytest

from sshtunnel_mgr.runtime.strictmodes import problem

FILE, DIR = stat.S_IFREG, stat.S_IFDIR
ME = 1000
OWNERS = {0, ME}


@pytest.mark.parametrize(
    ("kind", "mode", "uid", "owners", "reason", "fix"),
    [
        # files: root's or mine, nobody else may write
        (FILE, 0o600, ME, OWNERS, None, None),
        (FILE, 0o644, 0, OWNERS, None, None),
        (FILE, 0o444, ME, OWNERS, None, None),
        (
            FILE,
            0o666,
            ME,
            OWNERS,
            "file /a is writable by group and others (mode 0666): anyone who can write it "
            "could grant any key access",
            "chmod 600 /a",
        ),
        (FILE, 0o620, ME, OWNERS, "file /a is writable by group (mode 0620)", "chmod 600 /a"),
        (FILE, 0o602, 0, OWNERS, "file /a is writable by others (mode 0602)", "chmod 600 /a"),
        (
            FILE,
            0o600,
            4242,
            OWNERS,
            "file /a is owned by uid 4242, not by root or uid 1000: that user could grant "
            "any key access",
            "chown 1000 /a",
        ),
        (FILE, 0o600, 4242, None, None, None),  # any owner (an admin's view as root)
        (FILE, 0o666, 4242, None, "file /a is writable by group and others", "chmod 600 /a"),
        (stat.S_IFIFO, 0o600, ME, OWNERS, "/a is not a regular file", "replace /a"),
        # directories: the same, but a sticky one (like /tmp) may be writable
        (DIR, 0o755, 0, OWNERS, None, None),
        (DIR, 0o700, ME, OWNERS, None, None),
        (DIR, 0o1777, 0, OWNERS, None, None),
        (DIR, 0o1770, 0, OWNERS, None, None),
        (
            DIR,
            0o777,
            0,
            OWNERS,
            "directory /a is writable by group and others (mode 0777)",
            "chmod go-w /a",
        ),
        (DIR, 0o775, ME, OWNERS, "directory /a is writable by group (mode 0775)", "chmod go-w"),
        (DIR, 0o755, 4242, OWNERS, "directory /a is owned by uid 4242", "chown 1000 /a"),
    ],
)
def test_problem(
    kind: int, mode: int, uid: int, owners: set[int] | None, reason: str | None, fix: str | None
) -> None:
    found = problem("/a", kind | mode, uid, owners)
    if reason is None:
        assert found is None
        return
    assert found is not None
    assert found.reason.startswith(reason)
    assert fix is not None and found.fix.startswith(fix)
