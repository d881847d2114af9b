-- One row naming this database. STORAGE_DIR keeps the same id in a marker file, so
-- the orphan sweep never deletes media because the server was pointed at another
-- database (a restored backup, a fresh one after a reset).
CREATE TABLE instance (
    id     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    single boolean NOT NULL DEFAULT true UNIQUE CHECK (single)
);
INSERT INTO instance DEFAULT VALUES;
