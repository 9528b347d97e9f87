"""A key's ``expiry-time`` closes its live connections when it passes (as a revoke does),
logged and audited; a reload that extends it keeps them. The bastion's wall clock is
replaced (expiry-time is wall-clock time); the expiry itself fires from the loop's timer,
and the test waits on the connections closing, never on a fixed sleep."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh
import pytest

from sshtunnel_mgr.keys.store import load_private_key
from tests.harness import Keys, access_text, wait_for
from tests.integration.conftest import logged
from tests.integration.test_abuse import connect, echo_scene, events

EXPIRY = datetime(2031, 6, 1, 12, 0, 0, tzinfo=UTC)


class Wall:
    """The bastion's wall clock, moved by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def stamp(when: datetime) -> str:
    return when.strftime("%Y%m%d%H%M%SZ")


async def echo(conn: asyncssh.SSHClientConnection, data: bytes) -> bytes:
    reader, writer = await conn.open_connection("homebox", 22)
    writer.write(data)
    got = await reader.readexactly(len(data))
    writer.close()
    return got


async def test_a_live_connection_is_closed_when_its_key_expires(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = keys.extra("bob")
    async with echo_scene(keys, tmp_path) as s:
        wall = Wall(EXPIRY - timedelta(seconds=2))
        s.bastion.state.wall = wall
        access = s.bastion.config.access_file

        def write_access(bob_expiry: datetime) -> None:
            expiring = [
                f'permitopen="homebox:22",expiry-time="{stamp(bob_expiry)}" {other.public_line}'
            ]
            text = access_text(keys, extra=expiring)
            text = text.replace(
                'permitopen="homebox:22" ',
                f'permitopen="homebox:22",expiry-time="{stamp(EXPIRY)}" ',
            )
            access.write_text(text)

        write_access(EXPIRY)
        assert s.bastion.reload(s.bastion.config)["ok"]
        async with (
            connect(keys, s.bastion.port) as alice,
            connect(keys, s.bastion.port, load_private_key(other.path)) as bob,
        ):
            assert await echo(alice, b"before") == b"before"
            assert await echo(bob, b"before") == b"before"
            # Bob's key is extended by a reload; then the clock passes the old expiry.
            write_access(EXPIRY + timedelta(days=30))
            assert s.bastion.reload(s.bastion.config)["ok"]
            wall.now = EXPIRY + timedelta(seconds=1)
            # Alice's connection is closed by its expiry timer (about 2 s after login).
            await asyncio.wait_for(alice.wait_closed(), 30)
            with pytest.raises((asyncssh.Error, OSError)):
                await alice.open_connection("homebox", 22)
            # Bob's stays and still routes; the agent's (no expiry) is untouched.
            assert await echo(bob, b"after") == b"after"
            assert s.bastion.state.routes.lookup("homebox", 22)

        await wait_for(lambda: any(e["stage"] == "revoked" for e in events(s.audit, "refused")))
    label = keys.client.fingerprint
    assert logged(caplog, "key expired", label, "expiry=2031-06-01T12:00:00+00:00")
    assert logged(caplog, "revoked", label, "expired at 2031-06-01T12:00:00+00:00")
    assert not logged(caplog, "key expired", other.fingerprint)
    (revoked,) = [e for e in events(s.audit, "refused") if e["stage"] == "revoked"]
    assert revoked["key"] == label
    assert "expired at 2031-06-01T12:00:00+00:00" in revoked["reason"]
