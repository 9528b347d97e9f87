"""Logs: one event per line, key=value or JSON, never a key or a secret."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh
import paramiko
import pytest

from tests.harness import (
    SSHTUN,
    Keys,
    agent_config,
    bastion_pub,
    process,
    read_until,
    run_ssh,
    write_ssh_config,
    write_toml,
)
from tests.integration.scene import scene, sshtun_process


async def test_json_logs_carry_each_refusal_as_fields(keys: Keys, tmp_path: Path) -> None:
    async with scene(keys, tmp_path, home=False, bastion=False) as s:
        argv = ["--log-format", "json", "bastion", "--config", str(s.bastion_file())]
        async with sshtun_process(*argv, ready="listening on") as bastion:
            result = await s.ssh("-W", "127.0.0.1:22", "bastion")
            assert result.returncode != 0
            await bastion.stop()
        lines = "".join(bastion.lines).splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    [refusal] = [e for e in events if e["event"] == "refused open"]
    assert refusal["level"] == "warning"
    assert refusal["dest"] == "127.0.0.1:22"
    assert refusal["reason"].startswith("'127.0.0.1' is an IP address, not a name")
    assert refusal["key"].startswith(keys.client.fingerprint)
    # No private or public key material, only fingerprints.
    blob = keys.client.public_line.split()[1]
    assert all(blob not in line for line in lines)
    private = keys.client.path.read_text().splitlines()[1]
    assert all(private not in line for line in lines)


# Log forging: every value a peer chooses stays inside its own field ---------------------
# Each hostile value tries to end the line, start a forged event, or add key=/from= pairs.
FORGED_KEY = "SHA256:FORGED"
FORGED_FROM = ("203.0.113.66", "198.51.100.7")
HOSTILE: dict[str, str | bytes] = {
    "pairs": "x key=SHA256:FORGED from=203.0.113.66",
    "newline": "x\n2026-12-02 07:00:00,000 INFO sshtunnel_mgr.bastion: auth ok conn=9 "
    "key=SHA256:FORGED from=203.0.113.66",
    "quotes": 'x" key="SHA256:FORGED" from="198.51.100.7\\" \\\\" reason=\'',
    "json": '"}\n{"event": "auth ok", "key": "SHA256:FORGED", "from": "203.0.113.66"}',
    "controls": "x\r\x85\u2028\u2029\x1b[1A\x1b[2K\t\x00 key=SHA256:FORGED from=198.51.100.7",
    "not-utf8": b"x\xff\xfe\xc0\n key=SHA256:FORGED from=203.0.113.66",
}
# The values a peer can send that a bastion must still log (the rest need not arrive).
PRINTABLE = ("pairs", "quotes")
OPENSSH_SENDS = ("newline", "quotes")  # what a stock ``ssh -W`` sends too

_TEXT_LINE = re.compile(
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([a-z_.]+): "
)
_WORD = re.compile(r"[a-z][a-z0-9_-]*")
_FIELD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
_BARE = re.compile(r"[A-Za-z0-9._:/@+,\-\[\]*%#~()]+")


def parse_text_line(line: str) -> dict[str, object]:
    """The rendered text form, strictly: prefix, event words, then ``key=value`` pairs whose
    value is a bare token or a JSON string. Anything else is an injected line."""
    assert line.isascii() and line.isprintable(), line
    head = _TEXT_LINE.match(line)
    assert head, f"not an event line: {line!r}"
    rest, pos = line[head.end() :], 0
    words: list[str] = []
    fields: dict[str, object] = {}
    decoder = json.JSONDecoder()
    while pos < len(rest):
        if pos:
            assert rest[pos] == " ", line
            pos += 1
        pair = _FIELD.match(rest, pos)
        if pair is None:
            assert not fields, f"a bare word after the fields: {line!r}"
            word = _WORD.match(rest, pos)
            assert word, line
            words.append(word.group())
            pos = word.end()
        else:
            key, pos = pair.group(1), pair.end()
            assert key not in fields, f"{key} twice: {line!r}"
            value: object
            if rest.startswith('"', pos):
                value, pos = decoder.raw_decode(rest, pos)
            else:
                bare = _BARE.match(rest, pos)
                assert bare, line
                value, pos = bare.group(), bare.end()
            fields[key] = value
        assert pos == len(rest) or rest[pos] == " ", line
    assert words, line
    return {"level": head[2].lower(), "logger": head[3], "event": " ".join(words), **fields}


async def logs_of(
    keys: Keys, tmp_path: Path, fmt: str, peers: Callable[[int], Awaitable[None]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run a real bastion process (``-v``: debug lines too) while ``peers(port)`` talk to it;
    its log as parsed events (every line must be one) and its audit log records."""
    audit = tmp_path / "audit.jsonl"
    async with scene(keys, tmp_path, home=False, bastion=False) as s:
        bfile = s.bastion_file(audit_log=audit, limits={"max_auth_failures_per_source": 0})
        argv = ["-v", "--log-format", fmt, "bastion", "--config", str(bfile)]
        async with sshtun_process(*argv, ready="listening on") as bastion:
            try:
                await peers(s.port)
            finally:
                await bastion.stop()
        lines = list(bastion.lines)
    assert all(line.endswith("\n") for line in lines)
    parse = json.loads if fmt == "json" else parse_text_line
    events = [parse(line.removesuffix("\n")) for line in lines]
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    return events, records


