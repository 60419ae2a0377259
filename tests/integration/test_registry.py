"""Model registry: status transitions of `promote` under concurrent deploys (real Postgres)."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline import registry
from pipeline.store import postgres

pytestmark = pytest.mark.integration


@pytest.fixture
def registered(settings):
    """v1..v3 registered; a trigger makes the promote of v2 sleep 1 s inside its transaction."""
    conn = postgres.connect(settings)
    for version in ("v1", "v2", "v3"):
        registry.register(conn, settings.model_name, version, artifact_uri=f"s3://m/{version}", metrics={},
                          params={}, feature_set="fs1")
        registry.set_status(conn, settings.model_name, version, "approved")
    with conn, conn.cursor() as cur:
        cur.execute("CREATE FUNCTION slow_promote() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "PERFORM pg_sleep(1); RETURN NEW; END $$")
        cur.execute("CREATE TRIGGER slow_promote AFTER UPDATE ON model_versions FOR EACH ROW "
                    "WHEN (NEW.version = 'v2' AND NEW.status = 'production') EXECUTE FUNCTION slow_promote()")
    yield conn
    conn.close()


def _promote_concurrently(settings, first: str, second: str) -> dict:
    """Promote `first` (slow, see the fixture), and `second` while `first`'s transaction is still open."""
    out: dict = {}

    def promote(version: str) -> None:
        conn = postgres.connect(settings, migrated=False)
        try:
            out[version] = registry.promote(conn, settings.model_name, version)
        except Exception as exc:
            out[version] = exc
        finally:
            conn.close()

    slow = threading.Thread(target=promote, args=(first,))
    slow.start()
    time.sleep(0.3)
    promote(second)
    slow.join()
    return out


def _statuses(conn, settings) -> dict[str, str]:
    return {r["version"]: r["status"] for r in registry.list_versions(conn, settings.model_name)}


def test_concurrent_first_promotes_both_succeed_in_turn(settings, registered):
    out = _promote_concurrently(settings, "v2", "v3")
    assert out == {"v2": None, "v3": "v2"}  # no IntegrityError from the one-production index
    assert _statuses(registered, settings) == {"v1": "approved", "v2": "archived", "v3": "production"}


def test_concurrent_promote_reports_the_version_it_replaced(settings, registered):
    registry.promote(registered, settings.model_name, "v1")
    out = _promote_concurrently(settings, "v2", "v3")
    assert out == {"v2": "v1", "v3": "v2"}
    assert _statuses(registered, settings) == {"v1": "archived", "v2": "archived", "v3": "production"}


def test_promote_refuses_a_version_rejected_while_it_waited_for_the_lock(settings, registered):
    """A verdict committed while promote waits for the row locks is the one promote acts on."""
    verdict = postgres.connect(settings, migrated=False)
    cur = verdict.cursor()
    cur.execute("UPDATE model_versions SET status = 'rejected' WHERE model_name = %s AND version = 'v3'",
                (settings.model_name,))  # holds v3's row lock, not committed yet
    out: dict = {}

    def promote() -> None:
        conn = postgres.connect(settings, migrated=False)
        try:
            out["previous"] = registry.promote(conn, settings.model_name, "v3")
        except Exception as exc:
            out["error"] = exc
        finally:
            conn.close()

    waiting = threading.Thread(target=promote)
    waiting.start()
    time.sleep(0.5)
    assert waiting.is_alive() and not out  # blocked on the lock: it read nothing yet
    verdict.commit()
    verdict.close()
    waiting.join(10)
    assert isinstance(out.get("error"), registry.NotApproved), out
    assert "version v3 is rejected, no longer approved: not promoted" in str(out["error"])
    assert _statuses(registered, settings) == {"v1": "approved", "v2": "approved", "v3": "rejected"}
    registry.register(registered, settings.model_name, "v4", artifact_uri="s3://m/v4", metrics={}, params={},
                      feature_set="fs1")
    with pytest.raises(registry.NotApproved, match="is candidate"):  # never approved: refused as well
        registry.promote(registered, settings.model_name, "v4")
