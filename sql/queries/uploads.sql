-- Resumable (tus) uploads. A PATCH writes under a lease (lock_token, locked_until)
-- taken, renewed and released by the statements below, each its own short
-- transaction; every write of `received` is fenced by the lease's token.

-- name: insert_upload
-- Refused (no row) when the owner already has `max_open` unfinished uploads.
-- A creation that carries data takes the lease at once (lock_token not null).
INSERT INTO uploads (id, owner_id, length, metadata, title, description, filename,
                     expires_at, lock_token, locked_until)
SELECT %(id)s, %(owner_id)s, %(length)s, %(metadata)s, %(title)s, %(description)s,
       %(filename)s, now() + make_interval(secs => %(expiry)s), %(lock_token)s::uuid,
       CASE WHEN %(lock_token)s::uuid IS NULL THEN NULL
            ELSE now() + make_interval(secs => %(lease)s) END
WHERE (SELECT count(*) FROM uploads
       WHERE owner_id = %(owner_id)s AND finished_at IS NULL AND expires_at > now())
      < %(max_open)s
RETURNING id, owner_id, length, received, metadata, title, description, expires_at,
          storage_key, video_id, finished_at;

-- name: upload_of_owner
SELECT id, owner_id, length, received, metadata, title, description, expires_at,
       storage_key, video_id, finished_at,
       expires_at <= now() AS expired,
       lock_token IS NOT NULL AND locked_until > now() AS locked
FROM uploads WHERE id = %(id)s AND owner_id = %(owner_id)s;

-- name: take_upload_lease
-- Succeeds only when no live lease is held; a lease whose holder died lapses.
UPDATE uploads
SET lock_token = %(token)s::uuid, locked_until = now() + make_interval(secs => %(lease)s)
WHERE id = %(id)s AND owner_id = %(owner_id)s AND expires_at > now()
  AND (lock_token IS NULL OR locked_until <= now())
RETURNING id, owner_id, length, received, metadata, title, description, expires_at,
          storage_key, video_id, finished_at;

-- name: renew_upload_lease
-- Extends the lease and records the durable offset; no row means the lease was lost.
UPDATE uploads
SET locked_until = now() + make_interval(secs => %(lease)s), received = %(received)s,
    expires_at = CASE WHEN finished_at IS NULL
                      THEN now() + make_interval(secs => %(expiry)s) ELSE expires_at END
WHERE id = %(id)s AND lock_token = %(token)s::uuid
RETURNING expires_at;

-- name: release_upload_lease
UPDATE uploads
SET lock_token = NULL, locked_until = NULL, received = %(received)s,
    expires_at = CASE WHEN finished_at IS NULL
                      THEN now() + make_interval(secs => %(expiry)s) ELSE expires_at END
WHERE id = %(id)s AND lock_token = %(token)s::uuid
RETURNING expires_at;

-- name: plan_upload_storage_key
UPDATE uploads SET storage_key = %(storage_key)s
WHERE id = %(id)s AND lock_token = %(token)s::uuid
RETURNING id;

-- name: finish_upload
-- The record stays until it expires, so a client that missed the answer learns the video.
UPDATE uploads
SET video_id = %(video_id)s, finished_at = now(), received = length,
    expires_at = now() + make_interval(secs => %(expiry)s)
WHERE id = %(id)s AND lock_token = %(token)s::uuid
RETURNING id;

-- name: video_of_storage_key
-- The video a finish made, found by the file name it planned. Processing gives the
-- video a new file and keeps the upload's name as original_key.
SELECT id FROM videos WHERE storage_key = %(storage_key)s OR original_key = %(storage_key)s;

-- name: delete_unleased_upload
-- Termination: refused (no row) while a PATCH holds the lease.
DELETE FROM uploads
WHERE id = %(id)s AND owner_id = %(owner_id)s
  AND (lock_token IS NULL OR locked_until <= now())
RETURNING id;

-- name: delete_leased_upload
DELETE FROM uploads WHERE id = %(id)s AND lock_token = %(token)s::uuid RETURNING id;

-- name: delete_expired_uploads
-- A batch of expired records nobody is writing; their files are removed next.
DELETE FROM uploads
WHERE id IN (SELECT id FROM uploads
             WHERE expires_at <= now() AND (lock_token IS NULL OR locked_until <= now())
             ORDER BY expires_at
             LIMIT %(limit)s
             FOR UPDATE SKIP LOCKED)
RETURNING id;

-- name: known_upload_ids
SELECT id FROM uploads WHERE id = ANY(%(ids)s::text[]);
