-- name: profile_by_id
-- A user as everyone may see them. A banned user has no public profile while the
-- ban lasts; video_count counts what listings show (listed_videos).
SELECT u.id, u.name, u.bio, u.avatar_key, u.created_at, u.subscriber_count,
       (SELECT count(*) FROM listed_videos v WHERE v.author_id = u.id) AS video_count
FROM users u
WHERE u.id = %(id)s AND (u.banned_until IS NULL OR u.banned_until <= now());

-- name: profile_update
-- A NULL leaves that field as it is.
UPDATE users SET name = coalesce(%(name)s, name), bio = coalesce(%(bio)s, bio)
WHERE id = %(id)s
RETURNING id, email, name, created_at, role, bio, avatar_key;

-- name: profile_avatar_for_update
SELECT avatar_key FROM users WHERE id = %(id)s FOR UPDATE;

-- name: profile_set_avatar
UPDATE users SET avatar_key = %(key)s WHERE id = %(id)s
RETURNING id, email, name, created_at, role, bio, avatar_key;

-- name: profile_avatar_key
SELECT avatar_key FROM users
WHERE id = %(id)s AND (banned_until IS NULL OR banned_until <= now());
