-- name: defer_processing
-- Queues the processing job of a video, inside the caller's transaction, with
-- procrastinate's own function. The queue, task and lock names are those of
-- server/ingest/jobs.py. The queueing lock keeps a video from ever having two
-- queued jobs; the lock keeps two of its jobs from running at once.
SELECT procrastinate_defer_jobs_v1(ARRAY[ROW(
    'processing', 'process_video', 0,
    'video-' || %(id)s::bigint, 'video-' || %(id)s::bigint,
    jsonb_build_object('video_id', %(id)s::bigint), NULL
)::procrastinate_job_to_defer_v1]) AS job_ids;

-- name: processing_video
SELECT id, status, storage_key, content_type, duration FROM videos WHERE id = %(id)s;

-- name: set_progress
UPDATE videos SET progress = %(progress)s WHERE id = %(id)s AND status = 'processing';

-- name: finish_processing
-- Only a video still processing becomes ready: one deleted meanwhile is gone,
-- and its new files with it.
UPDATE videos SET
    status = 'ready', progress = NULL, failure_reason = NULL,
    original_key = storage_key, storage_key = %(storage_key)s,
    size = %(size)s, content_type = %(content_type)s, duration = %(duration)s,
    width = %(width)s, height = %(height)s,
    video_codec = %(video_codec)s, audio_codec = %(audio_codec)s,
    poster_key = %(poster_key)s, storyboard_key = %(storyboard_key)s,
    storyboard_vtt_key = %(storyboard_vtt_key)s, processed_at = now()
WHERE id = %(id)s AND status = 'processing'
RETURNING id;

-- name: fail_processing
UPDATE videos SET status = 'failed', progress = NULL, failure_reason = %(reason)s
WHERE id = %(id)s AND status = 'processing'
RETURNING id;

-- name: unqueued_videos
-- Videos processing with no job queued or running: their job was lost (deleted,
-- or it ended without settling the video). The reconciler queues another.
SELECT v.id FROM videos v
WHERE v.status = 'processing'
  AND NOT EXISTS (
      SELECT 1 FROM procrastinate_jobs j
      WHERE j.queueing_lock = 'video-' || v.id
        AND j.status IN ('todo', 'doing'))
ORDER BY v.id
LIMIT 100;
