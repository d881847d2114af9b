-- The social layer: comments, reactions, subscriptions, blocks, feeds, search.
-- Every video shown to others comes from playable_videos or listed_videos; every
-- comment shown from shown_comments (author not banned), minus the viewer's blocks.

-- name: social_active_user
-- A user who exists and is not banned now.
SELECT id, name, role FROM users
WHERE id = %(id)s AND (banned_until IS NULL OR banned_until <= now());

-- name: social_user_exists
SELECT id FROM users WHERE id = %(id)s;

-- name: social_playable_video
-- A video `viewer` may play: listed or unlisted, or private and theirs.
SELECT id, author_id FROM playable_videos
WHERE id = %(video_id)s AND (visibility <> 'private' OR author_id = %(viewer)s::bigint);

-- name: social_lock_playable_video
-- The same, with the video row locked until the transaction ends: every change of
-- a video's counters takes this lock first, so counter deltas computed after it are exact.
SELECT v.id, v.author_id FROM videos v
WHERE v.id = (SELECT p.id FROM playable_videos p
              WHERE p.id = %(video_id)s
                AND (p.visibility <> 'private' OR p.author_id = %(viewer)s::bigint))
FOR NO KEY UPDATE;

-- name: social_lock_video
-- Any video row, locked: an author may delete their comment whatever became of the video.
SELECT id FROM videos WHERE id = %(video_id)s FOR NO KEY UPDATE;

-- name: social_add_comment_count
UPDATE videos SET comment_count = comment_count + %(delta)s WHERE id = %(video_id)s;

-- name: social_comment
-- A comment and its author's name, with the role of the user asking (NULL if unknown).
SELECT c.*, u.name AS author_name,
       (SELECT role FROM users WHERE id = %(actor)s::bigint) AS actor_role
FROM comments c JOIN users u ON u.id = c.author_id
WHERE c.id = %(id)s;

-- name: social_lock_comment
SELECT id, video_id, author_id, parent_id, reply_count, deleted_at, removed_at
FROM comments WHERE id = %(id)s FOR NO KEY UPDATE;

-- name: social_insert_comment
WITH c AS (
    INSERT INTO comments (video_id, author_id, parent_id, body)
    VALUES (%(video_id)s, %(author_id)s, %(parent_id)s, %(body)s)
    RETURNING *
)
SELECT c.*, u.name AS author_name FROM c JOIN users u ON u.id = c.author_id;

-- name: social_add_reply_count
UPDATE comments SET reply_count = reply_count + %(delta)s WHERE id = %(id)s
RETURNING reply_count, deleted_at;

-- name: social_edit_comment
WITH c AS (
    UPDATE comments SET body = %(body)s, edited_at = now()
    WHERE id = %(id)s AND deleted_at IS NULL
    RETURNING *
)
SELECT c.*, u.name AS author_name FROM c JOIN users u ON u.id = c.author_id;

-- name: social_delete_comment_row
DELETE FROM comments WHERE id = %(id)s;

-- name: social_leave_placeholder
-- A deleted comment that still has replies: the row stays, its words go.
UPDATE comments SET deleted_at = now(), body = '' WHERE id = %(id)s;

-- name: social_comments_newest
-- Top-level comments, newest first.
SELECT c.* FROM shown_comments c
WHERE c.video_id = %(video_id)s AND c.parent_id IS NULL
  AND (%(before_id)s::bigint IS NULL OR c.id < %(before_id)s::bigint)
  AND NOT EXISTS (SELECT 1 FROM blocks b
                  WHERE b.blocker_id = %(viewer)s::bigint AND b.blocked_id = c.author_id)
ORDER BY c.id DESC
LIMIT %(limit)s;

-- name: social_comments_top
-- Top-level comments, most replied first, then newest.
SELECT c.* FROM shown_comments c
WHERE c.video_id = %(video_id)s AND c.parent_id IS NULL
  AND (%(before_id)s::bigint IS NULL
       OR (c.reply_count, c.id) < (%(before_count)s::bigint, %(before_id)s::bigint))
  AND NOT EXISTS (SELECT 1 FROM blocks b
                  WHERE b.blocker_id = %(viewer)s::bigint AND b.blocked_id = c.author_id)
ORDER BY c.reply_count DESC, c.id DESC
LIMIT %(limit)s;

-- name: social_reply_previews
-- The first few replies (oldest first) of each of these comments.
SELECT * FROM (
    SELECT c.*, row_number() OVER (PARTITION BY c.parent_id ORDER BY c.id) AS position
    FROM shown_comments c
    WHERE c.parent_id = ANY(%(parents)s::bigint[])
      AND NOT EXISTS (SELECT 1 FROM blocks b
                      WHERE b.blocker_id = %(viewer)s::bigint AND b.blocked_id = c.author_id)
) r
WHERE r.position <= %(per_parent)s
ORDER BY r.parent_id, r.id;

