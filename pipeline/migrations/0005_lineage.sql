-- Lineage: where every model version came from, and everything that happened to it since.

-- One row per ingested file: the checksum a model's lineage names (batch_id alone is a prefix of it).
CREATE TABLE IF NOT EXISTS ingest_batches (
    batch_id     text PRIMARY KEY,
    source       text NOT NULL,
    sha256       text NOT NULL,
    rows_loaded  integer NOT NULL,
    rows_rejected integer NOT NULL,
    ingested_at  timestamptz NOT NULL DEFAULT now()
);

-- Written once at training: trigger (manual, scheduled, drift alert with its labels), data batches and
-- checksums, feature-set and code version. '{}' for versions trained before this migration.
ALTER TABLE model_versions ADD COLUMN IF NOT EXISTS lineage jsonb NOT NULL DEFAULT '{}';

-- Every status change of a version, in order: the gate's verdict and reason, promotions and what they replaced.
CREATE TABLE IF NOT EXISTS model_events (
    id          bigserial PRIMARY KEY,
    model_name  text NOT NULL,
    version     text NOT NULL,
    event       text NOT NULL CHECK (event IN ('registered', 'approved', 'rejected', 'promoted', 'archived')),
    detail      text,
    at          timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (model_name, version) REFERENCES model_versions (model_name, version) ON DELETE CASCADE
);

CREATE INDEX IF NOT EXISTS model_events_version ON model_events (model_name, version, id);
