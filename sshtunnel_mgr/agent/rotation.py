"""The agent's half of ``sshtun keys rotate``: enrol the new key on every bastion, move
every link to it (make before break), and, once the CLI has swapped the key file, retire
the old key on each bastion when that bastion's old connection has drained.

The order keeps a working login whatever is killed when (see keys/rotation.py): the old
key is retired only on the CLI's word that ``KEY`` already holds the new key (``retire``),
and on a bastion only after the routed sessions on its old connection have ended (or the
``drain`` limit passed), so the session the command runs in is never cut. Each step is
idempotent: a rerun picks up wherever an interrupted one stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

import asyncssh

from sshtunnel_mgr.agent.link import BastionLink
from sshtunnel_mgr.keys.store import key_fingerprint, public_line
from sshtunnel_mgr.runtime.crashpoints import crashpoint
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.agent")

CANCEL_TIMEOUT = 10.0  # how long a cancelled retiring may take to end


class Agent(Protocol):
    """What a rotation needs of the agent (serve.py's ``Agent``): its key, its links and
    whether it is stopping."""

    key: asyncssh.SSHKey

    @property
    def links(self) -> Sequence[BastionLink]: ...

    @property
    def stopping(self) -> bool: ...


def serving(links: Sequence[BastionLink]) -> list[BastionLink]:
    """The links a rotation works on, each named by its ``label`` (a bastion given by name
    has one link per address): not those leaving (an address the name no longer has)."""
    return [link for link in links if link.status.state != "leaving"]


class Rotator:
    """Runs one rotation at a time for ``agent`` and reports how the retiring goes.

    A rotation (or an undo) runs as the rotator's own task, so that the agent's stop can
    cancel it and wait for it (``aclose``): a hand-over cut there closes the new connection
    it was making, and the answer says the agent stopped. That leaves the rotation where a
    crash at the same step leaves it (keys/rotation.py): the key file holds a key every
    bastion accepts, and a rerun of ``sshtun keys rotate`` picks up from its record."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._lock = asyncio.Lock()
        self._running: asyncio.Task[dict[str, Any]] | None = None  # a rotation or an undo
        self._retire_task: asyncio.Task[None] | None = None
        self._retiring_key = ""
        self._progress: dict[str, dict[str, Any]] = {}

    async def rotate(
        self,
        new_key: asyncssh.SSHKey,
        comment: str,
        drain: float | None,
        stop_after: str | None = None,
        retire: bool = False,
    ) -> dict[str, Any]:
        """Enrol ``new_key`` everywhere (the old key gets an expiry), then hand every link
        over to it; with ``retire`` (the key file is swapped), start retiring the old key
        in the background and answer at once."""
        agent = self._agent
        report: dict[str, Any] = {
            "ok": False,
            "key": key_fingerprint(new_key),
            "old_key": key_fingerprint(agent.key),
            "steps": [],
        }
        at = {"failed_step": "enrol", "bastion": "-"}  # the step under way, for a stop
        work = self._rotate(new_key, comment, drain, stop_after, retire, report, at)

        def stopped() -> dict[str, Any]:
            error = "the agent stopped during the rotation"
            event(
                log,
                logging.WARNING,
                "rotate stopped",
                step=at["failed_step"],
                bastion=at["bastion"],
            )
            return {**report, **at, "ok": False, "error": error}

        async with self._lock:
            return await self._run(work, stopped)

    async def _run(
        self,
        work: Coroutine[Any, Any, dict[str, Any]],
        stopped: Callable[[], dict[str, Any]],
    ) -> dict[str, Any]:
        """Run ``work`` as the rotator's own task; the answer ``stopped()`` if the agent's
        stop cancels it (or has begun). Cancelling the caller cancels ``work`` too."""
        if self._agent.stopping:
            work.close()
            return stopped()
        task = asyncio.create_task(work, name="key rotation")
        self._running = task
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not task.cancelled() or (current is not None and current.cancelling()):
                raise  # the caller itself is cancelled
            return stopped()
        finally:
            self._running = None

    async def _rotate(
        self,
        new_key: asyncssh.SSHKey,
        comment: str,
        drain: float | None,
        stop_after: str | None,
        retire: bool,
        report: dict[str, Any],
        at: dict[str, str],
    ) -> dict[str, Any]:
        agent = self._agent
        new_fp = key_fingerprint(new_key)
        pub = public_line(new_key, comment)
        steps: list[dict[str, Any]] = report["steps"]

        def failed(step: str, link: BastionLink, error: str) -> dict[str, Any]:
            event(
                log,
                logging.ERROR,
                "rotate failed",
                step=step,
                bastion=link.label,
                error=error,
            )
            report.update(failed_step=step, bastion=link.label, error=error)
            return report

        pending = [link for link in serving(agent.links) if key_fingerprint(link.key) != new_fp]
        for link in pending:
            at.update(failed_step="enrol", bastion=link.label)
            answer = await link.key_request(f"sshtun-enrol {pub}")
            if not answer.get("ok"):
                return failed("enrol", link, str(answer.get("error")))
            steps.append({"step": "enrol", "bastion": link.label, **answer})
            event(log, logging.INFO, "rotate enrolled", bastion=link.label, new_key=new_fp)
            crashpoint("agent:enrolled")
        if stop_after == "enrol":
            report.update(ok=True, complete=False, stopped_after="enrol")
            return report
        for link in pending:
            at.update(failed_step="switch", bastion=link.label)
            answer = await link.hand_over(new_key, drain)
            if not answer.get("ok"):
                return failed("switch", link, str(answer.get("error")))
            steps.append({"step": "switch", "bastion": link.label, **answer})
        crashpoint("agent:switched")
        if stop_after == "switch" or not retire:
            report.update(ok=True, complete=False, stopped_after="switch")
            return report
        # The CLI says KEY now holds the new key: a restart would use it too.
        agent.key = new_key
        at.update(failed_step="finish", bastion=", ".join(x.label for x in serving(agent.links)))
        await self._start_retiring(new_fp)
        report.update(ok=True, complete=False, retiring=self.snapshot())
        return report

    async def _start_retiring(self, new_fp: str) -> None:
        if self._retire_task is not None and not self._retire_task.done():
            if self._retiring_key == new_fp:
                return  # already on it
            await self._cancel_retiring()
        self._retiring_key = new_fp
        self._progress = {
            link.label: {"bastion": link.label, "state": "draining"}
            for link in serving(self._agent.links)
        }
        task = asyncio.create_task(self._retire_all())
        task.add_done_callback(_log_failure)
        self._retire_task = task

    async def _retire_all(self) -> None:
        await asyncio.gather(*(self._retire(link) for link in serving(self._agent.links)))
        states = [p["state"] for p in self._progress.values()]
        event(log, logging.INFO, "rotate done", key=self._retiring_key, retired=states)

    async def _retire(self, link: BastionLink) -> None:
        """Retire the old key on one bastion once its old connection has drained."""
        progress = self._progress[link.label]
        await link.wait_drained()
        progress["state"] = "retiring"
        crashpoint("agent:retire-before-finish")
        answer = await link.key_request("sshtun-finish")
        if not answer.get("ok"):
            progress.update(state="failed", error=str(answer.get("error")))
            event(
                log,
                logging.ERROR,
                "rotate failed",
                step="finish",
                bastion=link.label,
                error=answer.get("error"),
            )
            return
        crashpoint("agent:retired")
        progress.update(state="retired", retired=answer.get("retired"))
        event(
            log,
            logging.INFO,
            "old key retired",
            bastion=link.label,
            retired=answer.get("retired") or "-",
        )

    async def aclose(self) -> None:
        """The agent is stopping: cancel a rotation or undo under way and wait for it (a
        hand-over closes the new connection it was making), then the retiring. What is
        left unfinished is the next run's to finish, from the key file and the record."""
        await _cancel(self._running, "key rotation")
        await self._cancel_retiring()

    async def _cancel_retiring(self) -> None:
        """Cancel the retiring under way and wait for it to end (its failure is logged by
        ``_log_failure``)."""
        await _cancel(self._retire_task, "retire the old key")

    def snapshot(self) -> dict[str, Any] | None:
        """How the retiring of the old key goes, per bastion (None: no rotation here)."""
        if not self._retiring_key:
            return None
        links = []
        for link in serving(self._agent.links):
            progress = dict(self._progress.get(link.label, {}))
            progress["sessions"] = link.draining_sessions()
            links.append(progress)
        done = all(p.get("state") == "retired" for p in links)
        return {"key": self._retiring_key, "done": done, "links": links}

    async def undo(self, drain: float | None) -> dict[str, Any]:
        """Go back to the agent's original key before the key file was swapped: hand
        switched links back, wait for the new key's connection to drain, then remove the
        successor and restore the old key's expiry."""
        steps: list[dict[str, Any]] = []

        def stopped() -> dict[str, Any]:
            event(log, logging.WARNING, "rotate undo stopped", done=len(steps))
            return {"ok": False, "error": "the agent stopped during the undo", "steps": steps}

        async with self._lock:
            return await self._run(self._undo(drain, steps), stopped)

    async def _undo(self, drain: float | None, steps: list[dict[str, Any]]) -> dict[str, Any]:
        agent = self._agent
        for link in serving(agent.links):
            if key_fingerprint(link.key) != key_fingerprint(agent.key):
                answer = await link.hand_over(agent.key, drain)
                if not answer.get("ok"):
                    return {"ok": False, "error": answer.get("error"), "steps": steps}
                steps.append({"step": "switch back", "bastion": link.label})
                await link.wait_drained()
            answer = await link.key_request("sshtun-unenrol")
            if not answer.get("ok"):
                return {"ok": False, "error": answer.get("error"), "steps": steps}
            steps.append({"step": "unenrol", "bastion": link.label, **answer})
        return {"ok": True, "steps": steps}


async def _cancel(task: asyncio.Task[Any] | None, what: str) -> None:
    """Cancel ``task`` if it runs and wait for it to end, at most ``CANCEL_TIMEOUT``."""
    if task is None or task.done():
        return
    task.cancel()
    _, pending = await asyncio.wait({task}, timeout=CANCEL_TIMEOUT)
    if pending:
        event(log, logging.ERROR, "tasks did not end", tasks=what)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        event(log, logging.ERROR, "rotate failed", error=repr(exc))
