-- name: insert_user
INSERT INTO users (email, name, password_hash)
VALUES (%(email)s, %(name)s, %(password_hash)s)
ON CONFLICT (lower(email)) DO NOTHING
RETURNING id, email, name, created_at, role, bio, avatar_key;

-- name: user_by_email
-- banned_until as seconds since the epoch ('infinity' for a ban without end).
SELECT id, email, name, password_hash, created_at,
       coalesce(banned_until > now(), false) AS banned,
       extract(epoch FROM banned_until)::float8 AS banned_until
FROM users WHERE lower(email) = lower(%(email)s);

-- name: user_by_id
SELECT id, email, name, created_at, role, bio, avatar_key FROM users WHERE id = %(id)s;

-- name: insert_refresh_token
INSERT INTO refresh_tokens (user_id, family_id, token_hash, expires_at)
VALUES (%(user_id)s, %(family_id)s, %(token_hash)s, now() + make_interval(secs => %(ttl)s));

-- name: refresh_token_by_hash
SELECT t.id, t.user_id, t.family_id, t.expires_at, t.rotated_at, t.revoked_at,
       t.expires_at <= now() AS expired,
       coalesce(u.banned_until > now(), false) AS banned,
       extract(epoch FROM u.banned_until)::float8 AS banned_until
FROM refresh_tokens t JOIN users u ON u.id = t.user_id
WHERE t.token_hash = %(token_hash)s;

-- name: rotate_refresh_token
-- Only one of two concurrent refreshes with the same token wins this update.
UPDATE refresh_tokens SET rotated_at = now()
WHERE id = %(id)s AND rotated_at IS NULL AND revoked_at IS NULL
RETURNING id;

-- name: revoke_family
UPDATE refresh_tokens SET revoked_at = now()
WHERE family_id = %(family_id)s AND revoked_at IS NULL;

-- name: revoke_user_tokens
UPDATE refresh_tokens SET revoked_at = now()
WHERE user_id = %(user_id)s AND revoked_at IS NULL;

-- name: standing_banned_users
-- Everyone banned now, with the end of the ban in seconds since the epoch.
SELECT id, extract(epoch FROM banned_until)::float8 AS banned_until
FROM users WHERE banned_until > now();

-- name: standing_role
SELECT role FROM users WHERE id = %(id)s;

-- name: standing_ban
-- A NULL until is a ban without end.
UPDATE users SET banned_until = coalesce(%(until)s::timestamptz, 'infinity'),
                 ban_reason = %(reason)s
WHERE id = %(id)s
RETURNING id, extract(epoch FROM banned_until)::float8 AS banned_until;

-- name: standing_lift_ban
UPDATE users SET banned_until = NULL, ban_reason = NULL WHERE id = %(id)s RETURNING id;

-- name: standing_set_role
UPDATE users SET role = %(role)s WHERE id = %(id)s RETURNING id;

-- name: standing_user_videos
SELECT id FROM videos WHERE author_id = %(id)s ORDER BY id;
