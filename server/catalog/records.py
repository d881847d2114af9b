"""Video records: read, list, create and delete, their stored files, and their JSON form.

A video is created `processing`, with its processing job queued in the same
transaction (sql/queries/processing.sql, the job in server/ingest/jobs.py), so
none is ever left processing without a job. The job makes it `ready` (its
stream, poster and storyboard files) or `failed` with a reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from server.core.changes import ChangeFeed
from server.core.db import Database, refused
from server.core.errors import Forbidden, NotFound
from server.core.ids import parse_video_id
from server.core.storage import claim_storage, settled_keys, storage_path, unlink

log = logging.getLogger(__name__)

# A stored file no row names is removed once it has been left alone this long.
# An upload moves its file into place inside the transaction that inserts the
# row, moments before the commit; a file that young may belong to one.
ORPHAN_MIN_AGE = 3600.0
ORPHAN_SWEEP_EVERY = 3600.0
SWEEP_BATCH = 1000


class VideoNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No such video")


# The columns that name stored files; deleting a video removes every one.
FILE_COLUMNS = ("storage_key", "original_key", "poster_key", "storyboard_key",
                "storyboard_vtt_key")


def video_json(row: dict[str, Any], viewer: int | None = None) -> dict[str, Any]:
    """The API's form of a video row; why it failed is for its author (`viewer`) alone."""
    video_id = row["id"]
    ready = row["status"] == "ready"
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
        "stream_url": f"/videos/{video_id}/stream",
        "status": row["status"],
        "failure_reason": row["failure_reason"] if viewer == row["author_id"] else None,
        "progress": row["progress"],
        "width": row["width"],
        "height": row["height"],
        "video_codec": row["video_codec"],
        "audio_codec": row["audio_codec"],
        "poster_url": f"/videos/{video_id}/poster.jpg"
        if ready and row["poster_key"] else None,
        "storyboard_url": f"/videos/{video_id}/storyboard.vtt"
        if ready and row["storyboard_vtt_key"] else None,
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

    async def page(self, before: int | None, limit: int,
                   viewer: int | None = None) -> list[dict[str, Any]]:
        """Ready videos newest first, with the viewer's own of any status among them."""
        return await self._db.all("list_videos", {"before": before, "limit": limit,
                                                  "viewer": viewer})

    async def delete(self, raw_id: str, user_id: int) -> None:
        """Delete the row and record the change in one transaction, then remove its files.

        Once the row is gone the delete has happened, whatever becomes of the
        files: one that cannot be removed now, or that a crash right after the
        commit leaves behind, has no row, and the orphan sweep removes it. A
        processing job that finishes later finds no row and removes what it made.
        """
        video_id = parse_video_id(raw_id)
        if video_id is None:
            raise VideoNotFound()
        queries = self._db.queries
        async with self._db.transaction() as cur:
            await cur.execute(queries["lock_video_author"], {"id": video_id})
            owner = await cur.fetchone()
            if owner is None:
                raise VideoNotFound()
            if owner["author_id"] != user_id:
                raise Forbidden("Only the author can delete this video")
            await cur.execute(queries["delete_video"], {"id": video_id})
            deleted = await cur.fetchone()
            seq = await self._changes.record(cur, video_id, "deleted")
        self._changes.applied(video_id, seq)
        for column in FILE_COLUMNS:
            if deleted[column] is None:
                continue
            try:
                await unlink(storage_path(self._storage_dir, deleted[column]))
            except OSError as exc:
                log.warning("file of deleted video %d not removed (%s); the orphan sweep "
                            "will remove it", video_id, exc)

    async def create(self, values: dict[str, Any], staged: Path) -> dict[str, Any]:
        """Insert a video row, queue its processing and move its staged file into place,
        in one transaction.

        `values["storage_key"]` names the file's place. If anything fails before
        the commit, or the server refuses the commit, the file is removed again:
        no row, no file, and a retry starts afresh. If the commit's answer is
        lost, nobody knows whether it happened; the file stays, and the orphan
        sweep removes it if no row names it. Removing the staged file on
        failure is the caller's job.
        """
        target = storage_path(self._storage_dir, values["storage_key"])
        queries = self._db.queries
        committing = False
        try:
            async with self._db.transaction() as cur:
                await cur.execute(queries["insert_video"], values)
                row = dict(await cur.fetchone())
                await cur.execute(queries["defer_processing"], {"id": row["id"]})
                await asyncio.to_thread(os.replace, staged, target)
                seq = await self._changes.record(cur, row["id"], "created")
                committing = True
        except BaseException as exc:
            if committing and not refused(exc):
                log.warning("commit of video %d may not have happened; its file is left "
                            "for the orphan sweep", row["id"])
            else:
                await unlink(target)
            raise
        self._changes.applied(row["id"], seq)
        return row

    async def _storage_is_ours(self) -> bool:
        """Whether STORAGE_DIR belongs to this database, by the marker they share.

        A directory without a marker is claimed by the first database to sweep it.
        Pointed at another database (a restored backup, a fresh one after a reset),
        every file would look orphaned: the sweep then removes nothing.
        """
        row = await self._db.one("instance_id")
        assert row is not None
        ours = row["id"]
        theirs = await asyncio.to_thread(claim_storage, self._storage_dir, ours)
        if theirs != ours:
            log.warning("STORAGE_DIR %s belongs to database %s, not this one (%s): stored "
                        "files are not swept", self._storage_dir, theirs, ours)
            return False
        return True

    async def sweep_orphans(self, min_age: float | None = None) -> int:
        """Remove stored files that no video row names; the number removed.

        Only files left alone for `min_age` seconds (ORPHAN_MIN_AGE by default)
        are candidates, so a file moved into place by an upload whose
        transaction has not committed yet is never touched.
        """
        if not await self._storage_is_ours():
            return 0
        age = ORPHAN_MIN_AGE if min_age is None else min_age
        keys = await asyncio.to_thread(settled_keys, self._storage_dir, age)
        removed = 0
        for start in range(0, len(keys), SWEEP_BATCH):
            chunk = keys[start:start + SWEEP_BATCH]
            named = {r["key"] for r in await self._db.all("stored_keys", {"keys": chunk})}
            for key in chunk:
                if key in named:
                    continue
                try:
                    await unlink(storage_path(self._storage_dir, key))
                except OSError as exc:
                    log.warning("orphaned file %s not removed: %s", key, exc)
                    continue
                removed += 1
        if removed:
            log.info("removed %d stored files that no video names", removed)
        return removed
