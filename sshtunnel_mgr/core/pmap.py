"""A small persistent (immutable) mapping: every change returns a new map and shares all
but one of its 64 shards with the old one, so a change copies about ``len / 64`` entries
instead of the whole table. The route table uses it: with 10,000 agents publishing a name
each, a full copy per change made filling the bastion quadratic."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

_MASK = 63  # 64 shards


class PMap(Mapping[K, V]):
    """Read-only ``Mapping``; ``set``/``remove`` return a new map and leave this one alone."""

    __slots__ = ("_len", "_shards")

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        shards: list[dict[K, V]] = [{} for _ in range(_MASK + 1)]
        pairs = items.items() if isinstance(items, Mapping) else items
        for key, value in pairs:
            shards[hash(key) & _MASK][key] = value
        self._shards: tuple[dict[K, V], ...] = tuple(shards)
        self._len = sum(len(s) for s in shards)

    @classmethod
    def _of(cls, shards: tuple[dict[K, V], ...], length: int) -> PMap[K, V]:
        made: PMap[K, V] = cls.__new__(cls)
        made._shards, made._len = shards, length
        return made

    def __getitem__(self, key: K) -> V:
        return self._shards[hash(key) & _MASK][key]

    @overload
    def get(self, key: K, /) -> V | None: ...
    @overload
    def get(self, key: K, default: V | T, /) -> V | T: ...
    def get(self, key: K, default: object = None) -> object:
        return self._shards[hash(key) & _MASK].get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) & _MASK]

    def __iter__(self) -> Iterator[K]:
        for shard in self._shards:
            yield from shard

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"PMap({dict(self.items())!r})"

    def set(self, key: K, value: V) -> PMap[K, V]:
        index = hash(key) & _MASK
        shard = dict(self._shards[index])
        grown = key not in shard
        shard[key] = value
        return self._of(self._replace(index, shard), self._len + grown)

    def remove(self, key: K) -> PMap[K, V]:
        index = hash(key) & _MASK
        if key not in self._shards[index]:
            return self
        shard = dict(self._shards[index])
        del shard[key]
        return self._of(self._replace(index, shard), self._len - 1)

    def _replace(self, index: int, shard: dict[K, V]) -> tuple[dict[K, V], ...]:
        return (*self._shards[:index], shard, *self._shards[index + 1 :])