def assert_nothing_forged(events: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    """No event or audit record carries a forged key or source, or a forged event."""
    for item in [*events, *records]:
        assert FORGED_KEY not in str(item.get("key", "")), item
        assert not str(item.get("from", "")).startswith(FORGED_FROM), item
        assert "FORGED" not in str(item["event"]), item
        assert "\n" not in str(item["event"]), item
    assert not [e for e in events if e["event"] == "auth ok" and e.get("conn") in (9, "9")]


def _pinned_transport(keys: Keys, port: int) -> paramiko.Transport:
    transport = paramiko.Transport(socket.create_connection(("127.0.0.1", port), 10))
    transport.start_client(timeout=10)
    # Pinned: the bastion's host key is checked before any credential is sent.
    assert transport.get_remote_server_key().get_base64() == bastion_pub(keys).split()[1]
    return transport


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "backslashreplace")


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_hostile_destination_cannot_forge_a_log_line(
    keys: Keys, tmp_path: Path, fmt: str
) -> None:
    """direct-tcpip destination and originator (paramiko, raw bytes too; ``ssh -W``)."""
    client_key = paramiko.Ed25519Key.from_private_key_file(str(keys.client.path))
    answers: dict[str, str] = {}

    def open_hostile(port: int, label: str, value: str | bytes) -> None:
        transport = _pinned_transport(keys, port)
        try:
            transport.auth_publickey("alice", client_key)
            transport.open_channel("direct-tcpip", (value, 22), (value, 4711), timeout=15)
            answers[label] = "opened?!"
        except paramiko.ChannelException as exc:
            answers[label] = f"refused: {exc.text}"
        except (paramiko.SSHException, EOFError) as exc:
            answers[label] = f"disconnected: {exc}"
        finally:
            transport.close()

    async def peers(port: int) -> None:
        for label, value in HOSTILE.items():
            await asyncio.to_thread(open_hostile, port, label, value)
        client = write_ssh_config(tmp_path / "c", keys, port)
        for label in OPENSSH_SENDS:  # ssh -W takes any host in brackets, a newline too
            result = await run_ssh(client, "-W", f"[{HOSTILE[label]!s}]:22", "bastion")
            assert result.returncode != 0

    events, records = await logs_of(keys, tmp_path, fmt, peers)
    assert "opened?!" not in answers.values()
    assert_nothing_forged(events, records)
    refused = [e for e in events if e["event"] == "refused open"]
    for label, value in HOSTILE.items():  # logged, unchanged, inside its own field
        if isinstance(value, str):
            dest = f"{value}:22"
            found = [e for e in refused if e["dest"] == dest]
            assert len(found) == (2 if label in OPENSSH_SENDS else 1), (label, refused)
            assert [r for r in records if r["event"] == "refused" and r.get("dest") == dest]
    # Not UTF-8: asyncssh drops the connection; the log says why, in one line.
    assert answers["not-utf8"].startswith("disconnected"), answers
    assert [e for e in events if "Invalid direct TCP/IP" in str(e.get("reason", ""))]


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_hostile_forward_name_cannot_forge_a_log_line(
    keys: Keys, tmp_path: Path, fmt: str
) -> None:
    """tcpip-forward bind name from an agent key (paramiko, raw bytes too)."""
    agent_key = paramiko.Ed25519Key.from_private_key_file(str(keys.agent.path))
    answers: dict[str, str] = {}

    def publish_hostile(port: int, label: str, value: str | bytes) -> None:
        transport = _pinned_transport(keys, port)
        try:
            transport.auth_publickey("agent", agent_key)
            transport.request_port_forward(value, 22)  # type: ignore[arg-type]
            answers[label] = "published?!"
        except (paramiko.SSHException, EOFError) as exc:
            answers[label] = f"refused: {exc}"
        finally:
            transport.close()

    async def peers(port: int) -> None:
        for label, value in HOSTILE.items():
            await asyncio.to_thread(publish_hostile, port, label, value)

    events, records = await logs_of(keys, tmp_path, fmt, peers)
    assert "published?!" not in answers.values()
    assert_nothing_forged(events, records)
    refused = [e for e in events if e["event"] == "refused publish"]
    for label in PRINTABLE:
        name = _text(HOSTILE[label]).lower()  # asyncssh lower-cases a bind address
        assert [e for e in refused if e["name"] == name], (label, refused)
        assert [r for r in records if r["event"] == "refused" and r.get("name") == name]
    assert not [e for e in events if e["event"] == "publish"]


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_hostile_user_name_cannot_forge_a_log_line(
    keys: Keys, tmp_path: Path, fmt: str
) -> None:
    """User names with an unknown key and with a password attempt (paramiko, raw bytes)."""
    stranger = paramiko.Ed25519Key.from_private_key_file(str(keys.extra("stranger").path))
    answers: dict[str, str] = {}

    def log_in(port: int, label: str, value: str | bytes, password: bool) -> None:
        transport = _pinned_transport(keys, port)
        try:
            if password:
                transport.auth_password(value, "hunter2")  # type: ignore[arg-type]
            else:
                transport.auth_publickey(value, stranger)  # type: ignore[arg-type]
            answers[label] = "logged in?!"
        except (paramiko.SSHException, EOFError) as exc:
            answers[label] = f"refused: {exc}"
        finally:
            transport.close()

    async def peers(port: int) -> None:
        for label, value in HOSTILE.items():
            for password in (False, True):
                await asyncio.to_thread(log_in, port, label, value, password)

    events, records = await logs_of(keys, tmp_path, fmt, peers)
    assert "logged in?!" not in answers.values()
    assert_nothing_forged(events, records)
    refused = [e for e in events if e["event"] == "auth refused"]
    for label in PRINTABLE:
        user = repr(HOSTILE[label])
        for method in ("unknown key", "password authentication"):
            assert [e for e in refused if method in e["reason"] and user in e["reason"]], label
        assert [r for r in records if r["event"] == "refused" and user in r["reason"]]


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_hostile_session_request_cannot_forge_a_log_line(
    keys: Keys, tmp_path: Path, fmt: str
) -> None:
    """exec commands (a key request verb too) and subsystem names from a logged-in key."""
    client_key = paramiko.Ed25519Key.from_private_key_file(str(keys.client.path))
    answers: list[str] = []

    def sessions(port: int) -> None:
        transport = _pinned_transport(keys, port)
        try:
            transport.auth_publickey("alice", client_key)
            for value in HOSTILE.values():
                for kind, request in (
                    ("exec", value),
                    (
                        "exec",
                        b"sshtun-enrol " + (value if isinstance(value, bytes) else value.encode()),
                    ),
                    ("subsystem", value),
                ):
                    if not transport.is_active():
                        return
                    chan = transport.open_session(timeout=15)
                    try:
                        if kind == "exec":
                            chan.exec_command(request)  # type: ignore[arg-type]
                        else:
                            chan.invoke_subsystem(request)  # type: ignore[arg-type]
                        answers.append(f"{kind} accepted: exit {chan.recv_exit_status()}")
                    except paramiko.SSHException as exc:
                        answers.append(f"{kind} refused: {exc}")
                    finally:
                        chan.close()
        finally:
            transport.close()

    async def peers(port: int) -> None:
        await asyncio.to_thread(sessions, port)

    events, records = await logs_of(keys, tmp_path, fmt, peers)
    assert_nothing_forged(events, records)
    refused = [e for e in events if e["event"] in ("refused session", "refused key request")]
    for label in PRINTABLE:
        shown = repr(HOSTILE[label])[1:-1]  # the reason quotes the command with repr()
        assert [e for e in refused if shown in e["reason"]], (label, refused)


