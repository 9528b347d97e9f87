"""The admin socket cannot be taken over by another local user (issue 8, item 10).

Real processes of real other uids: the test runs as root and forks children that drop to
uids that exist nowhere else (a "victim" who runs ``sshtun``, an "attacker" who got to
``/tmp`` first, a DynamicUser-like service uid). The children are this very interpreter
(it lives under /root, which the other uids cannot read), so everything they need is
imported before the fork; each is stopped by its pid and every directory made is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sshtunnel_mgr.cli.main import main
from sshtunnel_mgr.core.errors import EXIT_UNSAFE
from sshtunnel_mgr.runtime.admin import AdminServer, default_socket_path
from sshtunnel_mgr.runtime.logsetup import setup_logging
from tests.harness import Keys, access_text, agent_config, bastion_config, write_toml
from tests.integration.conftest import logged

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="plays other local users: needs root")

DEADLINE = 60.0


def _free_uids(count: int) -> list[int]:
    """uids no account and no process of this machine uses (so nothing else is touched)."""
    running = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(FileNotFoundError):  # it ended meanwhile
            running.add(os.stat(f"/proc/{pid}").st_uid)
    found: list[int] = []
    uid = 42000 + (os.getpid() % 4000) * 4
    while len(found) < count:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            if uid not in running and not os.path.exists(f"/tmp/sshtun-{uid}"):
                found.append(uid)
        uid += 1
    return found


@dataclass
class Child:
    """A forked process running as another uid; its stdout and stderr come back on a pipe."""

    pid: int
    fd: int
    buffer: bytes = b""
    code: int | None = None
    lines: list[str] = field(default_factory=list)

    def _fill(self, deadline: float) -> bool:
        """Read what is there (waiting until the deadline); False at end of output."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError(f"child {self.pid} said nothing: {self.buffer!r}")
        data = os.read(self.fd, 65536)
        self.buffer += data
        return bool(data)

    def read_line(self, timeout: float = DEADLINE) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            if not self._fill(deadline):
                raise EOFError(f"child {self.pid} ended: {self.lines} {self.buffer!r}")
        line, self.buffer = self.buffer.split(b"\n", 1)
        self.lines.append(line.decode())
        return self.lines[-1]

    def wait_line(self, prefix: str, timeout: float = DEADLINE) -> str:
        deadline = time.monotonic() + timeout
        while not (line := self.read_line(deadline - time.monotonic())).startswith(prefix):
            pass
        return line

    def finish(self, timeout: float = DEADLINE) -> tuple[int, str]:
        """Everything it printed and its exit status, once it ends by itself."""
        deadline = time.monotonic() + timeout
        while self._fill(deadline):
            pass
        os.close(self.fd)
        _, status = os.waitpid(self.pid, 0)
        self.code = os.waitstatus_to_exitcode(status)
        return self.code, "\n".join(self.lines) + self.buffer.decode(errors="replace")

    def stop(self) -> None:
        if self.code is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.code = -9
            with contextlib.suppress(OSError):
                os.close(self.fd)


def fork_as(uid: int, work: Callable[[], int], env: dict[str, str] | None = None) -> Child:
    """Run ``work`` in a forked child as ``uid`` (its own gid, no groups); its exit status is
    what it returns. ``env`` replaces the environment."""
    read, write = os.pipe()
    with warnings.catch_warnings():  # 3.12+ warns about fork in a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 70
        try:
            os.close(read)
            out = os.fdopen(write, "w", buffering=1)
            sys.stdout = sys.stderr = out
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            if env is not None:
                os.environ.clear()
                os.environ.update(env)
            code = work()
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
            os._exit(code)
    os.close(write)
    return Child(pid, read)


