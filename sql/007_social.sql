-- The social layer: profiles, roles and bans, visibility and tags, comments,
-- reactions, subscriptions, blocks, search, reports and the moderation log.

-- Profiles, roles and bans. A ban lasts while banned_until is in the future;
-- 'infinity' is a ban without end.
ALTER TABLE users
    ADD COLUMN bio text NOT NULL DEFAULT '',
    ADD COLUMN avatar_key text UNIQUE,
    ADD COLUMN role text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'moderator', 'admin')),
    ADD COLUMN banned_until timestamptz,
    ADD COLUMN ban_reason text,
    ADD COLUMN subscriber_count bigint NOT NULL DEFAULT 0 CHECK (subscriber_count >= 0);
CREATE INDEX users_banned_idx ON users (id) WHERE banned_until IS NOT NULL;

-- tags arrive normalised (lower case, no '#'); the search document needs them as text,
-- and array_to_string is only STABLE, so it is wrapped for the generated column.
CREATE FUNCTION tubelet_tags_text(tags text[]) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT coalesce(array_to_string(tags, ' '), '') $$;

-- Visibility: public (listed), unlisted (playable by link), private (author only).
-- A removed video stays for its author to see why; nobody can play it.
-- The search document stems with the video's language and also keeps every word
-- unstemmed ('simple'), so a query in another language still finds exact words.
ALTER TABLE videos
    ADD COLUMN visibility text NOT NULL DEFAULT 'public'
        CHECK (visibility IN ('public', 'unlisted', 'private')),
    ADD COLUMN tags text[] NOT NULL DEFAULT '{}',
    ADD COLUMN language regconfig NOT NULL DEFAULT 'english',
    ADD COLUMN like_count bigint NOT NULL DEFAULT 0 CHECK (like_count >= 0),
    ADD COLUMN dislike_count bigint NOT NULL DEFAULT 0 CHECK (dislike_count >= 0),
    ADD COLUMN comment_count bigint NOT NULL DEFAULT 0 CHECK (comment_count >= 0),
    ADD COLUMN removed_at timestamptz,
    ADD COLUMN removed_reason text,
    ADD COLUMN search tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector(language, title), 'A')
        || setweight(to_tsvector('simple', title), 'A')
        || setweight(to_tsvector('simple', tubelet_tags_text(tags)), 'A')
        || setweight(to_tsvector(language, description), 'B')
        || setweight(to_tsvector('simple', description), 'C')
    ) STORED;
CREATE INDEX videos_search_idx ON videos USING gin (search);
CREATE INDEX videos_tags_idx ON videos USING gin (tags);
CREATE INDEX videos_author_id_idx ON videos (author_id, id DESC);

-- Comments, with one level of replies. A comment deleted by its author while it
-- has replies keeps its row as a placeholder (deleted_at set, body emptied).
CREATE TABLE comments (
    id             bigserial PRIMARY KEY,
    video_id       bigint NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    author_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    parent_id      bigint REFERENCES comments (id) ON DELETE CASCADE,
    body           text NOT NULL,
    reply_count    bigint NOT NULL DEFAULT 0 CHECK (reply_count >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    edited_at      timestamptz,
    deleted_at     timestamptz,
    removed_at     timestamptz,
    removed_reason text
);
CREATE INDEX comments_video_idx ON comments (video_id, id DESC) WHERE parent_id IS NULL;
CREATE INDEX comments_parent_idx ON comments (parent_id, id);
CREATE INDEX comments_author_idx ON comments (author_id);

-- One reaction per user per video; the counts on videos change in the same
-- transaction as these rows.
CREATE TABLE reactions (
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    video_id   bigint NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('like', 'dislike')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, video_id)
);
CREATE INDEX reactions_video_idx ON reactions (video_id);

CREATE TABLE subscriptions (
    subscriber_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    channel_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscriber_id, channel_id),
    CHECK (subscriber_id <> channel_id)
);
CREATE INDEX subscriptions_channel_idx ON subscriptions (channel_id);

CREATE TABLE blocks (
    blocker_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    blocked_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (blocker_id, blocked_id),
    CHECK (blocker_id <> blocked_id)
);

-- Reports; one open report per reporter and target.
CREATE TABLE reports (
    id          bigserial PRIMARY KEY,
    reporter_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    target_type text NOT NULL CHECK (target_type IN ('video', 'comment', 'user')),
    target_id   bigint NOT NULL,
    reason      text NOT NULL,
    note        text NOT NULL DEFAULT '',
    status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'dismissed', 'actioned')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    resolved_by bigint REFERENCES users (id) ON DELETE SET NULL
);
CREATE UNIQUE INDEX reports_open_once ON reports (reporter_id, target_type, target_id)
    WHERE status = 'open';
CREATE INDEX reports_queue_idx ON reports (status, id);
CREATE INDEX reports_target_idx ON reports (target_type, target_id);

-- Every moderation and administration action: who, what, when, why.
CREATE TABLE moderation_log (
    id          bigserial PRIMARY KEY,
    actor_id    bigint REFERENCES users (id) ON DELETE SET NULL,
    action      text NOT NULL,
    target_type text NOT NULL,
    target_id   bigint NOT NULL,
    reason      text NOT NULL DEFAULT '',
    details     jsonb NOT NULL DEFAULT '{}',
    at          timestamptz NOT NULL DEFAULT now()
);

-- Changes to users (bans, roles) reach every process through the same change feed
-- as videos: a row names a video or a user.
ALTER TABLE video_changes
    ALTER COLUMN video_id DROP NOT NULL,
    ADD COLUMN user_id bigint,
    ADD CONSTRAINT video_changes_subject CHECK ((video_id IS NULL) <> (user_id IS NULL));

-- The one definition of what others may see. Playable: ready, not removed, author
-- not banned (any visibility; the stream checks a private video's signature).
-- Listed: playable and public, which feeds, search and listings show.
CREATE VIEW playable_videos AS
    SELECT v.*, u.name AS author_name
    FROM videos v JOIN users u ON u.id = v.author_id
    WHERE v.status = 'ready' AND v.removed_at IS NULL
      AND (u.banned_until IS NULL OR u.banned_until <= now());
CREATE VIEW listed_videos AS
    SELECT * FROM playable_videos WHERE visibility = 'public';

-- === Social: comment listings and the trending ranking (server/social) ===
-- Comments others may see: their author is not banned now. Blocks depend on the
-- viewer and are applied by each query.
CREATE VIEW shown_comments AS
    SELECT c.*, u.name AS author_name
    FROM comments c JOIN users u ON u.id = c.author_id
    WHERE u.banned_until IS NULL OR u.banned_until <= now();
CREATE INDEX comments_top_idx ON comments (video_id, reply_count DESC, id DESC)
    WHERE parent_id IS NULL;

-- The trending ranking, recomputed every TRENDING_REFRESH seconds as a new
-- snapshot; a page cursor names its snapshot and rank, so paging is stable while
-- scores change. The newest few snapshots are kept. Ranks name videos without a
-- foreign key: a video gone since drops out when the ranks are joined to listed_videos.
CREATE TABLE trending_snapshots (
    id          bigserial PRIMARY KEY,
    computed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE trending_ranks (
    snapshot_id bigint NOT NULL REFERENCES trending_snapshots (id) ON DELETE CASCADE,
    rank        integer NOT NULL,
    video_id    bigint NOT NULL,
    score       double precision NOT NULL,
    PRIMARY KEY (snapshot_id, rank)
);
-- === end of Social ===