class _HostileHome:
    """An agent's home side that refuses every routed channel with a hostile reason."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons

    def __call__(self, orig_host: str, orig_port: int) -> asyncssh.SSHTCPSession[bytes]:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, self.reasons.pop(0))


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_hostile_home_side_refusal_cannot_forge_a_log_line(
    keys: Keys, tmp_path: Path, fmt: str
) -> None:
    """The reason an agent (asyncssh here, any SSH client) gives for refusing a routed channel."""
    reasons = [v for v in HOSTILE.values() if isinstance(v, str)]
    client_key = paramiko.Ed25519Key.from_private_key_file(str(keys.client.path))
    answers: list[str] = []

    def open_homebox(port: int, count: int) -> None:
        transport = _pinned_transport(keys, port)
        try:
            transport.auth_publickey("alice", client_key)
            for _ in range(count):
                try:
                    transport.open_channel("direct-tcpip", ("homebox", 22), ("127.0.0.1", 4711))
                    answers.append("opened?!")
                except paramiko.ChannelException as exc:
                    answers.append(exc.text)
        finally:
            transport.close()

    async def peers(port: int) -> None:
        pinned = ([asyncssh.import_public_key(bastion_pub(keys))], [], [])
        async with asyncssh.connect(
            "127.0.0.1",
            port,
            username="agent",
            client_keys=[str(keys.agent.path)],
            known_hosts=pinned,
            config=None,
        ) as agent:
            await agent.create_server(_HostileHome(list(reasons)), "homebox", 22)
            await asyncio.to_thread(open_homebox, port, len(reasons))

    events, records = await logs_of(keys, tmp_path, fmt, peers)
    assert len(answers) == len(reasons) and "opened?!" not in answers
    assert_nothing_forged(events, records)
    refused = [e for e in events if e["event"] == "refused open"]
    for reason in reasons:  # each in its own field, unchanged
        full = f"homebox:22: the home side refused: {reason}"
        assert [e for e in refused if e["reason"] == full], (reason, refused)
        assert [r for r in records if r["event"] == "refused" and r["reason"] == full]


class _HostileBastion(asyncssh.SSHServer):
    """A bastion the agent trusts (its pinned host key) that hangs up with a hostile reason."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return True

    def server_requested(self, listen_host: str, listen_port: int) -> asyncssh.SSHListener:
        """Accept the forward (the link comes up), then hang up with the next reason."""
        reason = self.reasons[0] if len(self.reasons) == 1 else self.reasons.pop(0)
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, self.conn.disconnect, asyncssh.DISC_PROTOCOL_ERROR, reason)
        return _NoSocket(listen_port)


