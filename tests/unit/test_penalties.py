"""Per-source penalties (sshtunnel_mgr/core/penalties.py): scripted failures against a
fake clock, as tables. No sockets, no sleeping."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from sshtunnel_mgr.core.penalties import Penalty, SourcePenalties, source_of


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# A step: (seconds since the start, operation, address, expected).
# "fail" returns the running cool-down or None; "check" likewise; "ok" returns None.
# An expected penalty is (source, failures, remaining seconds).
Step = tuple[float, str, str, tuple[str, int, float] | None]


def run(steps: Sequence[Step], limit: int = 3, seconds: float = 60.0, **kw: object) -> None:
    clock = FakeClock()
    start = clock.now
    pen = SourcePenalties(limit, seconds, clock=clock, **kw)  # type: ignore[arg-type]
    for i, (at, op, address, expected) in enumerate(steps):
        clock.now = start + at
        if op == "fail":
            got = pen.failed(address)
        elif op == "check":
            got = pen.check(address)
        else:
            assert op == "ok"
            pen.succeeded(address)
            got = None
        want = None if expected is None else Penalty(*expected)
        assert got == want, f"step {i}: {op} {address} at t={at}"


SCENARIOS: dict[str, list[Step]] = {
    "the third failure starts the cool-down": [
        (0, "fail", "192.0.2.1", None),
        (1, "fail", "192.0.2.1", None),
        (1, "check", "192.0.2.1", None),
        (2, "fail", "192.0.2.1", ("192.0.2.1", 3, 60)),
        (2, "check", "192.0.2.1", ("192.0.2.1", 3, 60)),
        (32, "check", "192.0.2.1", ("192.0.2.1", 3, 30)),
        (61.5, "check", "192.0.2.1", ("192.0.2.1", 3, 0.5)),
        (62, "check", "192.0.2.1", None),
        # after the cool-down the source starts clean
        (62, "fail", "192.0.2.1", None),
        (63, "fail", "192.0.2.1", None),
    ],
    "other sources are not affected": [
        (0, "fail", "192.0.2.1", None),
        (0, "fail", "192.0.2.1", None),
        (0, "fail", "192.0.2.1", ("192.0.2.1", 3, 60)),
        (0, "check", "192.0.2.2", None),
        (0, "fail", "192.0.2.2", None),
        (0, "check", "192.0.2.2", None),
    ],
    "failures further apart than penalty_seconds are forgotten": [
        (0, "fail", "192.0.2.1", None),
        (59, "fail", "192.0.2.1", None),
        (118, "fail", "192.0.2.1", ("192.0.2.1", 3, 60)),  # each within 60 s of the last
        (177.5, "check", "192.0.2.1", ("192.0.2.1", 3, 0.5)),
        (178, "check", "192.0.2.1", None),
        (200, "check", "192.0.2.1", None),
        (300, "fail", "192.0.2.1", None),
        (361, "fail", "192.0.2.1", None),  # 61 s later: the count restarted
        (422, "fail", "192.0.2.1", None),
        (423, "check", "192.0.2.1", None),
    ],
    "a successful login clears the count": [
        (0, "fail", "192.0.2.1", None),
        (1, "fail", "192.0.2.1", None),
        (2, "ok", "192.0.2.1", None),
        (3, "fail", "192.0.2.1", None),
        (4, "fail", "192.0.2.1", None),
        (5, "check", "192.0.2.1", None),
    ],
    "a successful login does not end a running cool-down": [
        (0, "fail", "192.0.2.1", None),
        (0, "fail", "192.0.2.1", None),
        (0, "fail", "192.0.2.1", ("192.0.2.1", 3, 60)),
        (10, "ok", "192.0.2.1", None),
        (10, "check", "192.0.2.1", ("192.0.2.1", 3, 50)),
    ],
    "a failure during the cool-down is counted but does not extend it": [
        (0, "fail", "192.0.2.1", None),
        (0, "fail", "192.0.2.1", None),
        (0, "fail", "192.0.2.1", ("192.0.2.1", 3, 60)),
        (20, "fail", "192.0.2.1", ("192.0.2.1", 4, 40)),
        (20, "check", "192.0.2.1", ("192.0.2.1", 4, 40)),
        (60, "check", "192.0.2.1", None),
    ],
    "loopback is not exempt": [
        (0, "fail", "127.0.0.1", None),
        (0, "fail", "127.0.0.1", None),
        (0, "fail", "127.0.0.1", ("127.0.0.1", 3, 60)),
        (0, "check", "::1", None),  # another family, another source
    ],
    "an IPv6 /64 is one source": [
        (0, "fail", "2001:db8::1", None),
        (0, "fail", "2001:db8::ffff:2", None),
        (0, "fail", "2001:db8:0:0:1:2:3:4", ("2001:db8::/64", 3, 60)),
        (0, "check", "2001:db8::99", ("2001:db8::/64", 3, 60)),
        (0, "check", "2001:db8:0:1::1", None),
    ],
    "an IPv4-mapped IPv6 address counts as the IPv4 address": [
        (0, "fail", "::ffff:192.0.2.1", None),
        (0, "fail", "192.0.2.1", None),
        (0, "fail", "::ffff:192.0.2.1", ("192.0.2.1", 3, 60)),
        (0, "check", "192.0.2.1", ("192.0.2.1", 3, 60)),
    ],
    "a scoped IPv6 address": [
        (0, "fail", "fe80::1%eth0", None),
        (0, "fail", "fe80::2%eth1", None),
        (0, "fail", "fe80::3", ("fe80::/64", 3, 60)),
    ],
    "an address that is not an IP is never penalised": [
        (0, "fail", "?", None),
        (0, "fail", "?", None),
        (0, "fail", "?", None),
        (0, "check", "?", None),
    ],
}


@pytest.mark.parametrize("steps", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_scenarios(steps: list[Step]) -> None:
    run(steps)


@pytest.mark.parametrize(
    ("exempt", "address", "penalised"),
    [
        ((), "127.0.0.1", True),
        (("192.0.2.0/24",), "192.0.2.9", False),
        (("192.0.2.0/24",), "192.0.3.9", True),
        (("127.0.0.0/8", "::1/128"), "127.0.0.1", False),
        (("127.0.0.0/8", "::1/128"), "::1", False),
        (("::1/128",), "::2", True),  # exempting one IPv6 host does not exempt its /64
        (("192.0.2.0/24",), "::ffff:192.0.2.9", False),
        (("2001:db8::/32",), "2001:db8:1:2::3", False),
    ],
)
def test_exempt_networks(exempt: tuple[str, ...], address: str, penalised: bool) -> None:
    pen = SourcePenalties(1, 60, exempt=exempt, clock=FakeClock())
    assert (pen.failed(address) is not None) is penalised
    assert (pen.check(address) is not None) is penalised


def test_zero_turns_penalties_off() -> None:
    pen = SourcePenalties(0, 60, clock=FakeClock())
    for _ in range(100):
        assert pen.failed("192.0.2.1") is None
    assert pen.check("192.0.2.1") is None
    assert len(pen) == 0


@pytest.mark.parametrize(
    ("source", "failures", "remaining", "reason"),
    [
        ("127.0.0.1", 10, 300, "source 127.0.0.1 is cooling down for 300 s after 10 failed"),
        ("192.0.2.1", 3, 12.2, "cooling down for 13 s after 3 failed authentications"),
        ("2001:db8::/64", 5, 0.01, "source 2001:db8::/64 is cooling down for 1 s after 5"),
    ],
)
def test_reason(source: str, failures: int, remaining: float, reason: str) -> None:
    assert reason in Penalty(source, failures, remaining).reason


@pytest.mark.parametrize(
    ("address", "source"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("::1", "::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("?", None),
        ("", None),
        ("example.com", None),
        ("192.0.2.1:22", None),
    ],
)
def test_source_of(address: str, source: str | None) -> None:
    assert source_of(address) == source


def test_memory_is_bounded_and_the_oldest_source_is_forgotten() -> None:
    clock = FakeClock()
    pen = SourcePenalties(2, 60, max_sources=3, clock=clock)
    for i in range(10):
        clock.now += 1
        pen.failed(f"192.0.2.{i}")
        assert len(pen) <= 3
    # 192.0.2.9 is remembered (a second failure penalises it), 192.0.2.0 is not.
    assert pen.failed("192.0.2.9") is not None
    assert pen.failed("192.0.2.0") is None


def test_expired_sources_are_dropped() -> None:
    clock = FakeClock()
    pen = SourcePenalties(2, 60, clock=clock)
    for i in range(50):
        pen.failed(f"192.0.2.{i}")
    pen.failed("198.51.100.1")
    pen.failed("198.51.100.1")  # cooling down
    assert len(pen) == 51
    clock.now += 61
    assert pen.check("203.0.113.1") is None
    assert len(pen) == 0


def test_a_flood_of_sources_stays_within_the_cap() -> None:
    clock = FakeClock()
    pen = SourcePenalties(5, 60, max_sources=1000, clock=clock)
    for i in range(20000):
        pen.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(pen) == 1000


def test_reconfigure_keeps_a_running_cool_down() -> None:
    clock = FakeClock()
    pen = SourcePenalties(2, 60, clock=clock)
    pen.failed("192.0.2.1")
    assert pen.failed("192.0.2.1") == Penalty("192.0.2.1", 2, 60)
    pen.configure(5, 600, ["198.51.100.0/24"])
    clock.now += 30
    assert pen.check("192.0.2.1") == Penalty("192.0.2.1", 2, 30)
    for _ in range(4):
        assert pen.failed("192.0.2.2") is None
    assert pen.failed("192.0.2.2") == Penalty("192.0.2.2", 5, 600)
    assert pen.failed("198.51.100.7") is None


def test_max_sources_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_sources must be >= 1"):
        SourcePenalties(1, 1, max_sources=0)


def test_refusals_are_counted_and_their_logging_is_thinned() -> None:
    clock = FakeClock()
    pen = SourcePenalties(1, 60, clock=clock)
    assert pen.failed("192.0.2.1") == Penalty("192.0.2.1", 1, 60)
    seen = [pen.check("192.0.2.1") for _ in range(250)]
    assert [p.refused for p in seen if p is not None] == list(range(1, 251))
    logged = [p.refused for p in seen if p is not None and p.worth_logging]
    assert logged == [*range(1, 11), 100, 200]
    # The next cool-down counts from one again.
    clock.now += 60
    assert pen.check("192.0.2.1") is None
    pen.failed("192.0.2.1")
    again = pen.check("192.0.2.1")
    assert again is not None and again.refused == 1
