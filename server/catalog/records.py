"""Video records: read, list, create, edit and delete, their stored files, and their JSON form.

Who sees what: `listed_videos` (sql/007_social.sql) is what lists show others;
a private or removed video, or one whose author is banned, is found only by its
author and moderators (`Catalog.shown`).

A video is created `processing`, with its processing job queued in the same
transaction (sql/queries/processing.sql, the job in server/ingest/jobs.py), so
none is ever left processing without a job. The job makes it `ready` (its
stream, poster and storyboard files) or `failed` with a reason.

Stored files live in the media store (server/storage: a directory or an S3
bucket); a file is stored before the row that names it is written, and removed
after the row that named it is gone, so a row never names a missing file. What
a crash leaves between the two is an object no row names: the orphan sweep's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from server.accounts.policy import Action, Role, allowed, require
from server.core.changes import ChangeFeed
from server.core.db import Database, refused
from server.core.errors import NotFound
from server.core.ids import parse_id, parse_video_id
from server.core.keys import ViewTotals
from server.core.storage import StorageUnavailable
from server.storage.cache import NodeCache
from server.storage.store import MediaStore

from .edits import VideoEdit
from .signing import MediaSigner

log = logging.getLogger(__name__)

# A stored file no row names is removed once it has been left alone this long.
# An upload stores its file just before the transaction that inserts the row;
# a file that young may belong to one. (An S3 object's age may count from the
# start of its upload: this leaves an hour for the upload and the commit.)
ORPHAN_MIN_AGE = 3600.0
ORPHAN_SWEEP_EVERY = 3600.0
SWEEP_BATCH = 1000


class VideoNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No such video")


class UserNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No such user")


# A user's role, read when someone not its author asks for a hidden video.
RoleOf = Callable[[int], Awaitable[Role]]


# The columns that name stored files; deleting a video removes every one.
FILE_COLUMNS = ("storage_key", "original_key", "poster_key", "storyboard_key",
                "storyboard_vtt_key")


def video_json(row: Mapping[str, Any], viewer: int | None = None,
               signer: MediaSigner | None = None) -> dict[str, Any]:
    """The API's form of a video row.

    Why it failed or was removed is for its author (`viewer`) alone. A private
    video's media URLs are signed for its author when a `signer` is given: a
    media element sends no Bearer header.
    """
    video_id = row["id"]
    ready = row["status"] == "ready"
    own = viewer is not None and viewer == row["author_id"]
    query = ""
    if own and signer is not None and row["visibility"] == "private":
        query = "?" + signer.query(video_id, time.time())
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
        "stream_url": f"/videos/{video_id}/stream{query}",
        "status": row["status"],
        "failure_reason": row["failure_reason"] if own else None,
        "progress": row["progress"],
        "width": row["width"],
        "height": row["height"],
        "video_codec": row["video_codec"],
        "audio_codec": row["audio_codec"],
        "poster_url": f"/videos/{video_id}/poster.jpg{query}"
        if ready and row["poster_key"] else None,
        "storyboard_url": f"/videos/{video_id}/storyboard.vtt{query}"
        if ready and row["storyboard_vtt_key"] else None,
        "visibility": row["visibility"],
        "tags": list(row["tags"]),
        "like_count": row["like_count"],
        "dislike_count": row["dislike_count"],
        "comment_count": row["comment_count"],
        "my_reaction": row.get("my_reaction"),
        "removed": row["removed_at"] is not None,
        "removed_reason": row["removed_reason"] if own else None,
    }


def hidden(row: Mapping[str, Any]) -> bool:
    """Whether only its author (and moderators) may see a video: private, removed,
    or by a banned author."""
    return (row["visibility"] == "private" or row["removed_at"] is not None
            or bool(row.get("author_banned")))


async def with_current_views(totals: ViewTotals,
                             rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with `views` including views counted but not yet flushed."""
    current = await totals.with_pending({r["id"]: r["views"] for r in rows})
    return [{**r, "views": current.get(r["id"], r["views"])} for r in rows]


