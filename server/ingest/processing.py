"""One processing job: a video's upload made browser-safe, with its poster and storyboard.

The job reads the row, probes the upload, plans remux or transcode, and runs
ffmpeg into a temporary directory of its own under STORAGE_DIR/.work. The upload
is read where it lies with file storage; from S3 it is first fetched into that
directory. The results are stored in the media store under fresh random keys
(a rename, or an upload to the bucket), then the row is updated in one
transaction, only if the video still exists and is still processing: a video
deleted meanwhile takes nothing with it, and its new files are removed, as they
are when anything fails before the commit. No pooled connection is held while
ffmpeg runs or files move; progress is written at most once a second.

Every job directory holds a lock (flock) for as long as its job runs, so a
directory left by a killed worker is told from one in use and removed by the
next sweep (`sweep_work_dirs`), whichever worker runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.core.changes import ChangeFeed
from server.core.config import Config
from server.core.db import Database, refused
from server.core.errors import DEPENDENCY_ERRORS
from server.core.storage import new_storage_key
from server.storage.store import MediaStore

from . import ffmpeg
from .plan import plan_processing
from .probe import MediaError, probe

log = logging.getLogger(__name__)

WORK_DIR = ".work"
LOCK_FILE = ".lock"
# A job directory without its lock file yet is being created, unless older than this.
UNLOCKED_GRACE = 60.0
PROGRESS_EVERY = 1.0
# How far along the job is when each step ends: making the stream is nearly all of it.
STREAM_DONE = 0.9
POSTER_DONE = 0.93
STORYBOARD_DONE = 0.97
# The reason a video gets when its job failed every attempt for reasons of ours.
FAILED_REPEATEDLY = "Processing failed repeatedly"


@dataclass(frozen=True, slots=True)
class Produced:
    """What a job made, in its directory, and what the processed stream is."""

    stream: Path
    poster: Path
    storyboard: Path
    storyboard_vtt: Path
    content_type: str
    width: int
    height: int
    duration: float
    video_codec: str
    audio_codec: str | None


class Progress:
    """Writes a job's progress to its row, at most every PROGRESS_EVERY seconds.

    A write that fails (the database is away for a moment) is skipped: progress
    is a courtesy, the job goes on.
    """

    def __init__(self, db: Database, video_id: int) -> None:
        self._db = db
        self._video_id = video_id
        self._written = 0.0

    async def report(self, fraction: float, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._written < PROGRESS_EVERY:
            return
        self._written = now
        value = min(max(fraction, 0.0), 1.0)
        try:
            await self._db.execute("set_progress", {"id": self._video_id, "progress": value})
        except DEPENDENCY_ERRORS as exc:
            log.debug("progress of video %d not written: %s", self._video_id, exc)


class Processor:
    """Processes videos: what one job does, given the video's id."""

    def __init__(self, db: Database, changes: ChangeFeed, config: Config,
                 store: MediaStore) -> None:
        self._db = db
        self._changes = changes
        self._config = config
        self._store = store
        # Absolute: ffmpeg runs in the job's directory, where a relative STORAGE_DIR
        # (the default, `storage`) would name another place.
        self.work_root = (config.storage_dir / WORK_DIR).absolute()

    async def process(self, video_id: int) -> bool:
        """Make the video ready; False when there was nothing to do (gone, or settled).

        Raises MediaError when the upload cannot become a video, and whatever
        else went wrong (the database, the disk) for the job to be retried.
        """
        row = await self._db.one("processing_video", {"id": video_id})
        if row is None or row["status"] != "processing":
            return False
        progress = Progress(self._db, video_id)
        await progress.report(0.0, force=True)
        async with job_dir(self.work_root) as work:
            source = await self._source(row["storage_key"], work)
            produced = await self._produce(video_id, source, work, progress)
            return await self._settle(video_id, produced)

    async def _source(self, key: str, work: Path) -> Path:
        """The upload as a file on this machine: where it lies, or fetched into `work`."""
        local = self._store.local_path(key)
        if local is not None:
            if not await asyncio.to_thread(local.is_file):
                raise MediaError("The uploaded file is missing")
            return local.absolute()
        # The key's extension stays: the probe and ffmpeg may use it as a hint.
        fetched = work / f"source{Path(key).suffix}"
        try:
            await self._store.fetch(key, fetched)
        except FileNotFoundError:
            raise MediaError("The uploaded file is missing") from None
        return fetched

    async def _produce(self, video_id: int, source: Path, work: Path,
                       progress: Progress) -> Produced:
        found = await probe(source, self._config)
        plan = plan_processing(found, self._config)
        stream = work / f"stream.{plan.extension}"

        async def on_stream_progress(fraction: float) -> None:
            await progress.report(fraction * STREAM_DONE)

        # The processed file is what the poster and storyboard must match, and
        # what the row describes.
        made = await ffmpeg.produce(source, plan, stream, self._config, on_stream_progress)
        await progress.report(STREAM_DONE, force=True)
        log.info("video %d: %s (%s)", video_id, plan.action,
                 "; ".join(plan.reasons) or "browser-safe as uploaded")
        width, height = made.display_size
        poster = work / "poster.jpg"
        await ffmpeg.poster(stream, made, poster, self._config)
        await progress.report(POSTER_DONE, force=True)
        storyboard = work / "storyboard.jpg"
        vtt = await ffmpeg.storyboard(stream, made, storyboard, self._config,
                                      sprite_url=f"/videos/{video_id}/storyboard.jpg")
        storyboard_vtt = work / "storyboard.vtt"
        await asyncio.to_thread(storyboard_vtt.write_text, vtt, encoding="utf-8")
        await progress.report(STORYBOARD_DONE, force=True)
        return Produced(
            stream=stream, poster=poster, storyboard=storyboard,
            storyboard_vtt=storyboard_vtt, content_type=plan.content_type,
            width=width, height=height, duration=made.duration,
            video_codec=made.video_codec, audio_codec=made.audio_codec,
        )

    async def _settle(self, video_id: int, produced: Produced) -> bool:
        """Store the results and make the row ready, or remove them again."""
        files = {
            "storage_key": produced.stream,
            "poster_key": produced.poster,
            "storyboard_key": produced.storyboard,
            "storyboard_vtt_key": produced.storyboard_vtt,
        }
        keys = {column: new_storage_key(path.suffix.lstrip(".")) for column, path in
                files.items()}
        size = (await asyncio.to_thread(produced.stream.stat)).st_size
        params: dict[str, Any] = {
            "id": video_id, **keys, "size": size, "content_type": produced.content_type,
            "duration": produced.duration, "width": produced.width,
            "height": produced.height, "video_codec": produced.video_codec,
            "audio_codec": produced.audio_codec,
        }
        queries = self._db.queries
        committing = False
        try:
            for column, path in files.items():
                await self._store.put_file(keys[column], path)
            async with self._db.transaction() as cur:
                await cur.execute(queries["finish_processing"], params)
                if await cur.fetchone() is None:
                    seq = None
                else:
                    seq = await self._changes.record(cur, video_id, "processed")
                committing = True
        except BaseException as exc:
            if committing and not refused(exc):
                log.warning("commit of processed video %d may not have happened; its files "
                            "are left for the orphan sweep", video_id)
            else:
                await self._remove(list(keys.values()))
            raise
        if seq is None:
            log.info("video %d was deleted or settled while it was processed; "
                     "its new files are removed", video_id)
            await self._remove(list(keys.values()))
            return False
        self._changes.applied(video_id, seq)
        log.info("video %d is ready (%s, %dx%d, %s/%s)", video_id, produced.content_type,
                 produced.width, produced.height, produced.video_codec, produced.audio_codec)
        return True

    async def _remove(self, keys: list[str]) -> None:
        """Delete stored results no row names (some may never have been stored)."""
        for key in keys:
            try:
                await self._store.delete(key)
            except OSError as exc:  # StorageUnavailable is one
                log.warning("%s not removed (%s); the orphan sweep will remove it", key, exc)

    async def fail(self, video_id: int, reason: str) -> bool:
        """Mark a video still processing as failed; False if it was not processing."""
        async with self._db.transaction() as cur:
            await cur.execute(self._db.queries["fail_processing"],
                              {"id": video_id, "reason": reason})
            if await cur.fetchone() is None:
                return False
            seq = await self._changes.record(cur, video_id, "failed")
        self._changes.applied(video_id, seq)
        log.info("video %d failed: %s", video_id, reason)
        return True


# --- job directories ------------------------------------------------------------

@contextlib.asynccontextmanager
async def job_dir(root: Path) -> AsyncIterator[Path]:
    """A fresh directory for one job's files, locked while the job runs, always removed."""
    path, lock = await asyncio.to_thread(_make_job_dir, root)
    try:
        yield path
    finally:
        # Shielded: a cancelled job must still not leave its files behind.
        await asyncio.shield(asyncio.to_thread(_remove_job_dir, path, lock))


def _make_job_dir(root: Path) -> tuple[Path, int]:
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="job-", dir=root))
    lock = os.open(path / LOCK_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return path, lock


def _remove_job_dir(path: Path, lock: int) -> None:
    try:
        shutil.rmtree(path, ignore_errors=True)
    finally:
        os.close(lock)


def sweep_work_dirs(root: Path) -> int:
    """Remove job directories no running job holds; the number removed. Blocking."""
    removed = 0
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        if _abandoned(path):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    if removed:
        log.info("removed %d job director%s left by stopped workers", removed,
                 "y" if removed == 1 else "ies")
    return removed


def _abandoned(path: Path) -> bool:
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        try:
            return time.time() - path.stat().st_mtime > UNLOCKED_GRACE
        except FileNotFoundError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
