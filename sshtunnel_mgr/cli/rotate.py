"""``sshtun keys rotate`` for the agent's key: the steps in the order that never locks the
owner out, resumable from the record on disk (keys/rotation.py).

enrol (each bastion adds the new key; the old key gets an expiry) → switch (the agent's
new connections take the names; the old ones drain in the background) → swap (``KEY.next``
replaces ``KEY``, fsynced; the passphrase moves too) → retire (each bastion drops the old
key once its old connection has drained). With the agent running, the key requests go
through it; with the agent stopped, over this command's own connection to each bastion,
with the key that bastion accepts at that step (the old key before the swap, the new one
after it).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import asyncssh
import typer

from sshtunnel_mgr.agent import keydirect
from sshtunnel_mgr.core.config import AgentConfig, load_config
from sshtunnel_mgr.core.errors import RotationError, SshtunError, UnsafeAdminSocket, UsageError
from sshtunnel_mgr.keys import rotation
from sshtunnel_mgr.keys.rotation import RotationState
from sshtunnel_mgr.keys.store import credential_source, load_private_key, public_line
from sshtunnel_mgr.runtime.admin import default_socket_path, query
from sshtunnel_mgr.runtime.crashpoints import crashpoint

LONG = 7 * 86400.0  # "as long as it takes" for an admin request that waits for sessions
POLL = 1.0  # seconds between progress reads while the old connections drain


def rotate_agent_key(
    config: Path,
    key: Path | None,
    drain: float | None,
    stop_after: str | None,
    undo: bool,
    wait: bool | None,
) -> None:
    if stop_after not in (None, "enrol", "switch"):
        raise UsageError("--stop-after must be enrol or switch")
    agent = load_config(config).require_agent()
    key_path = key or agent.key
    socket = agent.admin_socket or default_socket_path("agent")
    if "$CREDENTIALS_DIRECTORY" in str(key_path) or not key_path.exists():
        source = credential_source(config.absolute())
        raise RotationError(
            f"the agent key {key_path} is not here",
            hint="under systemd the agent reads it from $CREDENTIALS_DIRECTORY; pass the "
            f"LoadCredential= source with --key (e.g. --key {source}), beside which status "
            "and doctor read the rotation record",
        )
    steps = _Steps(agent, key_path, socket, drain, rotation.finish_command(config, key))
    state = rotation.load_state(key_path)
    where = rotation.phase(state, rotation.file_fingerprint(key_path))
    if undo:
        steps.undo(where)
        return
    if state is None:
        nxt, _ = rotation.prepare(key_path, reuse=False)
        crashpoint("cli:prepared")
        state = RotationState(
            rotation.file_fingerprint(key_path), rotation.file_fingerprint(nxt), "enrol"
        )
        rotation.save_state(key_path, state)
        typer.echo(f"wrote the new key {nxt}")
        crashpoint("cli:recorded")
    else:
        typer.echo(f"reusing the new key {state.new}: {rotation.describe(state)}")
    if where != "after-swap":
        switched = steps.enrol_and_switch(state, stop_after)
        if switched is None:
            typer.echo(f"stopped after {stop_after}; rerun `sshtun keys rotate` to finish")
            return
        state = rotation.load_state(key_path) or state  # with what the enrolment recorded
    rotation.swap(key_path)  # idempotent: completes a swap that was cut short too
    if state.step != "swapped":
        state = state.at("swapped")
        rotation.save_state(key_path, state)
        typer.echo(f"swapped: {key_path} now holds the new key {state.new}")
        crashpoint("cli:swapped")
    if not steps.retire(state, _should_wait(wait)):
        return
    crashpoint("cli:retired")
    rotation.clear_state(key_path)
    typer.echo(f"rotated: {key_path} is now {state.new} (was {state.old})")


def _should_wait(wait: bool | None) -> bool:
    """Wait for the old connections to drain unless told, or unless this command runs in
    an SSH session (it may be one of the sessions being waited for)."""
    return wait if wait is not None else "SSH_CONNECTION" not in os.environ


class _Steps:
    def __init__(
        self,
        agent: AgentConfig,
        key: Path,
        socket: Path,
        drain: float | None,
        finish: str,
    ) -> None:
        self.agent = agent
        self.key = key
        self.socket = socket
        self.drain = drain
        self.finish = finish
        self.said_stopped = False

    # The agent, if it runs ---------------------------------------------------------------
    def agent_running(self) -> bool:
        """Whether an agent answers on the admin socket. No socket (or nobody behind it)
        means it is stopped; anything else unsafe or odd is an error, never "stopped"."""
        try:
            asyncio.run(query(self.socket, {"cmd": "status"}))
        except UnsafeAdminSocket:
            raise
        except SshtunError as exc:
            if exc.message.startswith(("no admin socket", "cannot reach the admin socket")):
                if not self.said_stopped:
                    self.said_stopped = True
                    typer.echo(
                        f"the agent is not running ({exc.message}): the key requests go "
                        "over this command's own connection to each bastion"
                    )
                return False
            raise RotationError(f"the agent did not answer: {exc.message}") from None
        return True

    def ask(self, request: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
        try:
            return asyncio.run(query(self.socket, request, timeout))
        except UnsafeAdminSocket:
            raise
        except SshtunError as exc:
            raise RotationError(
                f"the agent stopped answering ({exc.message})",
                hint=f"the key file {self.key} works whatever happened; rerun "
                f"`{self.finish}` to finish, or add --undo to go back (before the swap)",
            ) from None

    def _request(self, key_path: Path, comment_of: Path, **extra: Any) -> dict[str, Any]:
        return {
            "cmd": "rotate",
            "key_data": load_private_key(key_path).export_private_key("openssh").decode(),
            "comment": rotation.comment_of(comment_of),
            "drain": self.drain,
            **extra,
        }

    # The steps -------------------------------------------------------------------------------
    def enrol_and_switch(self, state: RotationState, stop_after: str | None) -> bool | None:
        """Enrol the new key everywhere and move the agent to it; None if stopped early."""
        nxt = rotation.next_key_path(self.key)
        if self.agent_running():
            extra = {"stop_after": stop_after} if stop_after else {}
            answer = self.ask(self._request(nxt, nxt, **extra))
            if not answer.get("ok"):
                raise _explain_failure(answer, self.key, nxt)
            for step in answer.get("steps", []):
                typer.echo(f"  {step['bastion']}: {step['step']}: {_describe_step(step)}")
                state = state.expiring(str(step.get("old_key_expires") or ""))
            rotation.save_state(self.key, state)
            if stop_after == "enrol":
                return None
            rotation.save_state(self.key, state.at("switched"))
            crashpoint("cli:switched")
            return None if stop_after == "switch" else True
        new = load_private_key(nxt)
        line = public_line(new, rotation.comment_of(nxt))
        old = load_private_key(self.key)
        for ep in self.agent.bastions:
            answer = asyncio.run(keydirect.key_request(self.agent, ep, old, f"sshtun-enrol {line}"))
            if _refused(answer) and asyncio.run(keydirect.accepts(self.agent, ep, new)):
                # The old key's grace ran out before the rotation was finished: the new
                # key, enrolled then, is what this bastion accepts now; go on with it.
                typer.echo(f"  {ep.address}: the old key is refused (expired?); the new one works")
                continue
            if not answer.get("ok"):
                raise _explain_failure(
                    {**answer, "failed_step": "enrol", "bastion": ep.address}, self.key, nxt
                )
            typer.echo(f"  {ep.address}: enrol: {_describe_step({'step': 'enrol', **answer})}")
            state = state.expiring(str(answer.get("old_key_expires") or ""))
            rotation.save_state(self.key, state)
        return None if stop_after else True

    def _direct(self, key: asyncssh.SSHKey, command: str, step: str, nxt: Path) -> None:
        for bastion, answer in asyncio.run(keydirect.on_every_bastion(self.agent, key, command)):
            if not answer.get("ok"):
                raise _explain_failure(
                    {**answer, "failed_step": step, "bastion": bastion}, self.key, nxt
                )
            typer.echo(f"  {bastion}: {step}: {_describe_step({'step': step, **answer})}")

    def retire(self, state: RotationState, wait: bool) -> bool:
        """Have every bastion drop the old key; True once they all have."""
        if not self.agent_running():
            self._direct(load_private_key(self.key), "sshtun-finish", "finish", self.key)
            return True
        answer = self.ask(self._request(self.key, self.key, retire=True))
        crashpoint("cli:retire-requested")
        if not answer.get("ok"):
            raise _explain_failure(answer, self.key, self.key)
        for step in answer.get("steps", []):
            typer.echo(f"  {step['bastion']}: {step['step']}: {_describe_step(step)}")
        return self.follow(state, wait)

    def follow(self, state: RotationState, wait: bool) -> bool:
        """Show how the old connections drain and the old key is retired, per bastion;
        True when retired everywhere. Without ``wait``, stop once only open sessions are
        left to wait for (the agent retires the old key when they end)."""
        shown: dict[str, str] = {}
        while True:
            rot = self.ask({"cmd": "status"}).get("rotation")
            if not isinstance(rot, dict) or rot.get("key") != state.new:
                raise RotationError(
                    "the agent restarted before it retired the old key",
                    hint=f"{self.key} holds the new key and works; rerun `{self.finish}`",
                )
            waiting = False
            for link in rot["links"]:
                text, drains = progress(link)
                waiting = waiting or drains
                if shown.get(link["bastion"]) != text:
                    shown[link["bastion"]] = text
                    typer.echo(f"  {link['bastion']}: {text}")
                if link.get("state") == "failed":
                    raise RotationError(
                        f"the bastion did not retire the old key ({link['bastion']}): "
                        f"{link.get('error')}",
                        hint=f"{self.key} holds the new key and works; rerun `{self.finish}`",
                    )
            if rot.get("done"):
                return True
            if waiting and not wait:
                typer.echo(
                    "the agent retires the old key on each bastion as soon as these "
                    "sessions end (this one may be among them); `sshtun status` shows it, "
                    f"and `{self.finish}` completes the record afterwards"
                )
                return False
            time.sleep(POLL)

    def undo(self, where: str) -> None:
        if where == "after-swap":
            raise RotationError(
                f"{self.key} already holds the new key: this rotation can only be finished",
                hint=f"finish it: {self.finish}",
            )
        nxt = rotation.next_key_path(self.key)
        if self.agent_running():
            answer = self.ask({"cmd": "rotate-undo", "drain": self.drain}, LONG)
            if not answer.get("ok"):
                raise RotationError(f"undo failed: {answer.get('error')}")
        else:
            self._direct(load_private_key(self.key), "sshtun-unenrol", "unenrol", nxt)
        crashpoint("cli:undone-on-bastions")
        rotation.clear_state(self.key)
        rotation.discard(self.key)
        typer.echo(f"rotation undone: the bastions know only {self.key} again")


def _refused(answer: dict[str, Any]) -> bool:
    return not answer.get("ok") and str(answer.get("error")).startswith("the key was refused")


def progress(link: dict[str, Any]) -> tuple[str, bool]:
    """(what to show for one bastion, whether it waits for open sessions)."""
    state, sessions = link.get("state"), int(link.get("sessions") or 0)
    if state == "retired":
        return "old key retired", False
    if state == "failed":
        return f"retiring the old key failed: {link.get('error')}", False
    if state == "draining" and sessions:
        return f"{sessions} routed session(s) still open on the old connection", True
    return "retiring the old key", False


def _describe_step(step: dict[str, Any]) -> str:
    if step["step"] == "enrol":
        return f"new key enrolled; old key expires {step.get('old_key_expires')}"
    if step["step"] == "switch":
        names = ",".join(step.get("names", []))
        left = int(step.get("sessions") or 0)
        drains = f"; {left} session(s) drain on the old connection" if left else ""
        return f"tunnels moved to the new key ({names}){drains}"
    if step["step"] == "unenrol":
        return "new key removed" if step.get("removed") else "no new key was enrolled"
    return "old key retired" if step.get("retired") else "nothing left to retire"


def _explain_failure(answer: dict[str, Any], key: Path, nxt: Path) -> SshtunError:
    step = answer.get("failed_step")
    where = answer.get("bastion", "")
    done = ", ".join(f"{s['step']} on {s['bastion']}" for s in answer.get("steps", []))
    what = {
        "enrol": "the bastion did not enrol the new key",
        "switch": "the agent could not move its tunnels to the new key",
        "finish": "the bastion did not retire the old key",
        "unenrol": "the bastion did not remove the new key",
    }.get(str(step), "the rotation failed")
    message = f"{what} ({where}): {answer.get('error')}"
    if done:
        message += f"; done before that: {done}"
    if step == "finish":
        hint = f"{key} holds the new key and works; rerun `sshtun keys rotate` to finish"
    else:
        hint = (
            f"the old key {key} keeps working (until its expiry, if one was set); the new "
            f"key is kept at {nxt}. Rerun `sshtun keys rotate` to finish, or "
            "`sshtun keys rotate --undo` to go back"
        )
    return RotationError(message, hint=hint)
