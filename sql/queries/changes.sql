-- name: record_video_change
-- The transaction lock makes change rows commit in `seq` order: the row takes
-- its seq only once the lock is held, and the lock is released after commit.
-- So a reader that has seen `seq` n never later finds a smaller one appear. It
-- is held for the rest of the writing transaction; writes of videos are rare.
SELECT pg_advisory_xact_lock(7632626569);
SELECT pg_notify('tubelet_video_changes', '');
INSERT INTO video_changes (video_id, kind) VALUES (%(video_id)s, %(kind)s) RETURNING seq;

-- name: record_video_changes
-- One change per video, under the same lock as record_video_change.
SELECT pg_advisory_xact_lock(7632626569);
SELECT pg_notify('tubelet_video_changes', '');
INSERT INTO video_changes (video_id, kind)
SELECT v.id, %(kind)s FROM unnest(%(video_ids)s::bigint[]) AS v (id)
RETURNING seq, video_id;

-- name: record_user_change
-- A change of a user (a ban, a role) rides the same log, under the same lock.
SELECT pg_advisory_xact_lock(7632626569);
SELECT pg_notify('tubelet_video_changes', '');
INSERT INTO video_changes (user_id, kind) VALUES (%(user_id)s, %(kind)s) RETURNING seq;

-- name: last_video_change
SELECT coalesce(max(seq), 0) AS seq FROM video_changes;

-- name: video_changes_since
SELECT seq, video_id, user_id, kind FROM video_changes WHERE seq > %(seq)s ORDER BY seq LIMIT 1000;

-- name: oldest_video_change
SELECT min(seq) AS seq FROM video_changes;

-- name: prune_video_changes
-- Removes a prefix of the log up to the last row older than the limit, and never
-- the newest row: a reader back from an outage knows it missed rows exactly when
-- the oldest row left is past the next one it expected. (`at` is when the
-- writing transaction began, so it need not grow with `seq`.)
DELETE FROM video_changes
WHERE seq < (SELECT max(seq) FROM video_changes)
  AND seq <= (SELECT max(seq) FROM video_changes
              WHERE at < now() - make_interval(hours => %(hours)s));
