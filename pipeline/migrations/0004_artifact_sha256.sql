-- sha256 of every file of a model version folder, recorded at training ({"model.joblib": "<hex>", ...}).
-- The key that reads model folders can also write them: a model artefact is unpickled only if its
-- bytes still have the recorded hash. NULL for versions trained before this migration.

ALTER TABLE model_versions ADD COLUMN IF NOT EXISTS artifact_sha256 jsonb;
