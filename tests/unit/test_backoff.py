"""Reconnect backoff (sshtunnel_mgr/core/backoff.py) with a fake clock and fixed randomness."""

from __future__ import annotations

import pytest

from sshtunnel_mgr.core.backoff import Backoff


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(rand: float = 1.0, clock: FakeClock | None = None, **kw: float) -> Backoff:
    return Backoff(clock=clock or FakeClock(), rand=lambda: rand, **kw)


def delays(backoff: Backoff, n: int) -> list[float]:
    return [backoff.next_delay() for _ in range(n)]


@pytest.mark.parametrize(
    ("params", "rand", "expected"),
    [
        # rand=1: the top of the jitter range is the raw exponential delay, capped
        ({}, 1.0, [1, 2, 4, 8, 16, 32, 60, 60, 60]),
        # rand=0: the bottom is (1 - jitter) of it ("equal jitter" keeps half)
        ({}, 0.0, [0.5, 1, 2, 4, 8, 16, 30, 30, 30]),
        ({}, 0.5, [0.75, 1.5, 3, 6, 12, 24, 45, 45, 45]),
        ({"jitter": 0.0}, 0.0, [1, 2, 4, 8, 16, 32, 60, 60, 60]),  # no jitter: exact
        ({"jitter": 0.0}, 0.7, [1, 2, 4, 8, 16, 32, 60, 60, 60]),
        ({"jitter": 1.0}, 0.0, [0, 0, 0, 0]),  # full jitter may retry at once
        ({"jitter": 1.0}, 1.0, [1, 2, 4, 8]),
        ({"base": 0.1, "cap": 1.0}, 1.0, [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]),
        ({"base": 2.0, "factor": 3.0, "cap": 100.0}, 1.0, [2, 6, 18, 54, 100, 100]),
        ({"base": 5.0, "cap": 5.0}, 1.0, [5, 5, 5]),
        ({"base": 5.0, "cap": 5.0}, 0.0, [2.5, 2.5, 2.5]),
    ],
)
def test_delays(params: dict[str, float], rand: float, expected: list[float]) -> None:
    b = make(rand, **params)
    assert delays(b, len(expected)) == pytest.approx(expected)
    assert b.attempts == len(expected)


@pytest.mark.parametrize("rand", [0.0, 1e-9, 0.25, 0.5, 0.75, 0.999999, 1.0])
@pytest.mark.parametrize("jitter", [0.0, 0.1, 0.5, 1.0])
def test_jitter_bounds(rand: float, jitter: float) -> None:
    b = make(rand, jitter=jitter)
    raw = [1, 2, 4, 8, 16, 32, 60, 60]
    for top, delay in zip(raw, delays(b, len(raw)), strict=True):
        low = top * (1 - jitter)
        assert low - 1e-12 <= delay <= top + 1e-12
        assert delay == pytest.approx(low + top * jitter * rand)


def test_delays_never_exceed_the_cap_in_a_long_outage() -> None:
    b = make(1.0)
    assert max(delays(b, 200)) == 60


def test_delays_never_overflow_in_a_very_long_outage() -> None:
    """Regression: base * 2.0**1024 used to raise OverflowError after 1024 failures."""
    b = make(1.0)
    assert max(delays(b, 1100)) == 60
    b = make(0.0, base=1e-300, cap=1e300, factor=10.0)
    assert all(d >= 0 for d in delays(b, 2000))


def test_default_randomness_stays_in_bounds() -> None:
    b = Backoff(clock=FakeClock())
    raw = [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    for top, delay in zip(raw, delays(b, len(raw)), strict=True):
        assert top / 2 <= delay <= top


def test_healthy_connection_resets() -> None:
    clock = FakeClock()
    b = make(1.0, clock=clock)
    assert delays(b, 4) == [1, 2, 4, 8]
    b.connected()
    clock.advance(30.0)  # exactly healthy_after
    b.disconnected()
    assert b.attempts == 0
    assert delays(b, 3) == [1, 2, 4]


def test_long_connection_resets() -> None:
    clock = FakeClock()
    b = make(1.0, clock=clock)
    delays(b, 10)
    b.connected()
    clock.advance(3600)
    b.disconnected()
    assert b.next_delay() == 1


@pytest.mark.parametrize("up_for", [0.0, 0.001, 10.0, 29.999])
def test_short_connection_does_not_reset(up_for: float) -> None:
    clock = FakeClock()
    b = make(1.0, clock=clock)
    assert delays(b, 3) == [1, 2, 4]
    b.connected()
    clock.advance(up_for)
    b.disconnected()
    assert b.attempts == 3
    assert b.next_delay() == 8


def test_healthy_after_is_configurable() -> None:
    clock = FakeClock()
    b = make(1.0, clock=clock, healthy_after=5.0)
    delays(b, 3)
    b.connected()
    clock.advance(5.0)
    b.disconnected()
    assert b.next_delay() == 1


def test_time_spent_before_connecting_does_not_count() -> None:
    """Only the time since connected() counts, not the time since the first failure."""
    clock = FakeClock()
    b = make(1.0, clock=clock)
    delays(b, 3)
    clock.advance(100.0)  # a long backoff wait
    b.connected()
    clock.advance(1.0)
    b.disconnected()
    assert b.next_delay() == 8


def test_disconnected_without_connected_does_not_reset() -> None:
    clock = FakeClock()
    b = make(1.0, clock=clock)
    delays(b, 3)
    clock.advance(1000.0)
    b.disconnected()
    assert b.attempts == 3


def test_disconnected_twice_counts_the_connection_once() -> None:
    clock = FakeClock()
    b = make(1.0, clock=clock)
    delays(b, 2)
    b.connected()
    clock.advance(1.0)
    b.disconnected()
    clock.advance(100.0)
    b.disconnected()  # no connection in between: nothing was healthy
    assert b.attempts == 2


def test_reconnect_restarts_the_health_timer() -> None:
    clock = FakeClock()
    b = make(1.0, clock=clock)
    delays(b, 2)
    b.connected()
    clock.advance(20.0)
    b.connected()  # a new connection: its own health timer
    clock.advance(20.0)
    b.disconnected()
    assert b.attempts == 2


def test_reset() -> None:
    clock = FakeClock()
    b = make(1.0, clock=clock)
    delays(b, 5)
    b.connected()
    b.reset()
    assert b.attempts == 0
    clock.advance(100.0)
    delays(b, 2)
    b.disconnected()  # reset() forgot the connection: no second reset
    assert b.attempts == 2


def test_clock_is_only_read_through_the_injected_callable() -> None:
    calls: list[str] = []

    def clock() -> float:
        calls.append("clock")
        return 0.0

    b = Backoff(clock=clock, rand=lambda: 0.0)
    b.next_delay()
    assert calls == []  # computing a delay needs no clock
    b.connected()
    b.disconnected()
    assert calls == ["clock", "clock"]
