"""One scene for the integration tests: the home box (a throwaway OpenSSH sshd), the sshtun
bastion (in-process, or a real ``sshtun bastion`` process), agents, keys, pinned
known_hosts and the real ``ssh -J``; and waits on events, never on fixed sleeps.

    async with scene(keys, tmp_path) as s, s.agent():
        assert (await s.reach()).stdout == b"through\\n"

Teardown never swallows a crash: an agent that failed during the test (an in-process task,
see ``harness.running_agent``, or a real process, see ``sshtun_process``) fails the test at
teardown with its exception or exit status and its last log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from sshtunnel_mgr.agent.link import BastionLink
from sshtunnel_mgr.bastion import Bastion
from sshtunnel_mgr.core.config import AgentConfig, BastionConfig
from sshtunnel_mgr.keys.store import load_private_key
from tests.harness import (
    SSH,
    HomeSshd,
    Keys,
    Result,
    RunningAgent,
    access_text,
    agent_config,
    bastion_config,
    bastion_pub,
    free_port,
    home_sshd,
    process,
    require_openssh,
    run_ssh,
    running_agent,
    running_bastion,
    wait_for,
    write_ssh_config,
    write_toml,
)
from tests.integration.processes import (
    ServiceCrashed,
    SshStream,
    SshtunProcess,
    ssh_stream,
    sshtun_process,
    tcp_service,
)

Tunnels = Sequence[tuple[str, int, str]]

__all__ = [
    "Scene",
    "ServiceCrashed",
    "SshStream",
    "SshtunProcess",
    "scene",
    "ssh_stream",
    "sshtun_process",
    "tcp_service",
    "wait_link",
]


@dataclass
class Scene:
    """What most integration tests set up: keys, the access file, the home sshd, a
    bastion on ``port`` (in-process unless the test starts a process there) and alice's
    strict ssh config (``client_cfg``)."""

    keys: Keys
    tmp: Path
    access: Path
    port: int
    home_sshd: HomeSshd | None = None
    in_process: Bastion | None = None  # the in-process bastion, if the scene started one
    in_process_cfg: BastionConfig | None = None  # and its config
    client_cfg: Path = Path()

    @property
    def home(self) -> HomeSshd:
        assert self.home_sshd is not None, "this scene has no home sshd"
        return self.home_sshd

    @property
    def bastion(self) -> Bastion:
        assert self.in_process is not None, "this scene has no in-process bastion"
        return self.in_process

    @property
    def bastion_cfg(self) -> BastionConfig:
        assert self.in_process_cfg is not None, "this scene has no in-process bastion"
        return self.in_process_cfg

    @property
    def target(self) -> str:
        """The home sshd's address, as an agent's tunnel target."""
        return f"127.0.0.1:{self.home.port}"

    def agent_config(
        self, tunnels: Tunnels | None = None, *, port: int | None = None, **kw: object
    ) -> AgentConfig:
        """An agent publishing ``homebox:22`` (the home sshd) unless told otherwise."""
        tunnels = [("homebox", 22, self.target)] if tunnels is None else tunnels
        return agent_config(self.keys, port or self.port, tunnels, **kw)

    def agent(
        self,
        tunnels: Tunnels | None = None,
        *,
        wait: bool = True,
        expect_failure: bool = False,
        **kw: object,
    ) -> AbstractAsyncContextManager[RunningAgent]:
        """An in-process agent (a crash fails the test at teardown)."""
        return running_agent(
            self.agent_config(tunnels, **kw), wait=wait, expect_failure=expect_failure
        )

    def agent_file(
        self, tunnels: Tunnels | None = None, name: str = "agent.toml", **kw: object
    ) -> Path:
        """The agent's config written for ``sshtun up``/``sshtun keys``."""
        return write_toml(self.tmp / name, "agent", self.agent_config(tunnels, **kw))

    def bastion_config(self, *, port: int | None = None, **kw: object) -> BastionConfig:
        return bastion_config(self.keys, self.access, port or self.port, **kw)

    def bastion_file(self, name: str = "bastion.toml", **kw: object) -> Path:
        return write_toml(self.tmp / name, "bastion", self.bastion_config(**kw))

    def bastion_process(
        self, name: str = "bastion.toml", **kw: object
    ) -> AbstractAsyncContextManager[SshtunProcess]:
        """A real ``sshtun bastion`` on the scene's port, ready once it listens."""
        toml = self.bastion_file(name, **kw)
        return sshtun_process("bastion", "--config", str(toml), ready="listening on")

    def agent_process(
        self, toml: Path | None = None, **kw: object
    ) -> AbstractAsyncContextManager[SshtunProcess]:
        """A real ``sshtun up``, ready once it has published a name."""
        toml = toml or self.agent_file(**kw)
        return sshtun_process("up", "--config", str(toml), ready="published")

    def ssh_config(self, who: str, *, bastion_port: int | None = None, **kw: Any) -> Path:
        """Another strict ssh config (pinned bastion and name) in ``tmp/who``."""
        return write_ssh_config(self.tmp / who, self.keys, bastion_port or self.port, **kw)

    async def ssh(
        self, *args: str, cfg: Path | None = None, stdin: bytes | None = None, timeout: float = 60
    ) -> Result:
        """The real ``ssh -F CFG ARGS`` (alice's ``client_cfg`` unless told)."""
        return await run_ssh(cfg or self.client_cfg, *args, stdin=stdin, timeout=timeout)

    async def reach(
        self, command: str = "echo through", cfg: Path | None = None, timeout: float = 60
    ) -> Result:
        """``ssh -J bastion homebox COMMAND`` as alice (or with ``cfg``)."""
        return await self.ssh("homebox", command, cfg=cfg, timeout=timeout)

    def stream(self, cfg: Path | None = None) -> AbstractAsyncContextManager[SshStream]:
        """A flowing ``ssh -J`` session (see ``SshStream``)."""
        flags = list(self.tmp.glob("stream-*.done"))
        return ssh_stream(cfg or self.client_cfg, self.tmp / f"stream-{len(flags)}.done")

    @contextlib.asynccontextmanager
    async def stock_agent(
        self, forward: str | None = None
    ) -> AsyncIterator[asyncio.subprocess.Process]:
        """OpenSSH's own ``ssh -N -o ExitOnForwardFailure=yes -R FORWARD bastion`` as the
        agent (with the agent's key; ``homebox:22`` to the home sshd unless told), once the
        in-process bastion routes the name or ssh has exited."""
        require_openssh()
        assert SSH is not None
        forward = forward or f"homebox:22:{self.target}"
        name, port = forward.split(":")[:2]
        cfg = self.ssh_config("stock-agent", identity=self.keys.agent.path)
        argv = ["-N", "-o", "ExitOnForwardFailure=yes", "-R", forward, "bastion"]
        async with process(SSH, "-F", str(cfg), *argv) as proc:
            state = self.bastion.state  # its route table is swapped whole: look it up anew
            await wait_for(
                lambda: state.routes.lookup(name.lower(), int(port)) or proc.returncode is not None
            )
            yield proc

    async def wait_route(
        self, name: str = "homebox", port: int = 22, *, gone: bool = False, timeout: float = 30
    ) -> None:
        """Until the in-process bastion routes NAME:PORT (with ``gone``: no longer does)."""
        state = self.bastion.state  # its route table is swapped whole: look it up anew
        await wait_for(lambda: bool(state.routes.lookup(name, port)) is not gone, timeout)

    async def connect(
        self, key: Path, username: str = "alice", port: int | None = None
    ) -> asyncssh.SSHClientConnection:
        """An asyncssh client login to the bastion, its host key pinned."""
        return await asyncssh.connect(
            "127.0.0.1",
            port or self.port,
            username=username,
            client_keys=[load_private_key(key)],
            known_hosts=([asyncssh.import_public_key(bastion_pub(self.keys))], [], []),
            config=None,
            agent_path=None,
        )


