-- name: insert_video
-- A new upload: its file is the original until processing replaces it.
WITH v AS (
    INSERT INTO videos (author_id, title, description, size, content_type, storage_key, duration,
                        status, progress)
    VALUES (%(author_id)s, %(title)s, %(description)s, %(size)s, %(content_type)s,
            %(storage_key)s, %(duration)s, 'processing', 0)
    RETURNING *
)
SELECT v.*, u.name AS author_name FROM v JOIN users u ON u.id = v.author_id;

-- name: video_by_id
SELECT v.*, u.name AS author_name
FROM videos v JOIN users u ON u.id = v.author_id
WHERE v.id = %(id)s;

-- name: video_file
-- What the stream serves: nothing until the video is ready. A processed file
-- was modified when it was processed.
SELECT id, size, content_type, storage_key,
       floor(extract(epoch FROM coalesce(processed_at, created_at)))::bigint AS created
FROM videos WHERE id = %(id)s AND status = 'ready';

-- name: video_artifacts
-- The poster and storyboard files of a ready video.
SELECT poster_key, storyboard_key, storyboard_vtt_key,
       floor(extract(epoch FROM processed_at))::bigint AS modified
FROM videos WHERE id = %(id)s AND status = 'ready';

-- name: list_videos
-- Ready videos, and the viewer's own whatever their status.
SELECT v.*, u.name AS author_name
FROM videos v JOIN users u ON u.id = v.author_id
WHERE (%(before)s::bigint IS NULL OR v.id < %(before)s::bigint)
  AND (v.status = 'ready' OR v.author_id = %(viewer)s::bigint)
ORDER BY v.id DESC
LIMIT %(limit)s;

-- name: delete_video
DELETE FROM videos WHERE id = %(id)s
RETURNING storage_key, original_key, poster_key, storyboard_key, storyboard_vtt_key;

-- name: lock_video_author
SELECT author_id FROM videos WHERE id = %(id)s FOR UPDATE;

-- name: stored_keys
-- Which of these stored files a video row names, in any of its file columns.
SELECT k.key
FROM unnest(%(keys)s::text[]) AS k (key)
WHERE EXISTS (
    SELECT 1 FROM videos v
    WHERE v.storage_key = k.key OR v.original_key = k.key OR v.poster_key = k.key
       OR v.storyboard_key = k.key OR v.storyboard_vtt_key = k.key
);

-- name: instance_id
SELECT id::text AS id FROM instance;
