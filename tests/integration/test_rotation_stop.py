"""An agent stopped while a key rotation's hand-over waits on the bastion.

The stop cancels the rotation and waits for it: the new key's connection does not outlive
the agent, the admin request that asked for the rotation ends with the service (answered:
the agent stopped), and the rotation is left exactly as a crash at that step leaves it
(test_rotation_crash.py, ``agent:handover-published``): the record says ``enrol``, the key
file still holds the old key, which the bastion still accepts, and a rerun of ``sshtun keys
rotate`` with the agent restarted finishes it. Before, the hand-over kept waiting (and the
new connection stayed open) after the agent had said it stopped, until the bastion answered.

Real peers: the in-process sshtun bastion, which holds its answer to the new connection's
``tcpip-forward``, the in-process agent, the real ``sshtun keys
rotate`` as a child process, the home sshd and the real ``ssh -J``. No sleeps."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from sshtunnel_mgr.bastion import Bastion
from sshtunnel_mgr.keys import rotation
from sshtunnel_mgr.keys.inventory import facts_from_public
from tests.harness import SSHTUN, Keys, process, wait_for
from tests.integration.test_link_serialised import Gate, connection_class
from tests.integration.test_rotation import scene

IN_FLIGHT = ("AdminServer._serve", "Rotator._rotate")  # the admin request, the rotation


def hold_new_key_publishes(monkeypatch: pytest.MonkeyPatch, bastion: Bastion, old_fp: str) -> Gate:
    """Hold the bastion's answer to each ``tcpip-forward`` from a key other than
    ``old_fp`` until ``release()``; a connection gone by then is refused. (The real
    bastion answers at once; only this hold can answer after the connection has closed,
    and publishing for a closed connection would leave a dead route behind.)"""
    cls = connection_class(bastion)
    original = cls.server_requested
    gate = Gate()

    def server_requested(self: Any, host: str, port: int) -> object:
        if self.entry.fingerprint == old_fp:
            return original(self, host, port)

        async def later() -> object:
            await gate.hold()
            if self.conn_id not in bastion.state.connections:
                return False
            return original(self, host, port)

        return later()

    monkeypatch.setattr(cls, "server_requested", server_requested)
    return gate


def logged_in_keys(bastion: Bastion) -> list[str]:
    """The fingerprint of the key behind each connection the bastion holds."""
    return [c.entry.fingerprint for c in bastion.state.connections.values() if c.entry]


def started(before: set[asyncio.Task[object]]) -> list[asyncio.Task[object]]:
    return [
        t
        for t in asyncio.all_tasks() - before
        if getattr(t.get_coro(), "__qualname__", "") in IN_FLIGHT and not t.done()
    ]


def kind(task: asyncio.Task[object]) -> str:
    return str(getattr(task.get_coro(), "__qualname__", ""))


async def test_an_agent_stopped_mid_hand_over_ends_the_rotation_and_a_rerun_finishes_it(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_fp = keys.agent.fingerprint
    async with scene(keys, tmp_path) as s:
        bastion = s.bastion
        old_copy = tmp_path / "old_agent_key"
        old_copy.write_bytes(s.key.read_bytes())
        old_copy.chmod(0o600)
        before = asyncio.all_tasks()
        rotate = ["keys", "rotate", "--config", str(s.agent_toml), "--drain", "10"]
        left_at_stop: list[str] = []
        async with contextlib.AsyncExitStack() as stack:
            async with s.agent() as running:
                agent = running.agent
                gate = hold_new_key_publishes(monkeypatch, bastion, old_fp)
                stack.callback(gate.release)  # last: after the CLI has ended
                cli = await stack.enter_async_context(process(*SSHTUN, *rotate))
                # The CLI enrols the new key, then asks the agent to switch: the hand-over
                # waits on the new connection's first publish.
                await asyncio.wait_for(gate.reached.wait(), 120)
                new_fp = facts_from_public(s.next_key).fingerprint
                await wait_for(lambda: new_fp in logged_in_keys(bastion))
                in_flight = started(before)
                assert "AdminServer._serve" in [kind(t) for t in in_flight]
                stop = agent.stop

                async def stop_and_look(grace: float | None) -> None:
                    await stop(grace)
                    left_at_stop.extend(kind(t) for t in in_flight if not t.done())

                monkeypatch.setattr(agent, "stop", stop_and_look)
            # The agent's run has returned (its admin socket is closed): nothing that the
            # rotation started is still running; the rotation ran as the agent's own task,
            # which its stop cancelled and awaited.
            assert [kind(t) for t in in_flight if not t.done()] == []
            assert "Rotator._rotate" in [kind(t) for t in in_flight]
            assert "Rotator._rotate" not in left_at_stop
            # The new key's connection went with the agent (the bastion still holds its
            # answer to that connection's publish).
            await wait_for(lambda: new_fp not in logged_in_keys(bastion))
            out, err = await asyncio.wait_for(cli.communicate(), 60)
        failed = err.decode()
        assert cli.returncode != 0, out.decode()
        assert "the agent stopped" in failed, failed
        assert "keeps working" in failed and "Rerun `sshtun keys rotate`" in failed, failed
        # Left as a crash in the hand-over leaves it: the record at enrol, KEY the old key.
        state = rotation.load_state(s.key)
        assert state is not None and state.step == "enrol" and state.old == old_fp
        assert rotation.file_fingerprint(s.key) == old_fp
        assert new_fp not in logged_in_keys(bastion)
        async with s.agent():  # restarted from the key file: the old key still logs in
            assert (await s.reach()).stdout == b"through\n"
            done = await s.rotate()
            assert done.returncode == 0, done.stderr
            assert "reusing the new key" in done.stdout.decode()
            assert "rotated:" in done.stdout.decode()
            assert (await s.reach()).stdout == b"through\n"
        assert facts_from_public(s.key).fingerprint == new_fp
        assert rotation.load_state(s.key) is None
        assert await s.logs_in(s.key)
        assert not await s.logs_in(old_copy)
        async with s.agent():  # a restart after the rotation uses the new key file
            assert (await s.reach()).stdout == b"through\n"