async def wait_link(
    link: BastionLink, state: str = "up", *, connects: int | None = None, timeout: float = 30
) -> None:
    """Until an agent's link to one bastion is in ``state`` (having connected ``connects``
    times, when given)."""

    def there() -> bool:
        return link.status.state == state and connects in (None, link.status.connects)

    await wait_for(there, timeout)


@contextlib.asynccontextmanager
async def scene(
    keys: Keys,
    tmp_path: Path,
    *,
    access: str | None = None,
    home: bool = True,
    bastion: bool = True,
    port: int | None = None,
    **bastion_kw: object,
) -> AsyncIterator[Scene]:
    """The access file (``access_text(keys)`` unless given), the home sshd (``home``), an
    in-process bastion (``bastion``, on ``port`` or one it picks; without one, ``port``
    or a free port is where the test starts its own) and alice's ssh config for it."""
    path = tmp_path / "access"
    path.write_text(access_text(keys) if access is None else access)
    s = Scene(keys, tmp_path, path, port or 0)
    async with contextlib.AsyncExitStack() as stack:
        if home:
            s.home_sshd = await stack.enter_async_context(home_sshd(keys, tmp_path / "home"))
        if bastion:
            s.in_process_cfg = bastion_config(keys, path, s.port, **bastion_kw)
            s.in_process = await stack.enter_async_context(running_bastion(s.in_process_cfg))
            s.port = s.in_process.port
        elif not s.port:
            s.port = free_port()
        s.client_cfg = write_ssh_config(tmp_path / "alice", keys, s.port)
        yield s
