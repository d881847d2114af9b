-- Processing: a video is 'processing' until a job has made its browser-safe
-- file, poster and storyboard, then 'ready', or 'failed' with a reason.
-- Rows from before this migration were served as uploaded and stay 'ready'.
--
-- The jobs themselves live in procrastinate's tables, applied with this
-- migration from the library's own schema (server/core/db.py, PackageSchema):
-- package-schema: procrastinate

ALTER TABLE videos
    ADD COLUMN status text NOT NULL DEFAULT 'ready'
        CHECK (status IN ('processing', 'ready', 'failed')),
    ADD COLUMN failure_reason text,
    ADD COLUMN progress real CHECK (progress BETWEEN 0 AND 1),
    ADD COLUMN width integer,
    ADD COLUMN height integer,
    ADD COLUMN video_codec text,
    ADD COLUMN audio_codec text,
    -- The upload as it came, once storage_key names the processed file.
    ADD COLUMN original_key text UNIQUE,
    ADD COLUMN poster_key text UNIQUE,
    ADD COLUMN storyboard_key text UNIQUE,
    ADD COLUMN storyboard_vtt_key text UNIQUE,
    ADD COLUMN processed_at timestamptz;

-- GET /videos lists ready videos newest first, and an author's own of any status.
CREATE INDEX videos_ready_idx ON videos (id DESC) WHERE status = 'ready';
-- The reconciler looks for videos still processing.
CREATE INDEX videos_processing_idx ON videos (id) WHERE status = 'processing';
