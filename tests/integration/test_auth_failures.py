"""Failed logins are counted per connection, as OpenSSH does: keys an ssh-agent offers
before the right one never cool a source down; connections that end without logging in
do. Real OpenSSH clients (several IdentityFile lines) through a real home sshd."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest

from tests.harness import (
    Keys,
    run_ssh,
    wait_for,
    write_ssh_config,
)
from tests.integration.conftest import logged
from tests.integration.scene import scene
from tests.integration.test_abuse import connect


def several_identities(workdir: Path, keys: Keys, port: int, *unknown: Path) -> Path:
    """An ssh_config offering the unknown keys first, then the right one (IdentitiesOnly)."""
    first, *rest = [*unknown, keys.client.path]
    extra = "".join(f"  IdentityFile {path}\n" for path in rest)
    return write_ssh_config(workdir, keys, port, identity=first, extra_opts=extra)


async def test_unknown_keys_offered_first_in_parallel_jumps_never_cool_the_source_down(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    strangers = [keys.extra(f"stranger{i}").path for i in range(2)]
    async with scene(keys, tmp_path) as s, s.agent():
        bastion = s.bastion
        cfg = several_identities(tmp_path / "client", keys, bastion.port, *strangers)
        # Ten real `ssh -J` at once from one address, each offering two unknown keys
        # (queries, no signature) before the right one.
        results = await asyncio.gather(
            *(run_ssh(cfg, "homebox", f"echo jump{i}") for i in range(10))
        )
        for i, result in enumerate(results):
            assert result.stdout == f"jump{i}\n".encode(), result.stderr
        # And ten `ssh -W` (the same direct-tcpip, no inner login) at once.
        probes = await asyncio.gather(
            *(run_ssh(cfg, "-W", "homebox:22", "bastion", stdin=b"") for _ in range(10))
        )
        for probe in probes:
            assert probe.stdout.startswith(b"SSH-2.0-OpenSSH"), probe.stderr
        # Forty unknown keys were refused, and the source is not cooling down.
        assert bastion.state.counters["auth_failures"] >= 40
        assert len(bastion.state.penalties) == 0
        assert bastion.state.penalties.check("127.0.0.1") is None
        assert not logged(caplog, "penalty source=")
        result = await run_ssh(cfg, "homebox", "echo after")
        assert result.stdout == b"after\n", result.stderr


async def test_connections_that_end_without_logging_in_start_the_cool_down(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit = tmp_path / "audit.jsonl"
    strangers = [keys.extra(f"stranger{i}").path for i in range(2)]
    async with scene(keys, tmp_path, home=False, audit_log=audit) as s:
        bastion = s.bastion
        only_strangers = write_ssh_config(
            tmp_path / "bad",
            keys,
            bastion.port,
            identity=strangers[0],
            extra_opts=f"  IdentityFile {strangers[1]}\n",
        )
        good = write_ssh_config(tmp_path / "good", keys, bastion.port)
        # Nine connections that fail (two refused keys each): nine failures, no cool-down.
        for _ in range(9):
            result = await run_ssh(only_strangers, "-W", "homebox:22", "bastion", stdin=b"")
            assert "Permission denied (publickey)" in result.stderr, result.stderr
        await wait_for(lambda: bastion.state.counters["preauth_disconnects"] == 9)
        assert not logged(caplog, "penalty source=")
        # The tenth (default max_auth_failures_per_source) starts it ...
        result = await run_ssh(only_strangers, "-W", "homebox:22", "bastion", stdin=b"")
        assert result.returncode == 255
        await wait_for(lambda: logged(caplog, "penalty source=127.0.0.1 failures=10 seconds=300"))
        # ... and then even the right key is refused before any key exchange.
        result = await run_ssh(good, "-W", "homebox:22", "bastion", stdin=b"")
        assert "kex_exchange_identification" in result.stderr, result.stderr


async def test_max_auth_tries_still_ends_a_connection_which_then_counts_once(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limits = {"max_auth_tries": 6, "max_auth_failures_per_source": 2}
    async with scene(keys, tmp_path, home=False, limits=limits) as s:
        bastion = s.bastion
        for attempt in (1, 2):
            strangers = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(9)]
            with pytest.raises((asyncssh.Error, OSError)):
                async with connect(keys, bastion.port, *strangers):
                    pass
            await wait_for(lambda a=attempt: bastion.state.counters["preauth_disconnects"] == a)
            # Cut off after six refused keys (max_auth_tries), on this connection only.
            assert bastion.state.counters["auth_failures"] == 6 * attempt
            if attempt == 1:  # six refused keys, one failed connection: no cool-down yet
                assert not logged(caplog, "penalty source=")
        assert logged(caplog, "too many authentication failures")
        assert logged(caplog, "penalty source=127.0.0.1 failures=2 seconds=300")
