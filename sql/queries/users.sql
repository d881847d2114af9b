-- name: insert_user
INSERT INTO users (email, name, password_hash)
VALUES (%(email)s, %(name)s, %(password_hash)s)
ON CONFLICT (lower(email)) DO NOTHING
RETURNING id, email, name, created_at;

-- name: user_by_email
SELECT id, email, name, password_hash, created_at FROM users WHERE lower(email) = lower(%(email)s);

-- name: user_by_id
SELECT id, email, name, created_at FROM users WHERE id = %(id)s;

-- name: insert_refresh_token
INSERT INTO refresh_tokens (user_id, family_id, token_hash, expires_at)
VALUES (%(user_id)s, %(family_id)s, %(token_hash)s, now() + make_interval(secs => %(ttl)s));

-- name: refresh_token_by_hash
SELECT id, user_id, family_id, expires_at, rotated_at, revoked_at,
       expires_at <= now() AS expired
FROM refresh_tokens WHERE token_hash = %(token_hash)s;

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
