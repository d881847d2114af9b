-- name: record_video_change
-- The transaction lock makes change rows commit in `seq` order, so a reader
-- that has seen `seq` n never later finds a smaller one appear. It is held
-- only for the rest of the writing transaction, and writes of videos are rare.
SELECT pg_advisory_xact_lock(7632626569);
INSERT INTO video_changes (video_id, kind) VALUES (%(video_id)s, %(kind)s);
SELECT pg_notify('tubelet_video_changes', '');

-- name: last_video_change
SELECT coalesce(max(seq), 0) AS seq FROM video_changes;

-- name: video_changes_since
SELECT seq, video_id, kind FROM video_changes WHERE seq > %(seq)s ORDER BY seq LIMIT 1000;

-- name: oldest_video_change
SELECT min(seq) AS seq FROM video_changes;

-- name: prune_video_changes
DELETE FROM video_changes WHERE at < now() - make_interval(hours => %(hours)s);