class _NoSocket(asyncssh.SSHListener):
    """An accepted remote forward that opens nothing."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self._port = port

    def get_port(self) -> int:
        return self._port

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


async def test_a_hostile_bastion_reason_cannot_forge_an_agent_log_line(
    keys: Keys, tmp_path: Path
) -> None:
    """The other direction: what a bastion says (a disconnect reason) in the agent's log."""
    reasons = [v for v in HOSTILE.values() if isinstance(v, str)]
    server = await asyncssh.create_server(
        lambda: _HostileBastion(reasons),
        "127.0.0.1",
        0,
        server_host_keys=[str(keys.bastion_host_path)],
    )
    try:
        port = server.sockets[0].getsockname()[1]
        backoff = {"base": 0.1, "cap": 0.5}
        config = agent_config(keys, port, [("homebox", 22, "127.0.0.1:9")], backoff=backoff)
        afile = write_toml(tmp_path / "agent.toml", "agent", config)
        argv = [*SSHTUN, "-v", "--log-format", "text", "up", "--config", str(afile)]
        async with process(*argv) as agent:
            lines: list[str] = []
            for _ in range(len(HOSTILE) + 1):  # each reason at least once
                lines += await read_until(agent.stderr, "link down", timeout=30)
            agent.send_signal(signal.SIGTERM)
            await asyncio.wait_for(agent.wait(), 30)
            assert agent.stderr is not None
            lines += (await agent.stderr.read()).decode().splitlines(keepends=True)
    finally:
        server.close()
    events = [parse_text_line(line.removesuffix("\n")) for line in lines]
    assert_nothing_forged(events, [])
    downs = [str(e["error"]) for e in events if e["event"] == "link down"]
    for reason in HOSTILE.values():
        if isinstance(reason, str):
            assert [d for d in downs if reason in d], (reason, downs)
