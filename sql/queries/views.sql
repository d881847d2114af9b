-- name: lock_view_flush
-- Serialises flushes across processes, so their row updates never deadlock.
SELECT pg_advisory_xact_lock(7632626568);

-- name: claim_view_batch
-- The batch's views are set by add_views, once it knows which videos still exist.
INSERT INTO view_batches (id, views) VALUES (%(id)s, 0)
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: add_views
-- Views of videos deleted meanwhile are dropped: the batch records only the
-- views it added.
WITH added AS (
    UPDATE videos AS v SET views = v.views + b.n
    FROM unnest(%(ids)s::bigint[], %(counts)s::bigint[]) AS b (id, n)
    WHERE v.id = b.id
    RETURNING b.n
)
UPDATE view_batches SET views = (SELECT coalesce(sum(n), 0) FROM added)
WHERE id = %(id)s
RETURNING views;

-- name: views_snapshot
-- Stored counts and, in the same snapshot, which in-flight batches are applied.
SELECT v.id, v.views,
       ARRAY(SELECT b.id::text FROM view_batches b
             WHERE b.id = ANY(%(batches)s::uuid[])) AS applied
FROM videos v
WHERE v.id = ANY(%(ids)s::bigint[]);

-- name: video_duration
-- Views count for videos anyone may watch: not private, removed, or by a banned author.
SELECT v.duration
FROM videos v JOIN users u ON u.id = v.author_id
WHERE v.id = %(id)s AND v.visibility <> 'private' AND v.removed_at IS NULL
  AND (u.banned_until IS NULL OR u.banned_until <= now());

-- name: prune_view_batches
-- A batch is deleted from Redis right after it is applied, so a row this old
-- can no longer guard against anything.
DELETE FROM view_batches WHERE applied_at < now() - make_interval(days => %(days)s);