def user_env(home: Path) -> dict[str, str]:
    """A login's environment with no runtime directory: the admin socket goes to
    /tmp/sshtun-UID, as for a non-root service started by hand."""
    return {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def cli_as(uid: int, argv: list[str], home: Path) -> tuple[int, str]:
    """``sshtun ARGV`` as another user; exit status and output."""
    return fork_as(uid, lambda: main(argv), user_env(home)).finish()


def fake_server(directory: Path, name: str, dir_mode: int, answer: dict[str, object]) -> int:
    """An impostor: makes ``directory`` (if missing), listens on ``name`` in it, answers
    every request with ``answer`` and reports how many bytes each client sent."""
    directory.mkdir(exist_ok=True)
    directory.chmod(dir_mode)
    path = directory / name
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        path.chmod(0o777)
        server.listen()
        print("ready", flush=True)
        for _ in range(10):  # bounded: a test makes a few connections at most
            conn, _ = server.accept()
            with conn:
                conn.settimeout(DEADLINE)
                got = b""
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # hung up on
                    conn.sendall(json.dumps(answer).encode() + b"\n")
                    while chunk := conn.recv(65536):
                        got += chunk
                print(f"got {len(got)} {'PRIVATE KEY' in got.decode(errors='replace')}")
    return 0


def real_server(path: Path, answer: dict[str, object]) -> int:
    """The genuine article, as whatever uid runs it: sshtun's AdminServer."""

    async def handler(request: dict[str, object]) -> dict[str, object]:
        return answer

    async def run() -> int:
        setup_logging()  # to this child's stderr: the pipe
        admin = AdminServer(path, handler)
        if not await admin.start():
            print("not started", flush=True)
            return 1
        print("ready", flush=True)
        await asyncio.sleep(DEADLINE)  # stopped by the test, by pid, long before
        return 0

    return asyncio.run(run())


@pytest.fixture(scope="module", autouse=True)
def _imported(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The children cannot import what they miss (the interpreter's files are root's): run
    each command once here, so every module its path imports lazily is loaded first."""
    directory = tmp_path_factory.mktemp("warm")
    config = bastion_toml(directory, directory / "none.sock")
    for cmd in ("reload", "status"):
        main([cmd, "--config", str(config)])


def attackers_dir(path: Path, uid: int) -> Path:
    path.mkdir()
    os.chown(path, uid, uid)
    return path


@pytest.fixture
def uids() -> Iterator[list[int]]:
    chosen = _free_uids(3)
    yield chosen
    for uid in chosen:
        shutil.rmtree(f"/tmp/sshtun-{uid}", ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/tmp/sshtun-{uid}")  # a symlink


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A directory every uid can read (tmp_path is root's alone): configs and homes."""
    directory = Path(tempfile.mkdtemp(prefix="sshtun-test-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.stop()


def bastion_toml(directory: Path, admin_socket: Path | None = None) -> Path:
    path = directory / "bastion.toml"
    extra = f'admin_socket = "{admin_socket}"\n' if admin_socket else ""
    path.write_text(
        '[bastion]\nlisten = ["127.0.0.1:2222"]\nhost_key = "host_key"\n'
        f'access_file = "access"\n{extra}'
    )
    path.chmod(0o644)
    return path


# -- a directory another user made in /tmp ---------------------------------------------
@pytest.mark.parametrize("cmd", ["reload", "status"])
def test_victim_refuses_a_runtime_dir_another_user_made(
    uids: list[int], shared: Path, children: list[Child], cmd: str
) -> None:
    victim, attacker, _ = uids
    runtime = Path(f"/tmp/sshtun-{victim}")
    fake = fork_as(
        attacker,
        lambda: fake_server(runtime, "bastion.sock", 0o777, {"ok": True, "names": []}),
    )
    children.append(fake)
    fake.wait_line("ready")
    assert runtime.stat().st_uid == attacker

    code, out = cli_as(victim, [cmd, "--config", str(bastion_toml(shared))], shared)

    assert "reloaded" not in out and "names" not in out, out
    assert code == EXIT_UNSAFE, out
    assert f"refusing the admin socket {runtime}/bastion.sock" in out
    assert "has mode 0777" in out
    assert fake.wait_line("got ") == "got 0 False"  # it was told nothing


def test_victim_refuses_an_impostor_dir_open_only_for_search(
    uids: list[int], shared: Path, children: list[Child]
) -> None:
    victim, attacker, _ = uids
    runtime = Path(f"/tmp/sshtun-{victim}")
    # 0711: nobody can list it, but the victim can still reach a socket in it. (A 0700 one
    # of another uid keeps a non-root victim out; root is tested below, a dir in /tmp.)
    fake = fork_as(attacker, lambda: fake_server(runtime, "bastion.sock", 0o711, {"ok": True}))
    children.append(fake)
    fake.wait_line("ready")
    code, out = cli_as(victim, ["reload", "--config", str(bastion_toml(shared))], shared)
    assert code == EXIT_UNSAFE and "reloaded" not in out, out
    assert "has mode 0711" in out


def test_a_service_refuses_to_bind_into_a_dir_another_user_made(
    uids: list[int], shared: Path, children: list[Child]
) -> None:
    """The service side: it runs on without an admin socket, and says why."""
    victim, attacker, _ = uids
    runtime = Path(f"/tmp/sshtun-{victim}")

    def make() -> int:
        runtime.mkdir(mode=0o700)  # the right mode: the owner gives it away
        return 0

    assert fork_as(attacker, make).finish()[0] == 0
    env = user_env(shared)

    def start() -> int:
        os.environ.update(env)
        return real_server(default_socket_path("bastion"), {"ok": True})

    service = fork_as(victim, start)
    children.append(service)
    service.wait_line("not started")
    code, out = service.finish()
    assert code == 1
    assert "admin socket disabled" in out and f"owned by uid {attacker}" in out, out
    assert not (runtime / "bastion.sock").exists()


def test_a_symlinked_runtime_dir_is_refused_on_both_ends(
    uids: list[int], shared: Path, children: list[Child]
) -> None:
    victim, attacker, _ = uids
    runtime = Path(f"/tmp/sshtun-{victim}")
    target = attackers_dir(shared / "attackers", attacker)
    fake = fork_as(attacker, lambda: fake_server(target, "bastion.sock", 0o777, {"ok": True}))
    children.append(fake)
    fake.wait_line("ready")
    runtime.symlink_to(target)
    os.lchown(runtime, attacker, attacker)

    code, out = cli_as(victim, ["reload", "--config", str(bastion_toml(shared))], shared)
    assert code == EXIT_UNSAFE and "reloaded" not in out, out
    assert f"{runtime} is a symlink" in out
    assert fake.wait_line("got ") == "got 0 False"

    service = fork_as(victim, lambda: real_server(runtime / "bastion.sock", {"ok": True}))
    children.append(service)
    service.wait_line("not started")
    assert "is a symlink" in service.finish()[1]


def test_a_0755_dir_of_ones_own_is_refused_not_fixed(uids: list[int], shared: Path) -> None:
    victim = uids[0]
    runtime = Path(f"/tmp/sshtun-{victim}")
    runtime.mkdir(mode=0o755)
    runtime.chmod(0o755)
    os.chown(runtime, victim, victim)
    service = fork_as(victim, lambda: real_server(runtime / "agent.sock", {"ok": True}))
    try:
        service.wait_line("not started")
        assert "has mode 0755" in service.finish()[1]
    finally:
        service.stop()
    assert runtime.stat().st_mode & 0o777 == 0o755  # left as found, for a person to look at


def test_the_genuine_service_of_the_same_user_is_trusted(
    uids: list[int], shared: Path, children: list[Child]
) -> None:
    """The control: no runtime directory yet; the service makes it 0700 and the CLI of the
    same user reloads through it."""
    victim = uids[0]
    runtime = Path(f"/tmp/sshtun-{victim}")
    env = user_env(shared)

    def start() -> int:
        os.environ.update(env)
        return real_server(default_socket_path("bastion"), {"ok": True, "published": ["x"]})

    service = fork_as(victim, start)
    children.append(service)
    service.wait_line("ready")
    st = runtime.lstat()
    assert (st.st_uid, st.st_mode & 0o7777) == (victim, 0o700)
    code, out = cli_as(victim, ["reload", "--config", str(bastion_toml(shared))], shared)
    assert (code, out.splitlines()[-1]) == (0, "reloaded"), out


# -- root and a service running as a DynamicUser ---------------------------------------
@pytest.mark.parametrize(
    ("parent_mode", "trusted"), [(0o755, True), (0o1777, False)], ids=["run-0755", "tmp-1777"]
)
def test_root_trusts_a_dynamic_users_dir_only_if_root_handed_it_out(
    uids: list[int], shared: Path, children: list[Child], parent_mode: int, trusted: bool
) -> None:
    """Like systemd's RuntimeDirectory=sshtun-bastion for a DynamicUser: /run (root's,
    0755) holds a 0700 directory of the service's uid. The same directory in a place where
    anybody may create one (/tmp, 1777) proves nothing about who made it."""
    dynamic = uids[2]
    run = shared / "run"
    run.mkdir()
    run.chmod(parent_mode)
    runtime = run / "sshtun-bastion"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, dynamic, dynamic)
    sock = runtime / "bastion.sock"
    service = fork_as(dynamic, lambda: real_server(sock, {"ok": True}))
    children.append(service)
    service.wait_line("ready")

    code = main(["reload", "--config", str(bastion_toml(shared, sock))])

    assert code == (0 if trusted else EXIT_UNSAFE)


# -- a socket replaced in a directory we own; the rotation key is never sent -----------
def test_keys_rotate_sends_no_private_key_to_an_impostor(
    uids: list[int], shared: Path, children: list[Child], keys: Keys, tmp_path: Path
) -> None:
    attacker = uids[1]
    run = tmp_path / "run"
    run.mkdir(mode=0o700)  # ours (root's), 0700: the directory is fine
    lair = attackers_dir(shared / "lair", attacker)
    fake = fork_as(attacker, lambda: fake_server(lair, "x.sock", 0o755, {"ok": True}))
    children.append(fake)
    fake.wait_line("ready")
    os.rename(lair / "x.sock", run / "agent.sock")  # the socket file is replaced
    config = write_toml(
        tmp_path / "agent.toml",
        "agent",
        agent_config(
            keys, 2222, [("homebox", 22, "127.0.0.1:22")], admin_socket=run / "agent.sock"
        ),
    )

    code = main(["keys", "rotate", "--config", str(config)])

    assert fake.wait_line("got ") == "got 0 False"
    assert code == EXIT_UNSAFE


def test_keys_revoke_does_not_report_a_reload_an_impostor_answered(
    uids: list[int],
    shared: Path,
    children: list[Child],
    keys: Keys,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    attacker = uids[1]
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    lair = attackers_dir(shared / "lair", attacker)
    fake = fork_as(attacker, lambda: fake_server(lair, "x.sock", 0o755, {"ok": True}))
    children.append(fake)
    fake.wait_line("ready")
    os.rename(lair / "x.sock", run / "bastion.sock")
    access = keys.dir / "access"
    access.write_text(access_text(keys))
    access.chmod(0o600)
    config = write_toml(
        tmp_path / "bastion.toml",
        "bastion",
        bastion_config(keys, access, admin_socket=run / "bastion.sock"),
    )

    code = main(["keys", "revoke", keys.client.fingerprint, "--config", str(config)])

    out, err = capsys.readouterr()
    assert "bastion reloaded" not in out
    assert code == EXIT_UNSAFE, out + err
    assert f"the process serving it runs as uid {attacker}" in err
    assert fake.wait_line("got ") == "got 0 False"


# -- the server's own check of who connects ---------------------------------------------
async def test_the_service_answers_only_its_own_uid_and_root(
    uids: list[int], shared: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = uids[1]
    asked: list[dict[str, object]] = []

    async def handler(request: dict[str, object]) -> dict[str, object]:
        asked.append(request)
        return {"ok": True, "names": ["secret.lan"]}

    run = shared / "run"
    admin = AdminServer(run / "bastion.sock", handler)
    assert await admin.start()
    try:
        # A mode loosened by mistake (or a platform that ignores socket modes): the uid
        # check still holds.
        os.chmod(run, 0o711)
        os.chmod(run / "bastion.sock", 0o666)

        def ask() -> int:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(DEADLINE)
                sock.connect(str(run / "bastion.sock"))
                sock.sendall(b'{"cmd": "status"}\n')
                print(sock.makefile().readline().strip())
            return 0

        code, out = await asyncio.to_thread(lambda: fork_as(other, ask).finish())
        assert code == 0, out
        answer = json.loads(out.splitlines()[-1])
        assert answer["ok"] is False
        assert f"uid {other} may not use this admin socket" in answer["error"]
        assert asked == []
        assert logged(caplog, "admin refused", f"peer_uid={other}")
    finally:
        await admin.stop()
