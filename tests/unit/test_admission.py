"""Admission of connections not logged in yet (pure): MaxStartups parsing and random early
drop as tables, per-source queues, hand-over of freed slots, fair eviction at the cap."""

from __future__ import annotations

import pytest

from sshtunnel_mgr.core.admission import Admission, StartupLimits
from sshtunnel_mgr.core.config import LimitsConfig
from sshtunnel_mgr.core.startups import MaxStartups, early_drop, parse_max_startups


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10:30:100", MaxStartups(10, 30, 100)),
        (" 50 : 30 : 200 ", MaxStartups(50, 30, 200)),
        ("100", MaxStartups(100, 100, 100)),
        ("1:100:1", MaxStartups(1, 100, 1)),
    ],
)
def test_max_startups_parses(text: str, expected: MaxStartups) -> None:
    assert parse_max_startups(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is not start:rate:full"),
        ("10:30", "is not start:rate:full"),
        ("10:30:100:5", "is not start:rate:full"),
        ("-1:30:100", "is not start:rate:full"),
        ("10:x:100", "is not start:rate:full"),
        ("\u0661\u0660:30:100", "is not start:rate:full"),  # Arabic-Indic digits
        ("0:30:100", "start must be at least 1"),
        ("10:0:100", "rate is a percentage"),
        ("10:101:100", "rate is a percentage"),
        ("100:30:10", "full must be at least start"),
        ("10:30:2000000", "at most 1000000"),
    ],
)
def test_max_startups_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_max_startups(text)


def test_config_validates_max_startups() -> None:
    assert LimitsConfig().max_startups_spec == MaxStartups(50, 30, 200)
    with pytest.raises(ValueError, match="max_startups"):
        LimitsConfig(max_startups="10:300:100")


SPEC = MaxStartups(10, 30, 100)


@pytest.mark.parametrize(
    ("startups", "roll", "dropped"),
    [
        (0, 0.0, False),
        (9, 0.0, False),  # below start: never
        (10, 0.29, True),  # at start: rate (30 %)
        (10, 0.30, False),
        (55, 0.64, True),  # halfway: 30 + 70 * 45 // 90 = 65 %
        (55, 0.65, False),
        (99, 0.98, True),  # 30 + 70 * 89 // 90 = 99 %
        (99, 0.99, False),
        (100, 0.99, True),  # full: always
        (5000, 0.99, True),
    ],
)
def test_random_early_drop_is_openssh_s(startups: int, roll: float, dropped: bool) -> None:
    assert early_drop(startups, SPEC, roll) is dropped


def limits(
    start: int = 10,
    rate: int = 30,
    full: int = 100,
    per_source: int = 2,
    queue_per_source: int = 3,
    queue_total: int = 100,
) -> StartupLimits:
    return StartupLimits(MaxStartups(start, rate, full), per_source, queue_per_source, queue_total)


