"""Processing jobs on procrastinate: the task, the worker, and the upkeep every worker runs.

A video's job is queued by Catalog.create in the transaction that inserts the
row (sql/queries/processing.sql names QUEUE, TASK and the per-video locks), so
no video is ever processing without a job. `python -m server worker` runs
`work`: a procrastinate worker on QUEUE, with the media store STORAGE_URL names
(its jobs' files in STORAGE_DIR/.work, as scratch space), plus

- stalled-job recovery: a job whose worker stopped sending heartbeats for
  WORKER_STALLED_AFTER seconds (killed, its machine gone) is queued again;
- a reconciler: a video processing with no job queued or running gets one;
- a sweep of job directories that killed workers left behind.

With METRICS_PORT set, the worker serves its own /metrics there: how long its jobs
took (`JobStats`). The queue's depth is on the server's /metrics.

Failures: bad input (MediaError) fails the video at once with its reason. Any
other error (PostgreSQL, the disk, a worker killed mid-job) is retried, up to
ATTEMPTS runs in all, waiting PROCESSING_RETRY_WAIT seconds and then four times
that; the last failed run marks the video failed ("Processing failed
repeatedly"), and so does a run that finds its job already tried ATTEMPTS
times (its earlier runs all ended with their worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiopg
import procrastinate
import psycopg2.errors
from procrastinate.exceptions import ConnectorException
from procrastinate.job_context import JobContext
from procrastinate.jobs import Job
from procrastinate.retry import BaseRetryStrategy, RetryDecision
from prometheus_client.metrics_core import HistogramMetricFamily, Metric

from server.core.changes import ChangeFeed
from server.core.config import Config
from server.core.db import Database, Queries
from server.core.errors import first_line
from server.core.loops import run_every, stop
from server.core.metrics import JOB_BUCKETS, Histogram, Metrics, add_histogram, serve_port
from server.storage.keys import opened

from .probe import MediaError
from .processing import FAILED_REPEATEDLY, Processor, sweep_work_dirs

log = logging.getLogger(__name__)

# Named in sql/queries/processing.sql too.
QUEUE = "processing"
TASK = "process_video"
ATTEMPTS = 3
RETRY_FACTOR = 4
# After a stop request, running jobs have this long to finish; then they are
# abandoned, and retried by the next worker.
SHUTDOWN_GRACE = 20.0
WORK_SWEEP_EVERY = 3600.0
# A worker that stopped on its own (its database link failed) starts again.
RESTART_MIN = 1.0
RESTART_MAX = 30.0


class TransientRetry(BaseRetryStrategy):
    """Retry a failed run after `wait`, then RETRY_FACTOR times that; `attempts` runs in all."""

    def __init__(self, attempts: int, wait: float) -> None:
        self.attempts = attempts
        self.wait = wait

    def get_retry_decision(self, *, exception: BaseException,
                           job: Job) -> RetryDecision | None:
        if isinstance(exception, MediaError) or job.attempts + 1 >= self.attempts:
            return None
        return RetryDecision(retry_in={"seconds": self.wait * RETRY_FACTOR ** job.attempts})


async def run_job(processor: Processor, video_id: int, attempts: int) -> None:
    """One run of a video's job; `attempts` is how many runs came before it."""
    if attempts >= ATTEMPTS:
        await processor.fail(video_id, FAILED_REPEATEDLY)
        return
    try:
        await processor.process(video_id)
    except MediaError as exc:
        await processor.fail(video_id, exc.reason)
    except Exception:
        if attempts + 1 >= ATTEMPTS:
            log.exception("processing video %d failed for the last time", video_id)
            await processor.fail(video_id, FAILED_REPEATEDLY)
        raise


class JobStats:
    """How long this worker's runs of the processing task took, by how they ended."""

    __slots__ = ("ok", "error")

    def __init__(self) -> None:
        self.ok = Histogram(JOB_BUCKETS)  # the video is settled: ready, or failed for good
        self.error = Histogram(JOB_BUCKETS)  # raised: retried later, or the last try

    async def families(self) -> list[Metric]:
        family = HistogramMetricFamily("tubelet_job_duration_seconds",
                                       "Runs of a background job by task and outcome",
                                       labels=["task", "outcome"])
        add_histogram(family, [TASK, "ok"], self.ok)
        add_histogram(family, [TASK, "error"], self.error)
        return [family]


def create_job_app(config: Config, concurrency: int = 1,
                   stats: JobStats | None = None) -> procrastinate.App:
    """The procrastinate app, with its own small psycopg pool (ours is aiopg's)."""
    connector = procrastinate.PsycopgConnector(
        conninfo=config.database_url, min_size=1,
        # Fetching, heartbeats, abort polls and the upkeep, besides the jobs' own.
        max_size=concurrency + 4, timeout=config.db_timeout)
    app = procrastinate.App(connector=connector)

    @app.task(name=TASK, queue=QUEUE, pass_context=True,
              retry=TransientRetry(ATTEMPTS, config.processing_retry_wait))
    async def process_video(context: JobContext, video_id: int) -> None:
        processor: Processor = context.additional_context["processor"]
        started = time.monotonic()
        try:
            await run_job(processor, video_id, context.job.attempts)
        except Exception:
            if stats is not None:
                stats.error.observe(time.monotonic() - started)
            raise
        if stats is not None:
            stats.ok.observe(time.monotonic() - started)

    return app


