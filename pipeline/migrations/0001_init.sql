-- Foundation: validated passengers, rejected rows with their reason, and the model registry.

CREATE TABLE IF NOT EXISTS passengers (
    passenger_id integer PRIMARY KEY,
    survived     smallint CHECK (survived IN (0, 1)),
    pclass       smallint NOT NULL CHECK (pclass IN (1, 2, 3)),
    name         text NOT NULL,
    sex          text NOT NULL CHECK (sex IN ('male', 'female')),
    age          double precision CHECK (age >= 0 AND age <= 100),
    sibsp        integer NOT NULL CHECK (sibsp >= 0),
    parch        integer NOT NULL CHECK (parch >= 0),
    ticket       text,
    fare         double precision CHECK (fare >= 0),
    cabin        text,
    embarked     text CHECK (embarked IN ('C', 'Q', 'S')),
    batch_id     text NOT NULL,
    ingested_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS passengers_batch_id ON passengers (batch_id);

-- Nothing is dropped silently: every rejected input row is kept verbatim with its reason.
CREATE TABLE IF NOT EXISTS passengers_rejected (
    batch_id     text NOT NULL,
    line_number  integer NOT NULL,
    raw          text NOT NULL,
    reason       text NOT NULL,
    rejected_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, line_number)
);

CREATE TABLE IF NOT EXISTS model_versions (
    model_name    text NOT NULL,
    version       text NOT NULL,
    status        text NOT NULL CHECK (status IN ('candidate', 'approved', 'rejected', 'production', 'archived')),
    metrics       jsonb NOT NULL DEFAULT '{}',
    params        jsonb NOT NULL DEFAULT '{}',
    artifact_uri  text NOT NULL,
    feature_set   text,
    reason        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, version)
);

-- At most one production version per model.
CREATE UNIQUE INDEX IF NOT EXISTS model_versions_one_production
    ON model_versions (model_name) WHERE status = 'production';
