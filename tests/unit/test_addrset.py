"""A bastion name's addresses: the pure set arithmetic (core/addrset.py) as tables, and the
agent's NameFollower (agent/resolve.py) with a fake resolver, fake links and a fake clock:
links added and dropped as the answer changes, a failed resolution keeps them."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine, Sequence
from typing import Any

import pytest

from sshtunnel_mgr.agent.resolve import NameFollower
from sshtunnel_mgr.core.addrset import (
    AddressChange,
    ResolveFailures,
    addresses,
    canonical,
    diff,
    is_ip_literal,
)
from sshtunnel_mgr.core.backoff import Backoff
from sshtunnel_mgr.core.config import BastionEndpoint

PIN = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@pytest.mark.parametrize(
    ("host", "literal"),
    [
        ("192.0.2.7", True),
        ("2001:db8::1", True),
        ("fe80::1%eth0", True),
        ("bastion.example.com", False),
        ("localhost", False),
        ("192.0.2.07x", False),
        ("", False),
    ],
)
def test_is_ip_literal(host: str, literal: bool) -> None:
    assert is_ip_literal(host) is literal


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2001:0db8:0000::0001", "2001:db8::1"),
        ("::ffff:192.0.2.9", "192.0.2.9"),
        ("192.0.2.9", "192.0.2.9"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_canonical(text: str, want: str) -> None:
    assert canonical(text) == want


def test_addresses_dedupe_in_resolver_order() -> None:
    answer = ["192.0.2.2", "2001:db8::1", "192.0.2.1", "192.0.2.2", "2001:0db8::1"]
    assert addresses(answer) == ("192.0.2.2", "2001:db8::1", "192.0.2.1")


@pytest.mark.parametrize(
    ("current", "answer", "want"),
    [
        # first answer: everything is new
        ((), ["a1", "a2"], AddressChange(added=("a1", "a2"))),
        # same answer, any order: nothing changes
        (("a1", "a2"), ["a2", "a1"], AddressChange(kept=("a1", "a2"))),
        # one record gone, one new
        (("a1", "a2"), ["a2", "a3"], AddressChange(("a3",), ("a1",), ("a2",))),
        # all replaced
        (("a1",), ["a2"], AddressChange(("a2",), ("a1",), ())),
        # a failed resolution keeps every link
        (("a1", "a2"), None, AddressChange(kept=("a1", "a2"))),
        # so does an empty answer (never drop every bastion on a DNS hiccup)
        (("a1", "a2"), [], AddressChange(kept=("a1", "a2"))),
        # nothing yet and nothing found
        ((), None, AddressChange()),
        # spellings of one address are one address
        (
            ("2001:db8::1",),
            ["2001:0db8::1", "::ffff:192.0.2.1"],
            AddressChange(added=("192.0.2.1",), kept=("2001:db8::1",)),
        ),
    ],
)
def test_diff(current: tuple[str, ...], answer: list[str] | None, want: AddressChange) -> None:
    got = diff(current, answer)
    assert got == want
    assert got.changed == bool(want.added or want.dropped)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_resolve_failures_rate_limited() -> None:
    clock = FakeClock()
    failures = ResolveFailures(every=600, clock=clock)
    assert failures.failed() == 1  # the first failure of an outage is written
    for _ in range(5):
        clock.now += 60
        assert failures.failed() is None  # then quiet...
    clock.now += 300
    assert failures.failed() == 6  # ...until `every` has passed: with the count since
    assert failures.failures == 7
    assert failures.resolved() == 7  # the outage is over: how long it was
    assert failures.resolved() == 0
    assert failures.failed() == 1  # a new outage is written at once
    with pytest.raises(ValueError):
        ResolveFailures(every=0)


# NameFollower with a fake resolver and fake links ---------------------------------------
class FakeLink:
    def __init__(self, address: str) -> None:
        self.label = f"bastion.test:2222/{address}"
        self.address = address
        self.left = ""
        self.gone = asyncio.Event()  # the link's connection has drained and closed

    async def run(self, stop: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.gone.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()

    async def leave(self, reason: str) -> None:
        self.left = reason


class FakeResolver:
    def __init__(self) -> None:
        self.answer: Sequence[str] | BaseException = ["127.0.0.2", "127.0.0.3"]
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append((host, port))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return list(self.answer)


class Harness:
    def __init__(self, wait: Any = None) -> None:
        self.clock = FakeClock()
        self.resolver = FakeResolver()
        self.made: list[FakeLink] = []
        self.changes = 0
        self.tasks: list[asyncio.Task[Any]] = []
        self.stop = asyncio.Event()
        endpoint = BastionEndpoint(address="bastion.test:2222", host_key=PIN)
        self.follower = NameFollower(
            endpoint,
            self._new_link,  # type: ignore[arg-type]
            interval=lambda: 60.0,
            retry=Backoff(base=1, cap=8, clock=self.clock, rand=lambda: 0.5),
            resolve=self.resolver,
            clock=self.clock,
            on_change=self._changed,
            **({} if wait is None else {"wait": wait}),
        )
        self.follower.bind(self.stop, self._spawn)

    def _new_link(self, address: str) -> FakeLink:
        link = FakeLink(address)
        self.made.append(link)
        return link

    def _changed(self) -> None:
        self.changes += 1

    def _spawn(self, coro: Coroutine[Any, Any, object], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    def live(self) -> list[str]:
        return sorted(self.follower.links)

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


async def test_follower_adds_and_drops_links_as_the_answer_changes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sshtunnel_mgr")
    h = Harness()
    change = await h.follower.refresh()
    assert change.added == ("127.0.0.2", "127.0.0.3")
    assert h.live() == ["127.0.0.2", "127.0.0.3"]
    assert h.resolver.calls == [("bastion.test", 2222)]
    assert h.follower.snapshot()["addresses"] == ["127.0.0.2", "127.0.0.3"]

    # The same answer again: no new link, nothing leaves.
    assert not (await h.follower.refresh()).changed
    assert len(h.made) == 2

    # 127.0.0.2 disappears, 127.0.0.4 appears.
    h.resolver.answer = ["127.0.0.4", "127.0.0.3"]
    change = await h.follower.refresh()
    assert (change.added, change.dropped) == (("127.0.0.4",), ("127.0.0.2",))
    assert h.live() == ["127.0.0.3", "127.0.0.4"]
    await h.settle()
    dropped = h.made[0]
    assert dropped.left == "address no longer resolved"
    # It is listed (draining) until its connection has drained, then forgotten.
    assert dropped in h.follower.all_links()
    dropped.gone.set()
    await h.settle()
    assert dropped not in h.follower.all_links()
    assert [link.address for link in h.follower.all_links()] == ["127.0.0.3", "127.0.0.4"]
    assert any("bastion addresses" in r.getMessage() for r in caplog.records)
    await h.close()


async def test_failed_resolution_keeps_links_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sshtunnel_mgr")
    h = Harness()
    await h.follower.refresh()
    for answer in (socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), [], TimeoutError()):
        h.resolver.answer = answer
        for _ in range(3):
            h.clock.now += 60
            change = await h.follower.refresh()
            assert not change.changed
            assert h.live() == ["127.0.0.2", "127.0.0.3"]
    failed = [r for r in caplog.records if "resolve failed" in r.getMessage()]
    assert len(failed) == 1  # nine failures in nine minutes: one line
    assert h.follower.last_error
    assert all(link.left == "" for link in h.made)

    h.resolver.answer = ["127.0.0.3"]
    await h.follower.refresh()
    assert h.live() == ["127.0.0.3"]
    assert h.follower.last_error == ""
    assert any("resolves again" in r.getMessage() for r in caplog.records)
    await h.close()


async def test_follower_run_retries_with_backoff_until_the_name_resolves() -> None:
    """run(): a name that does not resolve yet is retried at the backoff's pace (not the
    long interval); once it resolves, the links start and the follower stops with ``stop``."""
    delays: list[float] = []

    async def fake_wait(stop: asyncio.Event, delay: float) -> None:
        delays.append(delay)  # the time that would pass: none does
        if len(delays) == 3:
            h.resolver.answer = ["127.0.0.2"]
        if len(delays) == 4:
            stop.set()

    h = Harness(wait=fake_wait)
    h.resolver.answer = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    await h.follower.run(h.stop, h._spawn)
    # Backoff (base 1, cap 8, rand 0.5: 0.75 of the raw delay), then the long interval.
    assert delays == [0.75, 1.5, 3.0, 60.0]
    assert h.live() == ["127.0.0.2"]
    await h.close()


# What a user sees ----------------------------------------------------------------------
def test_status_shows_each_address_and_the_names_answer() -> None:
    from sshtunnel_mgr.cli.status import format_status

    now = 10_000.0
    link = {
        "state": "up",
        "up_since": now - 5,
        "published": ["homebox:22"],
        "refused": {},
        "last_error": "",
        "probe_error": "",
    }
    answer = {
        "role": "agent",
        "healthy": True,
        "links": [
            {**link, "bastion": "bastion.test:2222/127.0.0.2"},
            {**link, "bastion": "bastion.test:2222/127.0.0.3", "state": "leaving"},
        ],
        "names": [
            {
                "bastion": "bastion.test:2222",
                "addresses": ["127.0.0.2"],
                "resolved_at": now - 12,
                "last_error": "[Errno -3] Temporary failure in name resolution",
            }
        ],
    }
    text = format_status(answer, now)
    assert "bastion.test:2222/127.0.0.2  up" in text
    assert "bastion.test:2222/127.0.0.3  leaving" in text
    assert (
        "bastion.test:2222 resolves to 127.0.0.2 (12s ago); the last resolution failed "
        "([Errno -3] Temporary failure in name resolution), links kept"
    ) in text
    assert "resolves to" not in format_status({**answer, "names": []}, now)


@pytest.mark.parametrize(("host", "by_name"), [("bastion.example.com", True), ("192.0.2.7", False)])
def test_ssh_config_block_for_a_bastion_name(host: str, by_name: bool) -> None:
    from pathlib import Path

    from sshtunnel_mgr.setup import sshconfig

    settings = sshconfig.ClientSettings(
        alias="sshtun-bastion",
        bastion_host=host,
        bastion_port=2222,
        bastion_user="sshtun",
        known_hosts=Path("/k"),
    )
    text = sshconfig.render(settings, [("homebox", 22)])
    block = text.split("\n\n")[0]
    assert ("    ConnectTimeout 10" in block) is by_name
    assert ("ssh tries each of its addresses in turn" in block) is by_name
