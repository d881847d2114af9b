-- name: insert_video
-- A new upload: its file is the original until processing replaces it. Its
-- language (the text-search configuration that stems it) is the server's setting.
WITH v AS (
    INSERT INTO videos (author_id, title, description, size, content_type, storage_key, duration,
                        status, progress, language)
    VALUES (%(author_id)s, %(title)s, %(description)s, %(size)s, %(content_type)s,
            %(storage_key)s, %(duration)s, 'processing', 0, %(language)s::regconfig)
    RETURNING *
)
SELECT v.*, u.name AS author_name, NULL::text AS my_reaction,
       (u.banned_until IS NOT NULL AND u.banned_until > now()) AS author_banned
FROM v JOIN users u ON u.id = v.author_id;

-- name: video_by_id
SELECT v.*, u.name AS author_name
FROM videos v JOIN users u ON u.id = v.author_id
WHERE v.id = %(id)s;

-- name: video_for_viewer
-- Any video, whatever its state (who may see it is decided by the caller), with
-- the viewer's reaction (the viewer may be NULL).
SELECT v.*, u.name AS author_name, r.kind AS my_reaction,
       (u.banned_until IS NOT NULL AND u.banned_until > now()) AS author_banned
FROM videos v
JOIN users u ON u.id = v.author_id
LEFT JOIN reactions r ON r.video_id = v.id AND r.user_id = %(viewer)s::bigint
WHERE v.id = %(id)s;

-- name: video_file
-- What the stream serves: playable videos only (ready, not removed, author not
-- banned); a private one only with a signed URL. A processed file was modified
-- when it was processed.
SELECT id, size, content_type, storage_key, visibility,
       floor(extract(epoch FROM coalesce(processed_at, created_at)))::bigint AS created
FROM playable_videos WHERE id = %(id)s;

-- name: video_artifacts
-- The poster and storyboard files of a playable video.
SELECT poster_key, storyboard_key, storyboard_vtt_key, visibility,
       floor(extract(epoch FROM processed_at))::bigint AS modified
FROM playable_videos WHERE id = %(id)s;

-- name: list_videos
-- Listed videos, and the viewer's own whatever their state, newest first: each
-- half is a keyset scan of its own index, then the page is cut from both.
WITH page AS (
    (SELECT id FROM listed_videos
     WHERE %(before)s::bigint IS NULL OR id < %(before)s::bigint
     ORDER BY id DESC LIMIT %(limit)s)
    UNION
    (SELECT id FROM videos
     WHERE author_id = %(viewer)s::bigint
       AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
     ORDER BY id DESC LIMIT %(limit)s)
)
SELECT v.*, u.name AS author_name, r.kind AS my_reaction,
       (u.banned_until IS NOT NULL AND u.banned_until > now()) AS author_banned
FROM page
JOIN videos v ON v.id = page.id
JOIN users u ON u.id = v.author_id
LEFT JOIN reactions r ON r.video_id = v.id AND r.user_id = %(viewer)s::bigint
ORDER BY v.id DESC
LIMIT %(limit)s;

-- name: user_videos
-- One user's videos, newest first: the listed ones, or (`all_of_them`, for the
-- user themself) every one whatever its state.
WITH page AS (
    (SELECT id FROM listed_videos
     WHERE author_id = %(author)s AND NOT %(all_of_them)s
       AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
     ORDER BY id DESC LIMIT %(limit)s)
    UNION ALL
    (SELECT id FROM videos
     WHERE author_id = %(author)s AND %(all_of_them)s
       AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
     ORDER BY id DESC LIMIT %(limit)s)
)
SELECT v.*, u.name AS author_name, r.kind AS my_reaction,
       (u.banned_until IS NOT NULL AND u.banned_until > now()) AS author_banned
FROM page
JOIN videos v ON v.id = page.id
JOIN users u ON u.id = v.author_id
LEFT JOIN reactions r ON r.video_id = v.id AND r.user_id = %(viewer)s::bigint
ORDER BY v.id DESC;

-- name: catalog_user_exists
SELECT 1 AS found FROM users WHERE id = %(id)s;

-- name: edit_video
-- Fields left NULL stay as they are.
UPDATE videos SET
    title = coalesce(%(title)s, title),
    description = coalesce(%(description)s, description),
    visibility = coalesce(%(visibility)s, visibility),
    tags = coalesce(%(tags)s::text[], tags)
WHERE id = %(id)s;

-- name: delete_video
DELETE FROM videos WHERE id = %(id)s
RETURNING storage_key, original_key, poster_key, storyboard_key, storyboard_vtt_key;

-- name: lock_video_author
SELECT v.author_id, v.visibility, v.removed_at,
       (u.banned_until IS NOT NULL AND u.banned_until > now()) AS author_banned
FROM videos v JOIN users u ON u.id = v.author_id
WHERE v.id = %(id)s
FOR UPDATE OF v;

-- name: stored_keys
-- Which of these stored files a video row names, in any of its file columns,
-- or a user row names as its avatar.
SELECT k.key
FROM unnest(%(keys)s::text[]) AS k (key)
WHERE EXISTS (
    SELECT 1 FROM videos v
    WHERE v.storage_key = k.key OR v.original_key = k.key OR v.poster_key = k.key
       OR v.storyboard_key = k.key OR v.storyboard_vtt_key = k.key
) OR EXISTS (SELECT 1 FROM users u WHERE u.avatar_key = k.key);

-- name: instance_id
SELECT id::text AS id FROM instance;