class Catalog:
    """The video rows, and the change announcements that go with writing them."""

    def __init__(self, db: Database, changes: ChangeFeed, store: MediaStore,
                 cache: NodeCache | None, signer: MediaSigner, language: str,
                 role_of: RoleOf | None = None) -> None:
        self._db = db
        self._changes = changes
        self._store = store
        # This node's copies of bucket media (None with file storage); other
        # nodes drop theirs when the change feed tells them of a delete.
        self._cache = cache
        self.signer = signer
        self._language = language
        self._role_of = role_of

    async def get(self, raw_id: str, viewer: int | None = None) -> dict[str, Any]:
        """The video named by a path segment, whatever its state, with the viewer's
        reaction; VideoNotFound for any other spelling. Who may see it is `shown`'s call."""
        video_id = parse_video_id(raw_id)
        row = None if video_id is None else await self._db.one(
            "video_for_viewer", {"id": video_id, "viewer": viewer})
        if row is None:
            raise VideoNotFound()
        return row

    async def shown(self, raw_id: str, viewer: int | None) -> dict[str, Any]:
        """`get`, for a viewer who may see the video: a private or removed video, or
        one by a banned author, is not found for anyone but its author and moderators."""
        row = await self.get(raw_id, viewer)
        if hidden(row) and not await self._sees_hidden(viewer, row["author_id"]):
            raise VideoNotFound()
        return row

    async def _sees_hidden(self, viewer: int | None, author_id: int) -> bool:
        if viewer is None:
            return False
        if viewer == author_id:
            return True
        if self._role_of is None:
            return False
        try:
            role = await self._role_of(viewer)
        except NotFound:  # a valid token of a user deleted since
            return False
        return allowed(role, Action.VIDEO_SEE_HIDDEN, owner=False)

    async def page(self, before: int | None, limit: int,
                   viewer: int | None = None) -> list[dict[str, Any]]:
        """Listed videos newest first, with the viewer's own of any state among them."""
        return await self._db.all("list_videos", {"before": before, "limit": limit,
                                                  "viewer": viewer})

    async def user_page(self, raw_user_id: str, before: int | None, limit: int,
                        viewer: int | None) -> list[dict[str, Any]]:
        """One user's listed videos newest first; all of them when the viewer is that user."""
        author = parse_id(raw_user_id)
        if author is None or await self._db.one("catalog_user_exists", {"id": author}) is None:
            raise UserNotFound()
        return await self._db.all("user_videos", {
            "author": author, "all_of_them": viewer == author, "before": before,
            "limit": limit, "viewer": viewer})

    async def _lock_own(self, cur: Any, video_id: int, user_id: int, action: Action) -> None:
        """Lock the video's row for a change by `user_id`, who must be its author.

        Someone else's video answers 403, unless it is hidden (private, removed,
        banned author): that is not found, as for GET, and nobody but the author
        may change it anyway.
        """
        await cur.execute(self._db.queries["lock_video_author"], {"id": video_id})
        owner = await cur.fetchone()
        if owner is None:
            raise VideoNotFound()
        own = owner["author_id"] == user_id
        if not own and hidden(owner):
            raise VideoNotFound()
        # Owner-only actions: the actor's role does not enter.
        require(Role.USER, action, owner=own)

    async def edit(self, raw_id: str, user_id: int, edit: VideoEdit) -> dict[str, Any]:
        """Change a video's fields and record the change in one transaction: every
        process forgets what it cached of the video (its stream's visibility)."""
        video_id = parse_video_id(raw_id)
        if video_id is None:
            raise VideoNotFound()
        queries = self._db.queries
        async with self._db.transaction() as cur:
            await self._lock_own(cur, video_id, user_id, Action.VIDEO_EDIT)
            await cur.execute(queries["edit_video"], {"id": video_id, **edit.params()})
            await cur.execute(queries["video_for_viewer"], {"id": video_id, "viewer": user_id})
            row = dict(await cur.fetchone())
            seq = await self._changes.record(cur, video_id, "edited")
        self._changes.applied(video_id, seq)
        return row

    async def delete(self, raw_id: str, user_id: int) -> None:
        """Delete the row and record the change in one transaction, then remove its files
        from the store and from this node's cache.

        Once the row is gone the delete has happened, whatever becomes of the
        files: one that cannot be removed now (the store unreachable included),
        or that a crash right after the commit leaves behind, has no row, and
        the orphan sweep removes it. A processing job that finishes later finds
        no row and removes what it made.
        """
        video_id = parse_video_id(raw_id)
        if video_id is None:
            raise VideoNotFound()
        queries = self._db.queries
        async with self._db.transaction() as cur:
            await self._lock_own(cur, video_id, user_id, Action.VIDEO_DELETE)
            await cur.execute(queries["delete_video"], {"id": video_id})
            deleted = await cur.fetchone()
            seq = await self._changes.record(cur, video_id, "deleted")
        self._changes.applied(video_id, seq)
        for column in FILE_COLUMNS:
            key = deleted[column]
            if key is None:
                continue
            try:
                await self._store.delete(key)
            except OSError as exc:  # StorageUnavailable is one
                log.warning("file of deleted video %d not removed (%s); the orphan sweep "
                            "will remove it", video_id, exc)
            await self._evict(key)

    async def create(self, values: dict[str, Any], staged: Path,
                     before_insert: Callable[[], None] | None = None) -> dict[str, Any]:
        """Store a staged file, then insert its video row and queue its processing in
        one transaction.

        `values["storage_key"]` names the stored file. It is stored before the
        transaction begins (with S3, an upload that no pooled connection waits
        on); `before_insert`, if given, runs between the two and may raise to
        give up. If anything fails after the file is stored and before the
        commit, or the server refuses the commit, the file is deleted again: no
        row, no file, and a retry starts afresh. If the commit's answer is lost,
        nobody knows whether it happened; the file stays. A file that cannot be
        deleted, or that a store failing mid-write kept after all, has no row,
        and the orphan sweep removes it. The store takes the staged file once
        stored; removing it on failure is the caller's job.
        """
        key = values["storage_key"]
        queries = self._db.queries
        try:
            await self._store.put_file(key, staged)
        except StorageUnavailable:
            raise  # it would fail the delete as well
        except BaseException:
            await self._forget(key)  # cancelled, say, after the write went through
            raise
        committing = False
        try:
            if before_insert is not None:
                before_insert()
            async with self._db.transaction() as cur:
                await cur.execute(queries["insert_video"],
                                  {**values, "language": self._language})
                row = dict(await cur.fetchone())
                await cur.execute(queries["defer_processing"], {"id": row["id"]})
                seq = await self._changes.record(cur, row["id"], "created")
                committing = True
        except BaseException as exc:
            if committing and not refused(exc):
                log.warning("commit of video %d may not have happened; its file is left "
                            "for the orphan sweep", row["id"])
            else:
                await self._forget(key)
            raise
        self._changes.applied(row["id"], seq)
        return row

    async def _forget(self, key: str) -> None:
        """Delete a stored file no row names; left to the orphan sweep if that fails."""
        try:
            await self._store.delete(key)
        except OSError as exc:  # StorageUnavailable is one
            log.warning("stored file %s not removed (%s); the orphan sweep will remove it",
                        key, exc)

    async def _evict(self, key: str) -> None:
        if self._cache is None:
            return
        try:
            await self._cache.evict(key)
        except OSError as exc:
            log.warning("%s not removed from this node's cache: %s", key, exc)

    async def _storage_is_ours(self) -> bool:
        """Whether the media store belongs to this database, by the marker they share.

        A store without a marker is claimed by the first database to sweep it.
        Pointed at another database (a restored backup, a fresh one after a reset),
        every file would look orphaned: the sweep then removes nothing.
        """
        row = await self._db.one("instance_id")
        assert row is not None
        ours = row["id"]
        theirs = await self._store.claim(ours)
        if theirs != ours:
            log.warning("the media store belongs to database %s, not this one (%s): stored "
                        "files are not swept", theirs, ours)
            return False
        return True

    async def sweep_orphans(self, min_age: float | None = None) -> int:
        """Remove stored files that no video row names; the number removed.

        Only files left alone for `min_age` seconds (ORPHAN_MIN_AGE by default)
        are candidates, so a file stored by an upload whose transaction has not
        committed yet is never touched. An unreachable store ends the round.
        """
        if not await self._storage_is_ours():
            return 0
        age = ORPHAN_MIN_AGE if min_age is None else min_age
        keys = await self._store.settled_keys(age)
        removed = 0
        for start in range(0, len(keys), SWEEP_BATCH):
            chunk = keys[start:start + SWEEP_BATCH]
            named = {r["key"] for r in await self._db.all("stored_keys", {"keys": chunk})}
            for key in chunk:
                if key in named:
                    continue
                try:
                    await self._store.delete(key)
                except StorageUnavailable:
                    raise
                except OSError as exc:
                    log.warning("orphaned file %s not removed: %s", key, exc)
                    continue
                await self._evict(key)
                removed += 1
        if removed:
            log.info("removed %d stored files that no video names", removed)
        return removed