-- name: social_shown_comment
-- A comment `viewer` may see: on a video they may play, by an author not banned
-- and not blocked by them.
SELECT c.* FROM shown_comments c
WHERE c.id = %(id)s
  AND EXISTS (SELECT 1 FROM playable_videos p
              WHERE p.id = c.video_id
                AND (p.visibility <> 'private' OR p.author_id = %(viewer)s::bigint))
  AND NOT EXISTS (SELECT 1 FROM blocks b
                  WHERE b.blocker_id = %(viewer)s::bigint AND b.blocked_id = c.author_id);

-- name: social_replies
-- Replies to one comment, oldest first.
SELECT c.* FROM shown_comments c
WHERE c.parent_id = %(parent_id)s
  AND (%(after_id)s::bigint IS NULL OR c.id > %(after_id)s::bigint)
  AND NOT EXISTS (SELECT 1 FROM blocks b
                  WHERE b.blocker_id = %(viewer)s::bigint AND b.blocked_id = c.author_id)
ORDER BY c.id
LIMIT %(limit)s;

-- name: social_reaction
SELECT kind FROM reactions WHERE user_id = %(user_id)s AND video_id = %(video_id)s;

-- name: social_put_reaction
INSERT INTO reactions (user_id, video_id, kind) VALUES (%(user_id)s, %(video_id)s, %(kind)s)
ON CONFLICT (user_id, video_id) DO UPDATE SET kind = EXCLUDED.kind, created_at = now();

-- name: social_delete_reaction
DELETE FROM reactions WHERE user_id = %(user_id)s AND video_id = %(video_id)s;

-- name: social_add_reaction_counts
UPDATE videos SET like_count = like_count + %(likes)s,
                  dislike_count = dislike_count + %(dislikes)s
WHERE id = %(video_id)s
RETURNING like_count, dislike_count;

-- name: social_subscribe
-- Counted only when the row is new, in the same statement: exact under any concurrency
-- (a second insert of the same pair waits for the first and then does nothing).
WITH added AS (
    INSERT INTO subscriptions (subscriber_id, channel_id)
    VALUES (%(subscriber_id)s, %(channel_id)s)
    ON CONFLICT DO NOTHING
    RETURNING channel_id
)
UPDATE users SET subscriber_count = subscriber_count + (SELECT count(*) FROM added)
WHERE id = %(channel_id)s
RETURNING subscriber_count;

-- name: social_unsubscribe
WITH removed AS (
    DELETE FROM subscriptions
    WHERE subscriber_id = %(subscriber_id)s AND channel_id = %(channel_id)s
    RETURNING channel_id
)
UPDATE users SET subscriber_count = subscriber_count - (SELECT count(*) FROM removed)
WHERE id = %(channel_id)s
RETURNING subscriber_count;

-- name: social_subscriptions
-- The channels a user follows, most recently followed first; a banned channel is
-- left out while the ban lasts, as its profile is.
SELECT u.id, u.name, u.avatar_key, u.subscriber_count, s.created_at AS subscribed_at
FROM subscriptions s JOIN users u ON u.id = s.channel_id
WHERE s.subscriber_id = %(user_id)s
  AND (u.banned_until IS NULL OR u.banned_until <= now())
  AND (%(before_at)s::timestamptz IS NULL
       OR (s.created_at, s.channel_id) < (%(before_at)s::timestamptz, %(before_id)s::bigint))
ORDER BY s.created_at DESC, s.channel_id DESC
LIMIT %(limit)s;

-- name: social_block
INSERT INTO blocks (blocker_id, blocked_id) VALUES (%(blocker_id)s, %(blocked_id)s)
ON CONFLICT DO NOTHING;

-- name: social_unblock
DELETE FROM blocks WHERE blocker_id = %(blocker_id)s AND blocked_id = %(blocked_id)s;

-- name: social_feed_global
-- Listed videos, newest first, with the viewer's reaction.
SELECT v.*, r.kind AS my_reaction
FROM listed_videos v
LEFT JOIN reactions r ON r.video_id = v.id AND r.user_id = %(viewer)s::bigint
WHERE (%(before_id)s::bigint IS NULL OR v.id < %(before_id)s::bigint)
ORDER BY v.id DESC
LIMIT %(limit)s;