class Rolls:
    """Injected randomness: the next values of ``random.random()``."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.values.pop(0) if self.values else 0.99


def test_over_its_cap_a_source_waits_then_takes_freed_slots_in_order() -> None:
    adm: Admission[str] = Admission(limits(queue_per_source=3))
    assert [adm.arrive(f"c{i}", "192.0.2.1").action for i in range(6)] == [
        "start",
        "start",
        "wait",
        "wait",
        "wait",
        "drop",
    ]
    assert (adm.active("192.0.2.1"), adm.waiting("192.0.2.1")) == (2, 3)
    dropped = adm.arrive("c6", "192.0.2.1")
    assert dropped.reason == (
        "too many connections from 192.0.2.1 not logged in yet (max 2, and 3 waiting)"
    )
    # Another source is not affected.
    assert adm.arrive("other", "192.0.2.2").action == "start"
    # A started one logs in or leaves: the oldest waiting one of that source starts.
    assert adm.finished("c0") == "c2"
    assert adm.finished("c1") == "c3"
    assert adm.abandon("c4")  # timed out waiting
    assert not adm.abandon("c4")
    assert adm.finished("c2") is None
    assert adm.finished("c2") is None  # twice: no-op
    assert (adm.active("192.0.2.1"), adm.waiting("192.0.2.1")) == (1, 0)
    assert (adm.total_active, adm.total_waiting) == (2, 0)


def test_an_ipv6_slash_64_is_one_source_and_mapped_ipv4_is_ipv4() -> None:
    adm: Admission[str] = Admission(limits(per_source=1, queue_per_source=1))
    assert adm.arrive("a", "2001:db8:1:2::1").action == "start"
    assert adm.arrive("b", "2001:db8:1:2:ffff::9").action == "wait"
    assert adm.arrive("c", "2001:db8:1:3::1").action == "start"  # another /64
    assert adm.arrive("d", "192.0.2.7").action == "start"
    assert adm.arrive("e", "::ffff:192.0.2.7").action == "wait"
    assert adm.waiting("2001:db8:1:2::abcd") == 1


def test_the_total_queue_is_bounded_too() -> None:
    adm: Admission[str] = Admission(limits(per_source=1, queue_per_source=5, queue_total=2))
    verdicts = []
    for i, src in enumerate(["192.0.2.1", "192.0.2.2"]):
        adm.arrive(f"s{i}", src)
    for i, src in enumerate(["192.0.2.1", "192.0.2.2", "192.0.2.1"]):
        verdicts.append(adm.arrive(f"w{i}", src))
    assert [v.action for v in verdicts] == ["wait", "wait", "drop"]
    assert verdicts[-1].reason == "too many connections waiting to start (max 2)"


def test_no_per_source_cap_means_no_queue() -> None:
    adm: Admission[str] = Admission(limits(per_source=0, start=50, full=50))
    assert all(adm.arrive(f"c{i}", "192.0.2.1").action == "start" for i in range(50))
    assert adm.arrive("more", "192.0.2.1").action == "drop"


def test_random_early_drop_spares_a_source_that_holds_nothing() -> None:
    rolls = Rolls(0.0, 0.5)
    adm: Admission[str] = Admission(limits(start=2, rate=50, full=10, per_source=5), rolls)
    assert adm.arrive("a1", "192.0.2.1").action == "start"
    assert adm.arrive("a2", "192.0.2.1").action == "start"  # below start: no roll
    assert rolls.calls == 0
    dropped = adm.arrive("a3", "192.0.2.1")  # 2 startups, 50 %: roll 0.0 drops
    assert dropped.action == "drop"
    assert dropped.reason == (
        "random early drop: 2 connections not logged in yet (max_startups 2:50:10)"
    )
    assert adm.arrive("a4", "192.0.2.1").action == "start"  # roll 0.5 does not
    assert adm.arrive("b1", "192.0.2.2").action == "start"  # holds none: no roll at all
    assert rolls.calls == 2


def test_at_full_a_new_source_evicts_the_oldest_startup_of_the_heaviest() -> None:
    adm: Admission[str] = Admission(limits(start=4, rate=100, full=4, per_source=3), Rolls())
    for name, src in [("a1", "192.0.2.1"), ("a2", "192.0.2.1"), ("a3", "192.0.2.1")]:
        assert adm.arrive(name, src).action == "start"
    assert adm.arrive("b1", "192.0.2.2").action == "start"
    # Full (4). A source holding none takes the oldest slot of the one holding 3.
    verdict = adm.arrive("c1", "192.0.2.3")
    assert (verdict.action, verdict.evict) == ("start", "a1")
    assert (adm.active("192.0.2.1"), adm.total_active) == (2, 4)
    assert adm.finished("a1") is None  # the evicted one's end frees nothing more
    # Now the heaviest holds 2: a source holding one may not evict (2 < 1 + 2)...
    dropped = adm.arrive("b2", "192.0.2.2")
    assert (dropped.action, dropped.evict) == ("drop", None)
    assert dropped.reason == "too many connections not logged in yet (max_startups 4:100:4: full)"
    # ... but a fresh one may (2 >= 0 + 2).
    assert adm.arrive("d1", "192.0.2.4").evict == "a2"
    # Sources holding one each: nobody is evicted any more, the cap holds.
    assert adm.arrive("e1", "192.0.2.5").action == "drop"
    assert adm.total_active == 4


def test_a_freed_slot_is_handed_over_even_at_the_cap() -> None:
    """Hand-over keeps the total where it was, so a waiting burst is not early-dropped."""
    adm: Admission[str] = Admission(limits(start=2, rate=100, full=2, per_source=2), Rolls())
    adm.arrive("a1", "192.0.2.1")
    adm.arrive("a2", "192.0.2.1")
    assert adm.arrive("a3", "192.0.2.1").action == "wait"
    assert adm.finished("a1") == "a3"
    assert adm.total_active == 2
