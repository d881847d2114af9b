"""Small in-process caches: a bounded LRU map and a single-flight loader."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()


class LRU(Generic[K, V]):
    """A mapping that keeps at most `capacity` entries, dropping the least recently used."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, default: V | None = None) -> V | None:
        value = self._items.get(key, _MISSING)
        if value is _MISSING:
            return default
        self._items.move_to_end(key)
        return value  # type: ignore[return-value]

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def put(self, key: K, value: V) -> list[tuple[K, V]]:
        """Store `value`; the entries evicted to make room, for the caller to dispose of."""
        self._items[key] = value
        self._items.move_to_end(key)
        evicted = []
        while len(self._items) > self.capacity:
            evicted.append(self._items.popitem(last=False))
        return evicted

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def clear(self) -> list[tuple[K, V]]:
        items = list(self._items.items())
        self._items.clear()
        return items


class SingleFlight(Generic[K, V]):
    """Runs one load per key at a time; concurrent callers share its result."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            value = await load()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here; each waiter re-raises it itself
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del self._running[key]

    def __contains__(self, key: object) -> bool:
        return key in self._running
