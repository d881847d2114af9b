-- Live rooms: video calls on LiveKit. The media never passes through Tubelet; these
-- tables keep what the API shows and what happened (who was in a room, when, how long).

CREATE TABLE rooms (
    id bigserial PRIMARY KEY,
    name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    owner_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The room's name in LiveKit, which its tokens and webhooks carry.
    livekit_room text NOT NULL UNIQUE,
    max_participants integer CHECK (max_participants BETWEEN 1 AND 1000),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'ended')),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Set by the first room_started webhook; a room may also start before anyone joins.
    started_at timestamptz,
    ended_at timestamptz
);
CREATE INDEX rooms_active_idx ON rooms (id DESC) WHERE status = 'active';

-- One row per stay of a participant in a room (joined, then left or aborted).
-- LiveKit may send a webhook twice: its event id is unique here.
CREATE TABLE room_sessions (
    id bigserial PRIMARY KEY,
    room_id bigint NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    identity text NOT NULL,
    name text NOT NULL DEFAULT '',
    participant_sid text NOT NULL,
    joined_at timestamptz NOT NULL,
    left_at timestamptz,
    UNIQUE (room_id, participant_sid)
);
CREATE INDEX room_sessions_room_idx ON room_sessions (room_id, joined_at);

-- Webhook events already applied, so a redelivery changes nothing.
CREATE TABLE room_events (
    event_id text PRIMARY KEY,
    room_id bigint REFERENCES rooms (id) ON DELETE CASCADE,
    kind text NOT NULL,
    created_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX room_events_received_idx ON room_events (received_at);

-- Chat messages: plain text, kept with the room.
CREATE TABLE room_messages (
    id bigserial PRIMARY KEY,
    room_id bigint NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id bigint REFERENCES users (id) ON DELETE SET NULL,
    identity text NOT NULL,
    name text NOT NULL,
    body text NOT NULL CHECK (char_length(body) BETWEEN 1 AND 2000),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX room_messages_room_idx ON room_messages (room_id, id DESC);
