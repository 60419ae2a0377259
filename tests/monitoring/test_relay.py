"""The web app's Alertmanager relay against real Redis, Postgres and a real Airflow API server."""

from __future__ import annotations

import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
import requests
from prometheus_client import REGISTRY

from pipeline.store import postgres
from tests.monitoring.payloads import alert_payload, auth
from tests.services import free_port
from webapp import relay

URL = "/hooks/alertmanager"

pytestmark = pytest.mark.integration


def triggers(settings) -> list[tuple]:
    """Rows of retrain_triggers in the test's own schema, oldest first."""
    conn = postgres.connect(settings)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT alertname, dag_run_id, outcome, detail, conf FROM retrain_triggers ORDER BY id")
        rows = cur.fetchall()
    conn.close()
    return rows


def counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("titanic_retrain_triggers_total", {"outcome": outcome}) or 0.0


def unreachable_airflow() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


# --- request validation and auth (Airflow is never reached) -----------------------------------


def test_disabled_without_token_or_airflow(relay_app):
    app, _ = relay_app(alert_webhook_token=None, airflow_api_url=unreachable_airflow())
    r = app.test_client().post(URL, json=alert_payload(), headers=auth())
    assert r.status_code == 503
    app, _ = relay_app(airflow_api_url=None)
    assert app.test_client().post(URL, json=alert_payload(), headers=auth()).status_code == 503


@pytest.mark.parametrize(
    "headers",
    [{}, auth("wrong-token"), {"Authorization": "Basic dGVzdC13ZWJob29rLXRva2Vu"}, {"Authorization": "Bearer "}],
    ids=["missing", "wrong", "basic-scheme", "empty"],
)
def test_wrong_token_is_401_and_records_nothing(relay_app, headers):
    app, settings = relay_app(airflow_api_url=unreachable_airflow())
    r = app.test_client().post(URL, json=alert_payload(), headers=headers)
    assert r.status_code == 401
    assert triggers(settings) == []


def _without_alertname():
    body = alert_payload()
    del body["alerts"][0]["labels"]["alertname"]
    return body


@pytest.mark.parametrize(
    "body",
    [
        [1, 2],
        alert_payload(version="3"),
        alert_payload(status="pending"),
        alert_payload(alerts=[]),
        alert_payload(alerts="TitanicFeatureDrift"),
        alert_payload(groupKey=None),
        _without_alertname(),
    ],
    ids=["list", "version-3", "bad-status", "no-alerts", "alerts-not-list", "no-groupkey", "no-alertname"],
)
def test_malformed_payload_is_400(relay_app, body):
    app, settings = relay_app(airflow_api_url=unreachable_airflow())
    r = app.test_client().post(URL, json=body, headers=auth())
    assert r.status_code == 400
    assert r.get_json()["error"]
    assert triggers(settings) == []


