-- name: insert_video
WITH v AS (
    INSERT INTO videos (author_id, title, description, size, content_type, storage_key, duration)
    VALUES (%(author_id)s, %(title)s, %(description)s, %(size)s, %(content_type)s,
            %(storage_key)s, %(duration)s)
    RETURNING id, author_id, title, description, size, content_type, duration, views, created_at
)
SELECT v.*, u.name AS author_name FROM v JOIN users u ON u.id = v.author_id;

-- name: video_by_id
SELECT v.id, v.author_id, u.name AS author_name, v.title, v.description, v.size,
       v.content_type, v.duration, v.views, v.created_at
FROM videos v JOIN users u ON u.id = v.author_id
WHERE v.id = %(id)s;

-- name: video_file
SELECT id, size, content_type, storage_key, floor(extract(epoch FROM created_at))::bigint AS created
FROM videos WHERE id = %(id)s;

-- name: list_videos
SELECT v.id, v.author_id, u.name AS author_name, v.title, v.description, v.size,
       v.content_type, v.duration, v.views, v.created_at
FROM videos v JOIN users u ON u.id = v.author_id
WHERE %(before)s::bigint IS NULL OR v.id < %(before)s::bigint
ORDER BY v.id DESC
LIMIT %(limit)s;

-- name: delete_video
DELETE FROM videos WHERE id = %(id)s RETURNING storage_key;

-- name: lock_video_author
SELECT author_id FROM videos WHERE id = %(id)s FOR UPDATE;

-- name: stored_keys
-- Which of these stored files a video row names.
SELECT storage_key FROM videos WHERE storage_key = ANY(%(keys)s::text[]);
