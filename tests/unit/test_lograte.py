"""Per-source log budgets, as tables (time moved by hand)."""

from __future__ import annotations

import pytest

from sshtunnel_mgr.core.lograte import LogRate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("events", "written"),
    [
        (3, [1, 2, 3]),
        (10, list(range(1, 11))),
        (250, [*range(1, 11), 100, 200]),
    ],
)
def test_first_few_then_every_nth(events: int, written: list[int]) -> None:
    rate = LogRate(first=10, every=100, clock=Clock())
    got = [b.count for b in (rate.hit("192.0.2.7") for _ in range(events)) if b.write]
    assert got == written


def test_a_new_window_starts_the_count_again() -> None:
    clock = Clock()
    rate = LogRate(first=2, every=100, window=60, clock=clock)
    assert [rate.hit("192.0.2.7").write for _ in range(3)] == [True, True, False]
    clock.now += 59.9
    assert not rate.hit("192.0.2.7").write
    clock.now += 0.1
    budget = rate.hit("192.0.2.7")
    assert (budget.count, budget.write) == (1, True)


@pytest.mark.parametrize(
    ("a", "b", "shared"),
    [
        ("192.0.2.7", "192.0.2.8", False),
        ("192.0.2.7", "::ffff:192.0.2.7", True),
        ("2001:db8::1", "2001:db8::ffff:1", True),  # one /64
        ("2001:db8::1", "2001:db8:0:1::1", False),
    ],
)
def test_sources_are_counted_like_the_cool_downs(a: str, b: str, shared: bool) -> None:
    rate = LogRate(first=1, every=100, clock=Clock())
    rate.hit(a)
    assert rate.hit(b).count == (2 if shared else 1)


def test_memory_is_bounded() -> None:
    rate = LogRate(max_sources=3, clock=Clock())
    for i in range(50):
        rate.hit(f"198.51.100.{i}")
    assert len(rate) == 3
    assert rate.hit("198.51.100.0").count == 1  # forgotten: counted afresh
