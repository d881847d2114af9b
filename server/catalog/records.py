"""Video records: read, list and delete, and their JSON form."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from server.core.changes import ChangeFeed
from server.core.db import Database
from server.core.errors import Forbidden, NotFound
from server.core.ids import parse_video_id
from server.core.storage import storage_path, unlink


class VideoNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No such video")


def video_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "title": row["title"],
        "description": row["description"],
        "author_id": row["author_id"],
        "author_name": row["author_name"],
        "size": row["size"],
        "content_type": row["content_type"],
        "duration": row["duration"],
        "views": row["views"],
        "created_at": row["created_at"].isoformat(),
        "stream_url": f"/videos/{row['id']}/stream",
    }


class Catalog:
    """The video rows, and the change announcements that go with writing them."""

    def __init__(self, db: Database, changes: ChangeFeed, storage_dir: Path) -> None:
        self._db = db
        self._changes = changes
        self._storage_dir = storage_dir

    async def get(self, raw_id: str) -> dict[str, Any]:
        """The video named by a path segment; VideoNotFound for any other spelling."""
        video_id = parse_video_id(raw_id)
        row = None if video_id is None else await self._db.one("video_by_id", {"id": video_id})
        if row is None:
            raise VideoNotFound()
        return row

    async def page(self, before: int | None, limit: int) -> list[dict[str, Any]]:
        return await self._db.all("list_videos", {"before": before, "limit": limit})

    async def delete(self, raw_id: str, user_id: int) -> None:
        """Delete the row and announce it in one transaction, then remove the file.

        A file left behind by a crash between the two has no row, and the
        start-up sweep of orphaned files removes it.
        """
        video_id = parse_video_id(raw_id)
        if video_id is None:
            raise VideoNotFound()
        queries = self._db.queries
        async with self._db.cursor() as cur, cur.begin():
            await cur.execute(queries["lock_video_author"], {"id": video_id})
            owner = await cur.fetchone()
            if owner is None:
                raise VideoNotFound()
            if owner["author_id"] != user_id:
                raise Forbidden("Only the author can delete this video")
            await cur.execute(queries["delete_video"], {"id": video_id})
            deleted = await cur.fetchone()
            await self._changes.record(cur, video_id, "deleted")
        self._changes.applied(video_id)
        await unlink(storage_path(self._storage_dir, deleted["storage_key"]))

    async def create(self, values: dict[str, Any],
                     place_file: Callable[[str], Awaitable[None]]) -> dict[str, Any]:
        """Insert a video row, and put its file in place inside the same transaction.

        If the commit fails the caller removes the file: a row never names a
        missing file, and no file outlives a failed insert.
        """
        queries = self._db.queries
        async with self._db.cursor() as cur, cur.begin():
            await cur.execute(queries["insert_video"], values)
            row = dict(await cur.fetchone())
            await self._changes.record(cur, row["id"], "created")
            await place_file(values["storage_key"])
        self._changes.applied(row["id"])
        return row
