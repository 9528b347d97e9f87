"""Real processes and streams for the scene (``scene.py``): ``sshtun`` run as a real
process whose log is read as it comes, a flowing ``ssh -J`` stream, a local TCP service.
Each waits on what it observes (a log line, more bytes), never on a fixed sleep, and a
``sshtun`` process that ends on its own fails the test at teardown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import SSH, SSHTUN, Result, require_openssh


class ServiceCrashed(AssertionError):
    """A real sshtun process ended on its own during a test (raised at teardown)."""


@dataclass
class SshtunProcess:
    """A real ``sshtun`` process; its stderr log is read as it comes (``lines``)."""

    proc: asyncio.subprocess.Process
    what: str
    lines: list[str] = field(default_factory=list)
    signalled: bool = False  # the test ended it on purpose (its exit is no crash)
    frozen: bool = False  # SIGSTOP: only SIGKILL ends it at teardown
    _grew: asyncio.Event = field(default_factory=asyncio.Event)
    _ended: bool = False

    def mark(self) -> int:
        """Where the log is now: ``wait_log(..., start=mark)`` sees only newer lines."""
        return len(self.lines)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, n: int = 20) -> str:
        return "".join(self.lines[-n:])

    def logged(self, *parts: str, start: int = 0) -> bool:
        return any(all(p in line for p in parts) for line in self.lines[start:])

    async def wait_log(self, *parts: str, start: int = 0, timeout: float = 30) -> str:
        """The first log line (from index ``start``) holding every part; fails when the
        process ends first or after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = start
        while True:
            for line in self.lines[seen:]:
                if all(p in line for p in parts):
                    return line
            seen = max(seen, len(self.lines))
            if self._ended:
                raise AssertionError(f"{self.what} log ended before {parts!r}:\n{self.tail()}")
            self._grew.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"{self.what} never logged {parts!r}:\n{self.tail()}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._grew.wait(), left)

    def send_signal(self, sig: int) -> None:
        """Signal it; one that ends it (not SIGHUP, SIGSTOP or SIGCONT) means the test
        stops it on purpose, so its exit is not a crash."""
        if sig not in (signal.SIGHUP, signal.SIGSTOP, signal.SIGCONT):
            self.signalled = True
        if sig in (signal.SIGSTOP, signal.SIGCONT):
            self.frozen = sig == signal.SIGSTOP
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 30) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.returncode is None:
            self.send_signal(sig)
        return await self.wait(timeout)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        try:
            async for raw in self.proc.stderr:
                self.lines.append(raw.decode(errors="replace"))
                self._grew.set()
        finally:
            self._ended = True
            self._grew.set()


@contextlib.asynccontextmanager
async def sshtun_process(
    *args: str,
    ready: str | None = None,
    timeout: float = 30,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> AsyncIterator[SshtunProcess]:
    """``sshtun ARGS`` as a real process, stopped by its PID when the block ends. With
    ``ready``, wait for a log line holding it. With ``check`` (the default), the test fails
    at teardown when the process ended on its own with a non-zero status, or did not exit
    0 on the harness's SIGTERM: its status and last log lines are in the failure."""
    proc = await asyncio.create_subprocess_exec(
        *SSHTUN,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    role = next((a for a in args if a in ("bastion", "up")), args[0])
    svc = SshtunProcess(proc, f"sshtun {role} (pid {proc.pid})")
    reader = asyncio.create_task(svc._read())
    try:
        if ready is not None:
            await svc.wait_log(ready, timeout=timeout)
        yield svc
    finally:
        crashed = proc.returncode is not None and proc.returncode != 0 and not svc.signalled
        stopped_here = proc.returncode is None and not svc.frozen
        if proc.returncode is None and svc.frozen:
            proc.kill()
            await proc.wait()
        if stopped_here:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 5)
        if check and (crashed or (stopped_here and proc.returncode != 0)):
            how = "ended on its own" if crashed else "did not stop cleanly on SIGTERM"
            raise ServiceCrashed(
                f"{svc.what} {how}: exit status {proc.returncode}\nlast log lines:\n{svc.tail()}"
            )


@dataclass
class SshStream:
    """A real ``ssh -J`` session printing ``line1``, ``line2``, ... every 50 ms until
    ``finish()``: a test proves its claim over time by waiting for more lines, never by
    sleeping. The remote loop ends when a flag file appears (the home box is this host)."""

    proc: asyncio.subprocess.Process
    flag: Path
    out: bytearray = field(default_factory=bytearray)
    _grew: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    COMMAND = "i=0; while [ ! -e {flag} ]; do i=$((i+1)); echo line$i; sleep 0.05; done; echo end"

    @property
    def lines(self) -> int:
        return self.out.count(b"\n")

    async def wait_lines(self, n: int, timeout: float = 60) -> int:
        """Wait until at least ``n`` lines have arrived; return how many have."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.lines < n:
            assert self._reader is not None
            if self._reader.done():
                raise AssertionError(f"stream ended after {self.lines} lines: {bytes(self.out)!r}")
            self._grew.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"stream stalled at {self.lines} lines (waiting for {n})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._grew.wait(), left)
        return self.lines

    async def more(self, n: int = 10, timeout: float = 60) -> int:
        """Wait for ``n`` more lines than have arrived so far: the stream still flows."""
        return await self.wait_lines(self.lines + n, timeout)

    async def finish(self, timeout: float = 60) -> Result:
        """Let the remote loop end; the whole output, and ssh's exit status."""
        self.flag.touch()
        assert self.proc.stderr is not None and self._reader is not None
        err = await asyncio.wait_for(self.proc.stderr.read(), timeout)
        await asyncio.wait_for(self._reader, timeout)
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        return Result(code, bytes(self.out), err.decode(errors="replace"))

    def expected(self) -> bytes:
        """What the stream sent if not one line was lost: line1 ... lineN, then end."""
        sent = self.out.count(b"line")
        return "".join(f"line{i}\n" for i in range(1, sent + 1)).encode() + b"end\n"

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(65536):
            self.out += chunk
            self._grew.set()
        self._grew.set()


@contextlib.asynccontextmanager
async def ssh_stream(cfg: Path, flag: Path, host: str = "homebox") -> AsyncIterator[SshStream]:
    require_openssh()
    assert SSH is not None
    command = SshStream.COMMAND.format(flag=flag)
    proc = await asyncio.create_subprocess_exec(
        SSH,
        "-F",
        str(cfg),
        host,
        command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stream = SshStream(proc, flag)
    stream._reader = asyncio.create_task(stream._read())
    try:
        yield stream
    finally:
        flag.touch()
        if proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stream._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stream._reader


@contextlib.asynccontextmanager
async def tcp_service(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A local TCP service on a free loopback port (a tunnel's target); yields the port."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
