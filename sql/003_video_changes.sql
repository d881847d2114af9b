-- Every change to what a video is (created, deleted, later replaced or edited),
-- written in the same transaction as the change itself. Each process reads the
-- rows past the last it saw, so a change reaches every cache whatever else was
-- down when it happened. Rows are only kept for a while.
CREATE TABLE video_changes (
    seq      bigserial PRIMARY KEY,
    video_id bigint NOT NULL,
    kind     text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX video_changes_at_idx ON video_changes (at);
