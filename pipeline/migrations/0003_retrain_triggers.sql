-- Retraining relay: every decision about an Alertmanager notification is kept, so a trigger
-- that failed (Airflow unreachable) or was suppressed by the cooldown is never lost silently.

CREATE TABLE IF NOT EXISTS retrain_triggers (
    id            bigserial PRIMARY KEY,
    received_at   timestamptz NOT NULL DEFAULT now(),
    alertname     text NOT NULL,
    dag_id        text NOT NULL,
    dag_run_id    text NOT NULL,
    outcome       text NOT NULL CHECK (outcome IN ('triggered', 'duplicate', 'cooldown', 'failed')),
    detail        text,
    conf          jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX IF NOT EXISTS retrain_triggers_received_at ON retrain_triggers (received_at);
