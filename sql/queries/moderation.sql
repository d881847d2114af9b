-- Reports, moderators' actions and the audit log (server/moderation).

-- name: moderation_video_visible
-- Whether a reporter can see this video: playable (ready, not removed, author not
-- banned), and not private unless it is their own.
SELECT id FROM playable_videos
WHERE id = %(id)s AND (visibility <> 'private' OR author_id = %(viewer)s);

-- name: moderation_comment_visible
-- Whether a reporter can see this comment: neither deleted nor removed, its author
-- not banned, on a video they can see.
SELECT c.id
FROM comments c
JOIN users u ON u.id = c.author_id
JOIN playable_videos v ON v.id = c.video_id
WHERE c.id = %(id)s AND c.deleted_at IS NULL AND c.removed_at IS NULL
  AND (u.banned_until IS NULL OR u.banned_until <= now())
  AND (v.visibility <> 'private' OR v.author_id = %(viewer)s);

-- name: moderation_user_visible
-- Whether a reporter can see this user: they exist and are not banned now.
SELECT id FROM users
WHERE id = %(id)s AND (banned_until IS NULL OR banned_until <= now());

-- name: moderation_insert_report
-- A second open report by one reporter on one target violates reports_open_once.
INSERT INTO reports (reporter_id, target_type, target_id, reason, note)
VALUES (%(reporter_id)s, %(target_type)s, %(target_id)s, %(reason)s, %(note)s)
RETURNING *;

-- name: moderation_reports_page
-- The queue: open reports first, then resolved ones; newest first within each.
-- `rank` and `id` are the keyset cursor. Each report comes with what it is about
-- (a video title, a comment excerpt, a user name; NULL once the target is gone)
-- and how many open reports that target has.
SELECT r.*, (r.status <> 'open')::int AS rank,
       reporter.name AS reporter_name,
       CASE r.target_type
           WHEN 'video' THEN tv.title
           WHEN 'comment' THEN left(tc.body, %(excerpt)s)
           WHEN 'user' THEN tu.name
       END AS target_label,
       CASE r.target_type
           WHEN 'video' THEN tv.author_id
           WHEN 'comment' THEN tc.author_id
           WHEN 'user' THEN tu.id
       END AS target_owner_id,
       CASE r.target_type
           WHEN 'video' THEN tv.removed_at IS NOT NULL
           WHEN 'comment' THEN tc.removed_at IS NOT NULL
           WHEN 'user' THEN tu.banned_until IS NOT NULL AND tu.banned_until > now()
       END AS target_hidden,
       tc.video_id AS target_video_id,
       (SELECT count(*) FROM reports o
        WHERE o.target_type = r.target_type AND o.target_id = r.target_id
          AND o.status = 'open') AS target_open_reports
FROM reports r
LEFT JOIN users reporter ON reporter.id = r.reporter_id
LEFT JOIN videos tv ON r.target_type = 'video' AND tv.id = r.target_id
LEFT JOIN comments tc ON r.target_type = 'comment' AND tc.id = r.target_id
LEFT JOIN users tu ON r.target_type = 'user' AND tu.id = r.target_id
WHERE (%(all)s OR r.status = 'open')
  AND (%(after_rank)s::int IS NULL
       OR ((r.status <> 'open')::int, -r.id) > (%(after_rank)s::int, -%(after_id)s::bigint))
ORDER BY (r.status <> 'open')::int, r.id DESC
LIMIT %(limit)s;

-- name: moderation_lock_video
-- The video and its author's role, locked for one action. NO KEY: comments and
-- reactions may still be added meanwhile (their foreign keys only share the key).
SELECT v.id, v.author_id, v.removed_at, u.role AS owner_role
FROM videos v JOIN users u ON u.id = v.author_id
WHERE v.id = %(id)s
FOR NO KEY UPDATE OF v;

-- name: moderation_remove_video
UPDATE videos SET removed_at = now(), removed_reason = %(reason)s WHERE id = %(id)s;

-- name: moderation_restore_video
UPDATE videos SET removed_at = NULL, removed_reason = NULL WHERE id = %(id)s;

-- name: moderation_lock_comment
-- The comment and its author's role, locked for one action.
SELECT c.id, c.video_id, c.author_id, c.removed_at, u.role AS owner_role
FROM comments c JOIN users u ON u.id = c.author_id
WHERE c.id = %(id)s
FOR NO KEY UPDATE OF c;

-- name: moderation_remove_comment
UPDATE comments SET removed_at = now(), removed_reason = %(reason)s WHERE id = %(id)s;

-- name: moderation_restore_comment
UPDATE comments SET removed_at = NULL, removed_reason = NULL WHERE id = %(id)s;

-- name: moderation_lock_user
-- The user, their role and whether a ban holds now, locked for one action.
SELECT id, role AS owner_role, banned_until,
       banned_until IS NOT NULL AND banned_until > now() AS banned
FROM users WHERE id = %(id)s
FOR NO KEY UPDATE;

-- name: moderation_user_by_email
SELECT id, email, role FROM users WHERE lower(email) = lower(%(email)s) FOR NO KEY UPDATE;

-- name: moderation_lock_report
SELECT id, target_type, target_id, status FROM reports WHERE id = %(id)s FOR NO KEY UPDATE;

-- name: moderation_report_owner
-- Who a report is about, and their role: the author of a reported video or comment,
-- or the reported user. No row when the target is gone.
SELECT u.id AS id, u.role AS owner_role
FROM users u
WHERE u.id = CASE %(target_type)s
    WHEN 'user' THEN %(target_id)s
    WHEN 'video' THEN (SELECT author_id FROM videos WHERE id = %(target_id)s)
    WHEN 'comment' THEN (SELECT author_id FROM comments WHERE id = %(target_id)s)
END;

-- name: moderation_resolve_reports
-- Closes every open report on one target, as 'actioned' or 'dismissed'.
UPDATE reports SET status = %(status)s, resolved_at = now(), resolved_by = %(actor_id)s
WHERE target_type = %(target_type)s AND target_id = %(target_id)s AND status = 'open'
RETURNING id;

-- name: moderation_log_insert
INSERT INTO moderation_log (actor_id, action, target_type, target_id, reason, details)
VALUES (%(actor_id)s, %(action)s, %(target_type)s, %(target_id)s, %(reason)s, %(details)s)
RETURNING id;

-- name: moderation_log_page
-- The audit log, newest first, with who acted and what they acted on.
SELECT l.*, actor.name AS actor_name,
       CASE l.target_type
           WHEN 'video' THEN tv.title
           WHEN 'comment' THEN left(tc.body, %(excerpt)s)
           WHEN 'user' THEN tu.name
       END AS target_label
FROM moderation_log l
LEFT JOIN users actor ON actor.id = l.actor_id
LEFT JOIN videos tv ON l.target_type = 'video' AND tv.id = l.target_id
LEFT JOIN comments tc ON l.target_type = 'comment' AND tc.id = l.target_id
LEFT JOIN users tu ON l.target_type = 'user' AND tu.id = l.target_id
WHERE %(before)s::bigint IS NULL OR l.id < %(before)s::bigint
ORDER BY l.id DESC
LIMIT %(limit)s;

-- name: moderation_set_role
UPDATE users SET role = %(role)s WHERE id = %(id)s;
