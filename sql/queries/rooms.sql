-- name: room_insert
-- The LiveKit name carries the id and a random part, so it is unique and unguessable.
-- No row when the owner's account is gone.
WITH next AS (SELECT nextval(pg_get_serial_sequence('rooms', 'id')) AS id)
INSERT INTO rooms (id, name, owner_id, livekit_room, max_participants)
SELECT next.id, %(name)s, u.id, 'tubelet-' || next.id || '-' || %(suffix)s, %(max_participants)s
FROM next, users u WHERE u.id = %(owner_id)s
RETURNING id, name, owner_id, livekit_room, max_participants, status, created_at,
          started_at, ended_at;

-- name: rooms_active_page
SELECT id, name, owner_id, livekit_room, max_participants, status, created_at,
       started_at, ended_at
FROM rooms
WHERE status = 'active' AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: room_by_id
SELECT id, name, owner_id, livekit_room, max_participants, status, created_at,
       started_at, ended_at
FROM rooms WHERE id = %(id)s;

-- name: room_by_livekit_room
SELECT id, status FROM rooms WHERE livekit_room = %(livekit_room)s;

-- name: room_lock_for_end
-- The room, and the role of whoever asks to end it (NULL: no such account).
SELECT r.id, r.owner_id, r.status, r.livekit_room,
       (SELECT role FROM users WHERE id = %(user_id)s) AS actor_role
FROM rooms r WHERE r.id = %(id)s
FOR UPDATE OF r;

-- name: room_end
UPDATE rooms SET status = 'ended', ended_at = now()
WHERE id = %(id)s
RETURNING id, name, owner_id, livekit_room, max_participants, status, created_at,
          started_at, ended_at;

-- name: room_member_name
SELECT name FROM users WHERE id = %(id)s;

-- name: room_event_insert
-- A redelivered event conflicts and returns no row: it was applied already.
INSERT INTO room_events (event_id, room_id, kind, created_at)
VALUES (%(event_id)s, %(room_id)s, %(kind)s, to_timestamp(%(at)s))
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id;

-- name: room_event_forget
-- Taken back when the event could not be applied in Redis, so LiveKit's retry applies it.
DELETE FROM room_events WHERE event_id = %(event_id)s;

-- name: room_started
-- The first start; an earlier one delivered late replaces a later one.
UPDATE rooms
SET started_at = LEAST(coalesce(started_at, to_timestamp(%(at)s)), to_timestamp(%(at)s))
WHERE id = %(id)s AND status = 'active';

-- name: room_finished
UPDATE rooms SET status = 'ended', ended_at = coalesce(ended_at, to_timestamp(%(at)s))
WHERE id = %(id)s;

-- name: room_sessions_close
-- When a room finishes, every stay still open ends with it.
UPDATE room_sessions SET left_at = GREATEST(joined_at, to_timestamp(%(at)s))
WHERE room_id = %(room_id)s AND left_at IS NULL;

-- name: room_session_joined
-- A stay that joins a room already ended ends with the room.
INSERT INTO room_sessions (room_id, identity, name, participant_sid, joined_at, left_at)
SELECT r.id, %(identity)s, %(name)s, %(sid)s, to_timestamp(%(joined_at)s),
       CASE WHEN r.ended_at IS NOT NULL
            THEN GREATEST(r.ended_at, to_timestamp(%(joined_at)s)) END
FROM rooms r WHERE r.id = %(room_id)s
ON CONFLICT (room_id, participant_sid) DO NOTHING;

-- name: room_session_left
-- A left may arrive before its joined: the stay is written whole then, and the late
-- joined conflicts. Of two ends (a left, the room finishing) the earlier holds.
INSERT INTO room_sessions (room_id, identity, name, participant_sid, joined_at, left_at)
VALUES (%(room_id)s, %(identity)s, %(name)s, %(sid)s, to_timestamp(%(joined_at)s),
        GREATEST(to_timestamp(%(joined_at)s), to_timestamp(%(at)s)))
ON CONFLICT (room_id, participant_sid) DO UPDATE
SET left_at = LEAST(coalesce(room_sessions.left_at, EXCLUDED.left_at), EXCLUDED.left_at)
WHERE EXCLUDED.left_at >= room_sessions.joined_at;

-- name: room_events_prune
DELETE FROM room_events WHERE received_at < now() - make_interval(secs => %(keep)s);
