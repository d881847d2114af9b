"""Presence in Redis: who watches each video, and how many sockets each address holds.

    {prefix}:presence:{video}             zset  `{viewer}|{instance}` -> expiry
    {prefix}:presence:{video}:viewers     hash  viewer -> its members above (the tally)
    {prefix}:presence:address:{ip hash}   zset  `{instance}:{socket}` -> expiry
    {prefix}:viewers-changed              channel: a video's viewers changed

A viewer is the viewer key of view counting (the account, else a keyed hash of
address and User-Agent), so the tabs of one person count once. Each process
adds one member per viewer it shows a video to; the tally makes the count of
distinct viewers O(1) even when one viewer has tabs on several processes.
Expiries are on Redis's clock (the scripts read TIME). Every change is a script
in a .lua file beside this one, so the set and its tally never disagree.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Iterable
from pathlib import Path

import redis.asyncio as redis

from server.core.keyspace import Keyspace

VIEWERS_CHANGED = "viewers-changed"
# Lua's unpack() has a stack limit; longer member lists go in several calls.
MEMBERS_PER_CALL = 1000
# The Redis client's pool refuses a 101st concurrent command; a burst of joins
# waits here for a slot instead.
REDIS_CONCURRENCY = 32

HERE = Path(__file__).resolve().parent


def _script(name: str, *, tally: bool = True) -> str:
    parts = ["clock.lua", *(["tally.lua"] if tally else []), f"{name}.lua"]
    return "\n".join((HERE / part).read_text(encoding="utf-8") for part in parts)


def _chunks(items: list[str], size: int = MEMBERS_PER_CALL) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class PresenceStore:
    def __init__(self, client: redis.Redis, keys: Keyspace, *, ttl: float,
                 max_per_address: int) -> None:
        self.client = client
        self.keys = keys
        self.ttl = ttl
        self.key_ttl = math.ceil(ttl * 2) + 1
        self.max_per_address = max_per_address
        # Names this process's members, so they can be renewed and removed as a group.
        self.instance = secrets.token_hex(8)
        self.channel = keys(VIEWERS_CHANGED)
        self._slots = asyncio.Semaphore(REDIS_CONCURRENCY)
        self._join = client.register_script(_script("join"))
        self._rekey = client.register_script(_script("rekey"))
        self._leave = client.register_script(_script("leave"))
        self._refresh = client.register_script(_script("refresh"))
        self._refresh_sockets = client.register_script(_script("refresh_sockets", tally=False))
        self._count = client.register_script(_script("count"))

    # --- names ------------------------------------------------------------

    def set_key(self, video_id: int) -> str:
        return self.keys("presence", video_id)

    def tally_key(self, video_id: int) -> str:
        return self.keys("presence", video_id, "viewers")

    def address_key(self, address: str) -> str:
        return self.keys("presence", "address", address)

    def member(self, viewer: str) -> str:
        return f"{viewer}|{self.instance}"

    def socket(self, conn_id: str) -> str:
        return f"{self.instance}:{conn_id}"

    def _video_keys(self, video_id: int) -> list[str]:
        return [self.set_key(video_id), self.tally_key(video_id)]

    # --- one socket -------------------------------------------------------

    async def join(self, video_id: int, viewer: str, address: str, conn_id: str) -> int | None:
        """Count `viewer` on the video; its distinct viewers, or None when the
        address already holds as many sockets as it may."""
        async with self._slots:
            count = int(await self._join(
                keys=[*self._video_keys(video_id), self.address_key(address)],
                args=[self.member(viewer), self.socket(conn_id), self.ttl, self.key_ttl,
                      self.max_per_address, self.channel, video_id],
            ))
        return None if count < 0 else count

    async def rekey(self, video_id: int, viewer: str, old_viewer: str | None) -> None:
        """Count `viewer` on the video; stop counting `old_viewer` if given."""
        async with self._slots:
            await self._rekey(
                keys=self._video_keys(video_id),
                args=[self.member(viewer), "" if old_viewer is None else self.member(old_viewer),
                      self.ttl, self.key_ttl, self.channel, video_id],
            )

    async def leave(self, video_id: int, viewer: str | None, address: str,
                    conn_id: str) -> None:
        """Free the socket's place; stop counting `viewer` if given (its last tab here)."""
        async with self._slots, self.client.pipeline(transaction=False) as pipe:
            pipe.zrem(self.address_key(address), self.socket(conn_id))
            if viewer is not None:
                await self._leave(keys=self._video_keys(video_id),
                                  args=[self.channel, video_id, self.member(viewer)],
                                  client=pipe)
            await pipe.execute()

    # --- many at once -----------------------------------------------------

    async def counts(self, video_ids: Iterable[int]) -> dict[int, int]:
        """Distinct viewers of each video now, across every process."""
        ids = sorted(set(video_ids))
        if not ids:
            return {}
        async with self._slots, self.client.pipeline(transaction=False) as pipe:
            for video_id in ids:
                await self._count(keys=self._video_keys(video_id), client=pipe)
            results = await pipe.execute()
        return {video_id: int(n) for video_id, n in zip(ids, results, strict=True)}

    async def refresh(self, viewers: dict[int, list[str]],
                      sockets: dict[str, list[str]]) -> None:
        """Push the expiry of these members (viewers by video, socket ids by
        address) TTL ahead, re-adding any that Redis lost."""
        async with self.client.pipeline(transaction=False) as pipe:
            for video_id, keys in viewers.items():
                for chunk in _chunks([self.member(v) for v in keys]):
                    await self._refresh(keys=self._video_keys(video_id),
                                        args=[self.ttl, self.key_ttl, *chunk], client=pipe)
            for address, conn_ids in sockets.items():
                for chunk in _chunks([self.socket(c) for c in conn_ids]):
                    await self._refresh_sockets(keys=[self.address_key(address)],
                                                args=[self.ttl, self.key_ttl, *chunk],
                                                client=pipe)
            await pipe.execute()

    async def remove(self, viewers: dict[int, list[str]],
                     sockets: dict[str, list[str]]) -> None:
        """Take these members out at once (a process stopping)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for video_id, keys in viewers.items():
                for chunk in _chunks([self.member(v) for v in keys]):
                    await self._leave(keys=self._video_keys(video_id),
                                      args=[self.channel, video_id, *chunk], client=pipe)
            for address, conn_ids in sockets.items():
                for chunk in _chunks([self.socket(c) for c in conn_ids]):
                    pipe.zrem(self.address_key(address), *chunk)
            await pipe.execute()
