"""core/pmap.py: the persistent mapping under the route table."""

from __future__ import annotations

import random

import pytest

from sshtunnel_mgr.core.pmap import PMap


def test_changes_return_new_maps_and_leave_the_old_one_alone() -> None:
    empty: PMap[str, int] = PMap()
    one = empty.set("a", 1)
    two = one.set("b", 2).set("a", 3)
    assert (dict(empty), dict(one), dict(two)) == ({}, {"a": 1}, {"a": 3, "b": 2})
    assert len(two) == 2 and "b" in two and "c" not in two
    assert two.get("c") is None and two.get("c", 0) == 0 and two["a"] == 3
    assert two.remove("a") == {"b": 2} and two == {"a": 3, "b": 2}
    assert two.remove("missing") is two
    with pytest.raises(KeyError):
        two["missing"]
    with pytest.raises(TypeError):
        two["x"] = 1  # type: ignore[index]


def test_agrees_with_a_dict_over_seeded_random_changes() -> None:
    rng = random.Random(7)
    ref: dict[tuple[str, int], int] = {}
    pmap: PMap[tuple[str, int], int] = PMap()
    for step in range(3000):
        key = (f"n{rng.randrange(300)}", rng.choice([22, 443]))
        if rng.random() < 0.6:
            ref[key] = step
            pmap = pmap.set(key, step)
        else:
            ref.pop(key, None)
            pmap = pmap.remove(key)
        assert len(pmap) == len(ref)
    rebuilt: PMap[tuple[str, int], int] = PMap(ref)
    from_pairs: PMap[tuple[str, int], int] = PMap(ref.items())
    assert dict(pmap) == ref and rebuilt == pmap and from_pairs == ref