class Upkeep:
    """What every worker does now and then, so no job is lost for good."""

    def __init__(self, app: procrastinate.App, db: Database, stalled_after: float) -> None:
        self._app = app
        self._db = db
        self._stalled_after = stalled_after

    async def run(self) -> None:
        await self.recover_stalled()
        await self.requeue_lost()

    async def recover_stalled(self) -> int:
        """Queue again the jobs of workers that stopped sending heartbeats."""
        manager = self._app.job_manager
        recovered = 0
        for job in await manager.get_stalled_jobs(
                queue=QUEUE, seconds_since_heartbeat=self._stalled_after):
            try:
                await manager.retry_job(job)
            except ConnectorException:
                continue  # another worker recovered it first
            log.warning("job %s of a stalled worker is queued again", job.call_string)
            recovered += 1
        return recovered

    async def requeue_lost(self) -> int:
        """Queue a job for each video processing without one."""
        queued = 0
        for row in await self._db.all("unqueued_videos"):
            try:
                await self._db.execute("defer_processing", {"id": row["id"]})
            except psycopg2.errors.UniqueViolation:
                continue  # queued meanwhile
            log.warning("video %d was processing without a job; queued one", row["id"])
            queued += 1
        return queued


def worker_options(config: Config, processor: Processor, concurrency: int,
                   wait: bool) -> dict[str, Any]:
    stalled = config.worker_stalled_after
    return {
        "queues": [QUEUE],
        "name": "processing",
        "concurrency": concurrency,
        "wait": wait,
        "additional_context": {"processor": processor},
        # `work` handles signals: cancelling the worker stops it gracefully.
        "install_signal_handlers": False,
        "update_heartbeat_interval": stalled / 3,
        "stalled_worker_timeout": stalled,
        # Without waiting for new jobs (tests), the jobs found run to their end.
        "shutdown_graceful_timeout": SHUTDOWN_GRACE if wait else None,
        "delete_jobs": "successful",
    }


async def work(config: Config, *, concurrency: int | None = None, wait: bool = True) -> None:
    """Run a processing worker until cancelled; without `wait`, until no job is left.

    The schema must be migrated already (the worker command migrates first).

    Cancelling it stops it gracefully: running jobs get SHUTDOWN_GRACE seconds
    to finish, then are abandoned and retried later.
    """
    jobs = concurrency or config.worker_concurrency
    pool = await aiopg.create_pool(config.database_url, minsize=1, maxsize=jobs + 2,
                                   timeout=config.db_timeout)
    try:
        db = Database(pool, Queries.load())
        stats = JobStats()
        app = create_job_app(config, jobs, stats)
        async with opened(config) as store, app.open_async(), metrics_port(config, stats):
            # Changes are only recorded here; a worker caches nothing to learn of them.
            processor = Processor(db, ChangeFeed(config.database_url, db.queries), config,
                                  store)
            upkeep = Upkeep(app, db, config.worker_stalled_after)
            background = [
                run_every(max(config.worker_stalled_after / 2, 0.5), upkeep.run,
                          "processing-upkeep"),
                run_every(WORK_SWEEP_EVERY,
                          lambda: asyncio.to_thread(sweep_work_dirs, processor.work_root),
                          "work-dir-sweep"),
            ]
            try:
                await _run_worker(app, worker_options(config, processor, jobs, wait))
            finally:
                for task in background:
                    await stop(task)
    finally:
        pool.close()
        await pool.wait_closed()


@contextlib.asynccontextmanager
async def metrics_port(config: Config, stats: JobStats) -> AsyncIterator[None]:
    """The worker's /metrics on METRICS_PORT, when set. A port already taken (a
    server on the same machine with the same settings) costs the metrics, not the work."""
    if config.metrics_port is None:
        yield
        return
    metrics = Metrics(config.metrics_token, on_main_port=False)
    metrics.add("jobs", stats.families)
    async with contextlib.AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(serve_port(metrics, config.host,
                                                       config.metrics_port))
        except OSError as exc:
            log.warning("worker metrics not served: cannot listen on %s:%d: %s", config.host,
                        config.metrics_port, exc.strerror or exc)
        yield


async def _run_worker(app: procrastinate.App, options: dict[str, Any]) -> None:
    """Run procrastinate's worker; start it again whenever it stops on its own.

    It stops on its own when its database link fails (a heartbeat that cannot
    be written); its jobs are then recovered as stalled if they cannot finish.
    """
    delay = RESTART_MIN
    while True:
        try:
            await app.run_worker_async(**options)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("processing worker failed (%s); starting it again in %gs",
                        first_line(exc), delay)
        else:
            if not options["wait"]:
                return
            log.warning("processing worker stopped; starting it again in %gs", delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RESTART_MAX)
