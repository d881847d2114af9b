-- Batches of counted views applied to videos.views, one row per batch.
-- The primary key makes applying a batch idempotent: a batch that was applied
-- but not yet removed from Redis (a crash mid-flush) is not added again.
CREATE TABLE view_batches (
    id         uuid PRIMARY KEY,
    views      bigint NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX view_batches_applied_at_idx ON view_batches (applied_at);
