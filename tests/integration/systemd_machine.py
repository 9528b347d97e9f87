"""A throwaway machine with a real systemd *system* manager, for the shipped units.

systemd runs as PID 1 of its own PID, mount, network and cgroup namespaces (what
systemd-nspawn does, done with ``unshare``): the host's filesystem, with a private
copy-on-write ``/etc`` (an overlay), private tmpfs ``/run``, ``/tmp``, ``/var`` and
``/opt``, and a cgroup2 subtree of the host delegated to it. Units run sandboxed for real
(DynamicUser=, ProtectSystem=, PrivateTmp=, LoadCredential= ...); nothing is written to the
host's ``/etc``, ``/var`` or ``/run``. systemctl reaches the manager over
``/run/systemd/private`` (there is no D-Bus), from inside the namespaces (``nsenter``).

sshtun is installed the way an admin would, outside /root and /home (which the units'
ProtectHome= hides): a venv in ``/opt/sshtun`` on the system's Python, whose
``bin/sshtun`` is what ``sshtun systemd install`` finds on PATH and names in ExecStart=.
The venv gets this checkout and the test interpreter's installed dependencies through
read-only bind mounts (same Python minor version, so compiled wheels load).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import sshtunnel_mgr

SYSTEMD = "/usr/lib/systemd/systemd"
SYSTEM_PYTHON = "/usr/bin/python3"
PATH = "/opt/sshtun/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

BOOT = """set -e
mount -t overlay overlay -o lowerdir=/etc,upperdir={layers}/etc,workdir={layers}/etc-work /etc
# The checkout and the dependencies first, before the tmpfs mounts below hide them (a CI
# clone may well live under /tmp or /opt): staged in {layers}, then moved under /opt.
mkdir {layers}/src {layers}/deps
mount --bind {src} {layers}/src && mount --bind {deps} {layers}/deps
mount -t tmpfs -o mode=0755 tmpfs /opt
mkdir /opt/sshtun-src /opt/sshtun-deps
mount --bind {layers}/src /opt/sshtun-src && mount -o remount,bind,ro /opt/sshtun-src
mount --bind {layers}/deps /opt/sshtun-deps && mount -o remount,bind,ro /opt/sshtun-deps
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /var
mkdir -p /var/lib /var/log /var/cache /var/tmp && chmod 1777 /var/tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
cat > /etc/systemd/system/sshtun-test.target <<'EOF'
[Unit]
Description=sshtun test machine
Wants=systemd-journald.service
EOF
# As a container manager must: systemd in a container leaves propagation to it, and a
# unit's credentials (mounted by a helper in its own namespace) reach the service only
# through shared mounts. New peer groups: nothing propagates to the host.
mount --make-rshared /
exec env -i container=sshtun-test PATH={path} {systemd} --unit=sshtun-test.target
"""

# The admin's install: a venv on the system Python with an entry point like pip writes.
INSTALL = """set -e
{python} -m venv --without-pip /opt/sshtun
site=$(/opt/sshtun/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\\n' /opt/sshtun-src "import site; site.addsitedir('/opt/sshtun-deps')" \
    > "$site/sshtun.pth"
printf '#!/opt/sshtun/bin/python3\\nfrom sshtunnel_mgr.cli.main import run\\nrun()\\n' \
    > /opt/sshtun/bin/sshtun
chmod 0755 /opt/sshtun/bin/sshtun
"""


def cgroup_root() -> Path | None:
    for root in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if (root / "cgroup.procs").exists() and os.access(root, os.W_OK):
            return root
    return None


def require_system_manager() -> None:
    """Skip only where there is no systemd (or no root to run it); anything else a
    machine with systemd lacks is a failure."""
    if not Path(SYSTEMD).exists():
        pytest.skip("systemd is not installed")
    if os.geteuid() != 0:
        pytest.skip("running a systemd system manager needs root")
    assert cgroup_root() is not None, "no writable cgroup2 hierarchy"
    assert shutil.which("unshare") and shutil.which("nsenter"), "util-linux missing"
    assert Path(SYSTEM_PYTHON).exists(), f"{SYSTEM_PYTHON} missing (apt-get install python3)"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Machine:
    pid: int  # systemd (PID 1 inside), as the host sees it

    def run(self, *argv: str, stdin: str | None = None) -> Result:
        """A command as root inside the machine (its files, processes and network)."""
        env = {**os.environ, "PATH": PATH}
        env.pop("XDG_RUNTIME_DIR", None)  # the CLI finds the units' runtime directories
        proc = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", "-n", "--", *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *argv: str, stdin: str | None = None) -> str:
        result = self.run(*argv, stdin=stdin)
        assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
        return result.stdout

    def systemctl(self, *args: str) -> Result:
        return self.run("systemctl", "--no-pager", *args)

    def show(self, unit: str, prop: str) -> str:
        return self.ok("systemctl", "show", "-P", prop, unit).strip()

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"not in {timeout} s: {what}")
            time.sleep(0.1)


@contextlib.contextmanager
def system_manager(work: Path) -> Iterator[Machine]:
    require_system_manager()
    root = cgroup_root()
    assert root is not None
    cgroup = root / f"sshtun-system-{os.getpid()}-{work.name}"
    layers = work / "layers"
    (layers / "etc").mkdir(parents=True)
    (layers / "etc-work").mkdir()
    src = Path(sshtunnel_mgr.__file__).resolve().parent.parent
    boot = BOOT.format(
        layers=layers,
        src=src,
        deps=sysconfig.get_paths()["purelib"],
        path=PATH,
        systemd=SYSTEMD,
    )
    (work / "boot.sh").write_text(boot)
    cgroup.mkdir()
    log = (work / "manager.log").open("wb")
    proc = subprocess.Popen(
        [
            "sh",
            "-c",
            f"echo $$ > {cgroup}/cgroup.procs && exec unshare --cgroup --mount --pid --net "
            f"--fork --mount-proc --propagation private sh {work / 'boot.sh'}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    manager = 0
    try:
        manager = _manager_pid(proc.pid, work)
        machine = Machine(manager)
        machine.wait("the system manager is up", lambda: _running(machine), timeout=60)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        system = machine.ok(
            SYSTEM_PYTHON, "-c", "import sys; print(*sys.version_info[:2], sep='.')"
        )
        if system.strip() != version:
            pytest.skip(f"{SYSTEM_PYTHON} is {system.strip()}, the tests' Python {version}")
        machine.ok("sh", "-c", INSTALL.format(python=SYSTEM_PYTHON))
        yield machine
    finally:
        for pid in (manager, proc.pid):  # PID 1 of a namespace takes all of it along
            with contextlib.suppress(ProcessLookupError):
                if pid:
                    os.kill(pid, signal.SIGKILL)
        for pid in _pids(cgroup):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()
        _remove_cgroup(cgroup)


def _manager_pid(unshare_pid: int, work: Path) -> int:
    """systemd's host PID: the child unshare forked (PID 1 inside), once it is systemd."""
    deadline = time.monotonic() + 30
    children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children")
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for pid in children.read_text().split():
                if Path(f"/proc/{pid}/exe").resolve() == Path(SYSTEMD).resolve():
                    return int(pid)
        time.sleep(0.05)
    raise AssertionError("systemd did not start: " + (work / "manager.log").read_text())


def _running(machine: Machine) -> bool:
    state = machine.run("systemctl", "is-system-running").stdout.strip()
    return state in ("running", "degraded")


def _pids(cgroup: Path) -> list[int]:
    pids: list[int] = []
    if cgroup.exists():
        for procs in cgroup.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids += [int(p) for p in procs.read_text().split()]
    return pids


def _remove_cgroup(cgroup: Path) -> None:
    if not cgroup.exists():
        return
    groups = sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for group in [*groups, cgroup]:
        for _ in range(100):
            try:
                group.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)
