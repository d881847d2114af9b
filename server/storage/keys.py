"""The storage's application keys and its cleanup context."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from server.core.config import Config
from server.core.keys import CONFIG_KEY

from .cache import NodeCache
from .local import FileStore
from .s3 import S3Store
from .store import MediaStore

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
        try:
            yield
        finally:
            if cache is not None:
                await cache.close()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(storage_ctx)
