-- A live room's chat: its messages (the room itself is rooms.sql's room_by_id).

-- name: chat_insert_message
-- Only into a room still active, in one statement: a post racing the room's end
-- is refused, never stored. An account deleted since its token was issued leaves
-- the message without a user, as deleting it later would.
INSERT INTO room_messages (room_id, user_id, identity, name, body)
SELECT r.id, (SELECT u.id FROM users u WHERE u.id = %(user_id)s::bigint),
       %(identity)s, %(name)s, %(body)s
FROM rooms r
WHERE r.id = %(room_id)s AND r.status = 'active'
RETURNING id, room_id, identity, name, body, created_at;

-- name: chat_messages
-- Newest first, older than `before` when given; room_messages_room_idx serves it.
SELECT id, room_id, identity, name, body, created_at FROM room_messages
WHERE room_id = %(room_id)s AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
ORDER BY id DESC
LIMIT %(limit)s;
