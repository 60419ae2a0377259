"""Postgres connections and versioned, idempotent SQL migrations."""

from __future__ import annotations

import logging
from importlib import resources

import psycopg2
import psycopg2.extensions

from pipeline.settings import Settings

logger = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every process migrating this database.
_MIGRATION_LOCK = 7_416_351


def _migration_files() -> list[tuple[str, str]]:
    files = resources.files("pipeline") / "migrations"
    return sorted((f.name.removesuffix(".sql"), f.read_text()) for f in files.iterdir() if f.name.endswith(".sql"))


def migrate(conn: psycopg2.extensions.connection) -> list[str]:
    """Apply every migration not yet recorded in `schema_migrations`; returns those applied.

    Serialised by an advisory lock so concurrent step pods cannot apply one twice.
    """
    applied: list[str] = []
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in cur.fetchall()}
        for version, sql in _migration_files():
            if version in done:
                continue
            logger.info("applying migration %s", version)
            cur.execute(sql)
            cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


def connect(settings: Settings, *, migrated: bool = True) -> psycopg2.extensions.connection:
    """Open a connection; with `migrated` (default) pending migrations are applied first."""
    # Without connect_timeout libpq waits forever on a server that accepts but never answers.
    # No statement_timeout: passing `options` here would replace the DSN's own (the search_path).
    conn = psycopg2.connect(settings.database_url, connect_timeout=settings.postgres_connect_timeout)
    if migrated:
        try:
            migrate(conn)
        except BaseException:
            conn.close()
            raise
    return conn