def test_body_that_is_not_json_is_400(relay_app):
    app, _ = relay_app(airflow_api_url=unreachable_airflow())
    r = app.test_client().post(URL, data="not json", headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 400


@pytest.mark.parametrize(
    "body",
    [alert_payload(status="resolved", alerts=[{**alert_payload()["alerts"][0], "status": "resolved"}]),
     alert_payload(alertname="TitanicModelServerDown")],
    ids=["resolved", "other-alert"],
)
def test_resolved_or_unlisted_alerts_trigger_nothing(relay_app, body):
    app, settings = relay_app(airflow_api_url=unreachable_airflow())
    r = app.test_client().post(URL, json=body, headers=auth())
    assert r.status_code == 200
    assert r.get_json()["triggered"] is False
    assert triggers(settings) == []
    assert not redis.Redis.from_url(settings.redis_url).exists(relay.cooldown_key(settings))


def test_airflow_unreachable_is_502_recorded_as_failed_and_frees_the_window(relay_app):
    app, settings = relay_app(airflow_api_url=unreachable_airflow())
    before = counted("failed")
    client = app.test_client()
    for _ in range(2):  # Alertmanager retries on 5xx: the retry must try Airflow again, not hit the cooldown
        r = client.post(URL, json=alert_payload(fingerprint="f00d"), headers=auth())
        assert r.status_code == 502
    rows = triggers(settings)
    assert [row[2] for row in rows] == ["failed", "failed"]
    assert "unreachable" in rows[0][3]
    assert rows[0][4]["alertname"] == "TitanicFeatureDrift"
    assert counted("failed") == before + 2
    assert not redis.Redis.from_url(settings.redis_url).exists(relay.cooldown_key(settings))


def test_cooldown_held_by_another_replica_suppresses_the_trigger(relay_app):
    """Another replica claimed the window in Redis: this one must not call Airflow at all."""
    app, settings = relay_app(airflow_api_url=unreachable_airflow(), retrain_cooldown_seconds=600)
    redis.Redis.from_url(settings.redis_url).set(relay.cooldown_key(settings), "alert__other__run", ex=600)
    before = counted("cooldown")
    r = app.test_client().post(URL, json=alert_payload(), headers=auth())
    assert r.status_code == 200  # 502 would mean it called the (unreachable) Airflow
    assert r.get_json()["reason"] == "cooldown"
    assert 0 < r.get_json()["retry_after_seconds"] <= 600
    assert [row[2] for row in triggers(settings)] == ["cooldown"]
    assert counted("cooldown") == before + 1


def test_dag_run_id_is_deterministic_per_alert_and_cooldown_window():
    _, alerts = relay.parse_payload(alert_payload(fingerprint="abc"))
    _, again = relay.parse_payload(alert_payload(fingerprint="abc"))
    _, other = relay.parse_payload(alert_payload(fingerprint="abd"))
    assert relay.dag_run_id(alerts[0], 7) == relay.dag_run_id(again[0], 7) != relay.dag_run_id(other[0], 7)
    # The same alert still firing in a later window is a new run (a failed retraining is retried).
    assert relay.dag_run_id(alerts[0], 8) != relay.dag_run_id(alerts[0], 7)


# --- against the real Airflow API server ----------------------------------------------------


def _runs(airflow) -> dict[str, dict]:
    body = airflow.get(f"/api/v2/dags/{airflow_server_dag()}/dagRuns", limit=100)
    return {run["dag_run_id"]: run for run in body["dag_runs"]}


def airflow_server_dag() -> str:
    from tests.airflow_server import DAG_ID

    return DAG_ID


def _airflow_settings(airflow, **overrides):
    values = dict(airflow_api_url=airflow.url, airflow_username=airflow.username, airflow_password=airflow.password)
    return values | overrides


@contextlib.contextmanager
def airflow_proxy(airflow, on_request=None, hold_dag_runs: threading.Event | None = None):
    """An HTTP proxy in front of the real Airflow API server; yields its URL.

    `on_request(path)` runs before a request is forwarded (what another replica does meanwhile).
    With `hold_dag_runs`, a dagRuns POST is forwarded (Airflow creates the run) but its answer is
    held until the event is set: the relay's read timeout fires although the run exists.
    `proxy.forwarded` is set once Airflow has answered a dagRuns POST.
    """
    forwarded = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self._forward()

        def do_POST(self):
            self._forward()

        def _forward(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if on_request is not None:
                on_request(self.path)
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
            answer = requests.request(self.command, airflow.url + self.path, data=body, headers=headers, timeout=60)
            if self.path.endswith("/dagRuns"):
                forwarded.set()
                if hold_dag_runs is not None:
                    hold_dag_runs.wait(60)
            try:
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)
            except OSError:
                pass  # the relay gave up waiting

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    proxy = type("Proxy", (), {"url": f"http://127.0.0.1:{server.server_port}", "forwarded": forwarded})()
    try:
        yield proxy
    finally:
        if hold_dag_runs is not None:
            hold_dag_runs.set()
        server.shutdown()
        server.server_close()


def test_drift_alert_triggers_one_dag_run_and_the_cooldown_holds(relay_app, airflow):
    app, settings = relay_app(**_airflow_settings(airflow, retrain_cooldown_seconds=600))
    client = app.test_client()
    before = counted("triggered")
    runs_before = _runs(airflow)

    r = client.post(URL, json=alert_payload(feature="Fare"), headers=auth())
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["triggered"] is True
    run_id = r.get_json()["dag_run_id"]

    runs = _runs(airflow)
    assert set(runs) - set(runs_before) == {run_id}
    run = runs[run_id]
    assert run["run_type"] == "manual"
    assert run["state"] == "queued"  # no scheduler here: Airflow accepted it, nothing ran
    assert run["conf"]["reason"] == "alert"
    assert run["conf"]["alertname"] == "TitanicFeatureDrift"
    assert run["conf"]["triggered_by"] == "alertmanager-relay"
    assert run["conf"]["alerts"][0]["labels"]["feature"] == "Fare"
    assert counted("triggered") == before + 1

    # A storm: a second drift alert (another feature) within the cooldown starts nothing.
    r = client.post(URL, json=alert_payload(feature="Pclass"), headers=auth())
    assert r.status_code == 200
    assert r.get_json() | {"retry_after_seconds": 0} == {"triggered": False, "reason": "cooldown", "retry_after_seconds": 0}
    assert set(_runs(airflow)) == set(runs)

    rows = triggers(settings)
    assert [(row[0], row[1], row[2]) for row in rows] == [
        ("TitanicFeatureDrift", run_id, "triggered"),
        ("TitanicFeatureDrift", rows[1][1], "cooldown"),
    ]
    assert rows[0][4]["alerts"][0]["labels"]["feature"] == "Fare"


def test_retried_notification_is_idempotent(relay_app, airflow):
    """Alertmanager re-sends a notification whose answer it lost: Airflow's 409 keeps one run."""
    app, settings = relay_app(**_airflow_settings(airflow, retrain_cooldown_seconds=600))
    client = app.test_client()
    body = alert_payload()
    first = client.post(URL, json=body, headers=auth()).get_json()
    again = client.post(URL, json=body, headers=auth())
    assert again.status_code == 200
    assert again.get_json() == {"triggered": False, "reason": "duplicate", "dag_run_id": first["dag_run_id"]}
    assert [row[2] for row in triggers(settings)] == ["triggered", "duplicate"]
    assert first["dag_run_id"] in _runs(airflow)


def test_after_the_cooldown_a_new_alert_triggers_again(relay_app, airflow):
    app, _ = relay_app(**_airflow_settings(airflow, retrain_cooldown_seconds=1))
    client = app.test_client()
    first = client.post(URL, json=alert_payload(), headers=auth()).get_json()
    time.sleep(1.2)
    second = client.post(URL, json=alert_payload(), headers=auth()).get_json()
    assert first["triggered"] and second["triggered"]
    assert {first["dag_run_id"], second["dag_run_id"]} <= set(_runs(airflow))


def test_wrong_airflow_password_is_502_and_recorded(relay_app, airflow):
    app, settings = relay_app(
        airflow_api_url=airflow.url, airflow_username=airflow.username, airflow_password="not-the-password"
    )
    r = app.test_client().post(URL, json=alert_payload(), headers=auth())
    assert r.status_code == 502
    assert [row[2] for row in triggers(settings)] == ["failed"]
    assert "auth/token" in triggers(settings)[0][3]


def test_unknown_dag_is_502_and_recorded(relay_app, airflow):
    app, settings = relay_app(**_airflow_settings(airflow, airflow_dag_id="no_such_dag"))
    r = app.test_client().post(URL, json=alert_payload(), headers=auth())
    assert r.status_code == 502
    ((alertname, _, outcome, detail, _),) = triggers(settings)
    assert (alertname, outcome) == ("TitanicFeatureDrift", "failed")
    assert "404" in detail


def test_read_timeout_keeps_the_cooldown_and_the_retry_finds_the_run(relay_app, airflow, monkeypatch):
    """A dagRuns POST without an answer is an unknown outcome: the run may exist, the window stays claimed."""
    monkeypatch.setattr(relay, "AIRFLOW_TIMEOUT", (3.05, 1))
    hold = threading.Event()
    body = alert_payload()
    with airflow_proxy(airflow, hold_dag_runs=hold) as proxy:
        app, settings = relay_app(**_airflow_settings(airflow, airflow_api_url=proxy.url, retrain_cooldown_seconds=600))
        client = app.test_client()
        r = client.post(URL, json=body, headers=auth())
        assert r.status_code == 502  # Alertmanager retries
        run_id = r.get_json()["dag_run_id"]
        assert "may exist" in r.get_json()["error"]
        claim = redis.Redis.from_url(settings.redis_url).get(relay.cooldown_key(settings))
        assert claim is not None and claim.decode().split()[0] == run_id
        hold.set()
        assert proxy.forwarded.wait(60)
        assert run_id in _runs(airflow)  # Airflow did create it

        # Another drift alert meanwhile is held back by the kept window.
        r = client.post(URL, json=alert_payload(feature="Pclass"), headers=auth())
        assert r.get_json()["reason"] == "cooldown"
        # Alertmanager's retry of the same notification finds the run instead of starting a second one.
        r = client.post(URL, json=body, headers=auth())
    assert r.status_code == 200
    assert r.get_json() == {"triggered": False, "reason": "duplicate", "dag_run_id": run_id}
    assert [row[2] for row in triggers(settings)] == ["failed", "cooldown", "duplicate"]
    assert [i for i in _runs(airflow) if i.startswith(run_id.rsplit("__w", 1)[0])] == [run_id]


def test_failed_trigger_frees_only_its_own_claim(relay_app, airflow):
    """While this replica waited for Airflow its claim expired and another replica claimed the window."""
    other = b"alert__TitanicFeatureDrift__0123456789abcdef__w1 claim-of-replica-b"
    state = {}

    def meanwhile(path):
        if path == "/auth/token":
            state["store"].set(state["key"], other, ex=600)

    with airflow_proxy(airflow, on_request=meanwhile) as proxy:
        app, settings = relay_app(**_airflow_settings(airflow, airflow_api_url=proxy.url,
                                                      airflow_password="not-the-password"))
        state["store"], state["key"] = redis.Redis.from_url(settings.redis_url), relay.cooldown_key(settings)
        r = app.test_client().post(URL, json=alert_payload(), headers=auth())
    assert r.status_code == 502  # the token was refused: nothing created, this replica frees its claim
    assert state["store"].get(state["key"]) == other  # ... and only its own


def test_alert_still_firing_after_the_cooldown_retries_a_failed_retraining(relay_app, airflow):
    app, settings = relay_app(**_airflow_settings(airflow, retrain_cooldown_seconds=1))
    client = app.test_client()
    body = alert_payload()  # the same alert (fingerprint, startsAt) notified again and again
    first = client.post(URL, json=body, headers=auth()).get_json()
    assert first["triggered"], first
    r = requests.patch(f"{airflow.url}/api/v2/dags/{airflow_server_dag()}/dagRuns/{first['dag_run_id']}",
                       json={"state": "failed"}, headers={"Authorization": f"Bearer {airflow.token()}"}, timeout=30)
    assert r.status_code == 200, r.text
    time.sleep(1.2)  # past the cooldown
    second = client.post(URL, json=body, headers=auth()).get_json()
    assert second["triggered"], second
    assert second["dag_run_id"] != first["dag_run_id"]
    runs = _runs(airflow)
    assert runs[first["dag_run_id"]]["state"] == "failed" and runs[second["dag_run_id"]]["state"] == "queued"
    assert [row[2] for row in triggers(settings)] == ["triggered", "triggered"]
