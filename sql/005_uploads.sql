-- Resumable (tus) uploads: one row per upload, its bytes in STORAGE_DIR/tus/<id>.
--
-- `received` is the durable offset: it is written only after the bytes up to it
-- were fsynced, so it never exceeds what the file holds; bytes past it (a writer
-- that crashed before recording them) are cut off when the upload resumes.
-- `lock_token`/`locked_until` are the lease a PATCH holds while it writes, taken and
-- renewed in short transactions so no connection is held across a request body.
-- `storage_key` is the name the finished file is given as a video, recorded before
-- the video is created so a finish cut short can find the video it made.
CREATE TABLE uploads (
    id           text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{32}$'),
    owner_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    length       bigint NOT NULL CHECK (length > 0),
    received     bigint NOT NULL DEFAULT 0,
    metadata     text NOT NULL DEFAULT '',
    title        text NOT NULL,
    description  text NOT NULL DEFAULT '',
    filename     text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    lock_token   uuid,
    locked_until timestamptz,
    storage_key  text,
    -- Set once the upload became a video; the record then only answers HEAD.
    video_id     bigint REFERENCES videos (id) ON DELETE CASCADE,
    finished_at  timestamptz,
    CHECK (received BETWEEN 0 AND length)
);
CREATE INDEX uploads_owner_idx ON uploads (owner_id);
CREATE INDEX uploads_expires_at_idx ON uploads (expires_at);
CREATE INDEX uploads_video_idx ON uploads (video_id);
