"""An in-process sshtun agent for tests: started, awaited until ready, stopped at the end
of the block, and never allowed to crash silently (``AgentCrashed`` at teardown, with the
last sshtun log lines). ``tests.harness`` re-exports it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sshtunnel_mgr.agent import Agent
from sshtunnel_mgr.core.config import AgentConfig


class AgentCrashed(AssertionError):
    """An in-process agent failed during a test (raised at teardown, never swallowed)."""


class _Tail(logging.Handler):
    """The last sshtun log lines, for a crash report."""

    def __init__(self, n: int = 20) -> None:
        super().__init__(logging.DEBUG)
        self.lines: collections.deque[str] = collections.deque(maxlen=n)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@dataclass
class RunningAgent:
    agent: Agent
    stop: asyncio.Event
    task: asyncio.Task[None]
    log: _Tail = field(default_factory=_Tail)

    async def wait_ready(self, timeout: float = 15) -> None:
        ready = asyncio.ensure_future(self.agent.ready_event.wait())
        done, _ = await asyncio.wait(
            {ready, self.task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if self.task in done:
            ready.cancel()
            self.task.result()
            raise AssertionError("agent stopped before it was ready")
        if ready not in done:
            ready.cancel()
            raise AssertionError("agent not ready in time")

    async def finish(self, *, expect_failure: bool = False, timeout: float = 30) -> None:
        """Stop the agent; raise ``AgentCrashed`` if it failed or ended on its own during
        the test, or does not stop in ``timeout`` seconds (unless ``expect_failure``)."""
        ended_early = self.task.done()
        self.stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except TimeoutError:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
            self._crashed(f"did not stop within {timeout:g}s of its stop event", None)
        except asyncio.CancelledError:
            if not self.task.cancelled():
                raise  # the test itself is being cancelled
            self._crashed("was cancelled by something other than the harness", None)
        except Exception as exc:  # the agent's own failure, reported below
            if not expect_failure:
                self._crashed(f"failed: {exc!r}", exc)
        else:
            if ended_early and not expect_failure:
                self._crashed("stopped on its own before the test ended", None)

    def _crashed(self, what: str, exc: BaseException | None) -> None:
        lines = "\n".join(self.log.lines) or "(none)"
        raise AgentCrashed(f"agent {what}\nlast sshtun log lines:\n{lines}") from exc


@contextlib.asynccontextmanager
async def running_agent(
    config: AgentConfig, wait: bool = True, expect_failure: bool = False
) -> AsyncIterator[RunningAgent]:
    """An in-process agent, stopped when the block ends. A failure of the agent during
    the block (its task raised, or ended by itself) fails the test there, with the
    exception and the last sshtun log lines, unless ``expect_failure``: the test then
    awaits ``task`` itself."""
    agent = Agent(config)
    stop = asyncio.Event()
    running = RunningAgent(agent, stop, asyncio.create_task(agent.run(stop)))
    sshtun_log = logging.getLogger("sshtunnel_mgr")
    sshtun_log.addHandler(running.log)
    try:
        if wait:
            await running.wait_ready()
        yield running
    finally:
        sshtun_log.removeHandler(running.log)
        await running.finish(expect_failure=expect_failure)