-- name: social_feed_following
-- Listed videos of the channels a user follows, newest first.
SELECT v.*, r.kind AS my_reaction
FROM listed_videos v
LEFT JOIN reactions r ON r.video_id = v.id AND r.user_id = %(viewer)s::bigint
WHERE v.author_id IN (SELECT channel_id FROM subscriptions WHERE subscriber_id = %(viewer)s)
  AND (%(before_id)s::bigint IS NULL OR v.id < %(before_id)s::bigint)
ORDER BY v.id DESC
LIMIT %(limit)s;

-- name: social_trending_lock
-- One process at a time computes a snapshot; the others wait, then find it fresh.
SELECT pg_advisory_xact_lock(%(key)s);

-- name: social_trending_fresh
SELECT id FROM trending_snapshots
WHERE computed_at > now() - make_interval(secs => %(max_age)s)
ORDER BY id DESC LIMIT 1;

-- name: social_trending_latest
SELECT id FROM trending_snapshots ORDER BY id DESC LIMIT 1;

-- name: social_trending_exists
SELECT id FROM trending_snapshots WHERE id = %(id)s;

-- name: social_trending_new_snapshot
INSERT INTO trending_snapshots DEFAULT VALUES RETURNING id;

-- name: social_trending_rank
-- The trending score (README, "Trending"):
--   engagement = views + 4 * likes - 2 * dislikes + 6 * comments, at least 0
--   score      = (engagement + 1) / (age in hours + 2) ^ 1.5
-- Ties go to the newer video.
INSERT INTO trending_ranks (snapshot_id, rank, video_id, score)
SELECT %(snapshot_id)s, row_number() OVER (ORDER BY s.score DESC, s.id DESC), s.id, s.score
FROM (
    SELECT v.id,
           (greatest(v.views + 4 * v.like_count - 2 * v.dislike_count + 6 * v.comment_count,
                     0) + 1)::float8
           / power(greatest(extract(epoch FROM now() - v.created_at)::float8, 0) / 3600 + 2,
                   1.5) AS score
    FROM listed_videos v
    ORDER BY score DESC, v.id DESC
    LIMIT %(size)s
) s;

-- name: social_trending_prune
-- Keep the newest few snapshots, so cursors into the previous ones still page on.
DELETE FROM trending_snapshots
WHERE id < (SELECT min(id) FROM (SELECT id FROM trending_snapshots
                                 ORDER BY id DESC LIMIT %(keep)s) newest);

-- name: social_feed_trending
-- One page of a snapshot's ranking, skipping videos no longer listed.
SELECT v.*, r.kind AS my_reaction, t.rank AS trending_rank
FROM trending_ranks t
JOIN listed_videos v ON v.id = t.video_id
LEFT JOIN reactions r ON r.video_id = v.id AND r.user_id = %(viewer)s::bigint
WHERE t.snapshot_id = %(snapshot_id)s AND t.rank > %(after_rank)s
ORDER BY t.rank
LIMIT %(limit)s;

-- name: social_search
-- Listed videos matching a query, best first. `text` is the query as typed,
-- parsed websearch-style both stemmed (`lang`) and as exact words ('simple');
-- with `prefix` (the word being typed, `word:*`), a video also matches when
-- `head` (the rest) matches and a word starts with the prefix.
WITH q AS (
    SELECT CASE WHEN %(prefix)s::text IS NULL THEN full_query
                ELSE full_query || (head_query && to_tsquery('simple', %(prefix)s::text))
           END AS query
    FROM (SELECT websearch_to_tsquery(%(lang)s::regconfig, %(text)s)
                 || websearch_to_tsquery('simple', %(text)s) AS full_query,
                 websearch_to_tsquery(%(lang)s::regconfig, %(head)s)
                 || websearch_to_tsquery('simple', %(head)s) AS head_query) parts
)
SELECT * FROM (
    SELECT v.*, r.kind AS my_reaction, ts_rank_cd(v.search, q.query)::float8 AS search_rank
    FROM listed_videos v
    CROSS JOIN q
    LEFT JOIN reactions r ON r.video_id = v.id AND r.user_id = %(viewer)s::bigint
    WHERE v.search @@ q.query
) found
WHERE %(before_id)s::bigint IS NULL
   OR (found.search_rank, found.id) < (%(before_rank)s::float8, %(before_id)s::bigint)
ORDER BY found.search_rank DESC, found.id DESC
LIMIT %(limit)s;

-- name: social_search_tag
-- Listed videos with a tag, newest first.
SELECT v.*, r.kind AS my_reaction
FROM listed_videos v
LEFT JOIN reactions r ON r.video_id = v.id AND r.user_id = %(viewer)s::bigint
WHERE v.tags @> ARRAY[%(tag)s::text]
  AND (%(before_id)s::bigint IS NULL OR v.id < %(before_id)s::bigint)
ORDER BY v.id DESC
LIMIT %(limit)s;
