"""The storage's application keys and its cleanup context."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from server.core.config import Config
from server.core.db import Database
from server.core.keys import CONFIG_KEY, DB_KEY
from server.core.loops import run_every, stop

from .cache import NodeCache
from .local import FileStore
from .s3 import S3Store
from .store import MediaStore

# A delete reaches other nodes' caches through the stream's change feed when they know
# the video; this sweep drops what no row names any more (posters, storyboards, files
# of videos deleted while a node was down).
UNNAMED_SWEEP_EVERY = 600.0
SWEEP_BATCH = 500

STORE_KEY: web.AppKey[MediaStore] = web.AppKey("media_store")
# This node's cache of the bucket; None with file storage.
NODE_CACHE_KEY: web.AppKey[NodeCache | None] = web.AppKey("node_cache")


@contextlib.asynccontextmanager
async def opened(config: Config) -> AsyncIterator[MediaStore]:
    """The store STORAGE_URL names, open for the block (the server and the worker)."""
    config.storage_dir.mkdir(parents=True, exist_ok=True)
    if config.storage is None:
        yield FileStore(config.storage_dir)
        return
    store, stack = await S3Store.open(config.storage)
    async with stack:
        yield store


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    async with opened(config) as store:
        app[STORE_KEY] = store
        cache = None
        if store.remote:
            cache = NodeCache(store, config.node_cache_dir, config.cache_max_bytes)
            await cache.start()
        app[NODE_CACHE_KEY] = cache
        sweep = None if cache is None else run_every(
            UNNAMED_SWEEP_EVERY, lambda: drop_unnamed(cache, app[DB_KEY]),
            "node-cache-sweep", first_after=UNNAMED_SWEEP_EVERY)
        try:
            yield
        finally:
            if sweep is not None:
                await stop(sweep)
            if cache is not None:
                await cache.close()


async def drop_unnamed(cache: NodeCache, db: Database) -> int:
    """Evict cached files that no video or user row names; how many."""
    keys = cache.keys()
    dropped = 0
    for start in range(0, len(keys), SWEEP_BATCH):
        chunk = keys[start:start + SWEEP_BATCH]
        named = {row["key"] for row in await db.all("stored_keys", {"keys": chunk})}
        for key in chunk:
            if key not in named:
                await cache.evict(key)
                dropped += 1
    return dropped


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(storage_ctx)
