"""Alertmanager webhook relay: a firing drift alert triggers the `titanic_training` DAG.

Alertmanager (kube-prometheus-stack) posts its version-4 webhook payload to
`POST /hooks/alertmanager` with a bearer token. The relay acts only on firing alerts named in
`RETRAIN_ALERTS`, lets at most one retraining through per `RETRAIN_COOLDOWN_SECONDS` (a Redis
key, so every replica agrees), triggers the DAG through Airflow 3's REST API and records every
decision in Postgres (`retrain_triggers`). Airflow failures answer 502 so that Alertmanager
retries; the retry reuses the same `dag_run_id`, which makes it idempotent. With Postgres or
Redis unavailable it answers 503 and decides nothing (no claim, no run). The run id carries
the cooldown window, so an alert still firing after the cooldown starts a new run (a failed
retraining is retried) instead of hitting the old run's 409.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg2
import redis
import requests
from flask import Blueprint, current_app, jsonify, request
from prometheus_client import Counter

from pipeline.settings import Settings
from pipeline.store import postgres

logger = logging.getLogger(__name__)

bp = Blueprint("relay", __name__, url_prefix="/hooks")

OUTCOMES = ("triggered", "duplicate", "cooldown", "failed")
RETRAIN_TRIGGERS = Counter(
    "titanic_retrain_triggers_total",
    "Retraining decisions of the Alertmanager relay, by outcome.",
    ["outcome"],
)
for _outcome in OUTCOMES:  # every outcome is exported from the start, so rate() sees the first one
    RETRAIN_TRIGGERS.labels(outcome=_outcome)

# (connect, read) seconds: Alertmanager's own webhook timeout is 10 s by default.
AIRFLOW_TIMEOUT = (3.05, 5)


class BadPayload(ValueError):
    """The request body is not an Alertmanager version-4 webhook payload."""


class AirflowError(RuntimeError):
    """Airflow did not create the DAG run."""


class AirflowOutcomeUnknown(AirflowError):
    """The dagRuns request was sent but no answer came: Airflow may have created the run."""


# Deletes the cooldown key only if it still holds this claim: after a TTL expiry another
# replica may own the key, and a plain DEL would reopen its window.
_RELEASE_CLAIM = """
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Alert:
    """The parts of one Alertmanager alert the relay uses."""

    name: str
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    fingerprint: str


def parse_payload(body: Any) -> tuple[str, list[Alert]]:
    """Validate a webhook payload (version 4); returns its group key and alerts.

    Raises:
        BadPayload: naming the first field that is missing or of the wrong type.
    """
    if not isinstance(body, dict):
        raise BadPayload("body must be a JSON object")
    if body.get("version") != "4":
        raise BadPayload("version must be \"4\"")
    if body.get("status") not in ("firing", "resolved"):
        raise BadPayload("status must be \"firing\" or \"resolved\"")
    group_key = body.get("groupKey")
    if not isinstance(group_key, str):
        raise BadPayload("groupKey must be a string")
    raw_alerts = body.get("alerts")
    if not isinstance(raw_alerts, list) or not raw_alerts:
        raise BadPayload("alerts must be a non-empty list")
    alerts = []
    for i, raw in enumerate(raw_alerts):
        if not isinstance(raw, dict):
            raise BadPayload(f"alerts[{i}] must be an object")
        labels, annotations = raw.get("labels"), raw.get("annotations", {})
        if not isinstance(labels, dict) or not isinstance(labels.get("alertname"), str):
            raise BadPayload(f"alerts[{i}].labels.alertname must be a string")
        if not isinstance(annotations, dict):
            raise BadPayload(f"alerts[{i}].annotations must be an object")
        if raw.get("status") not in ("firing", "resolved"):
            raise BadPayload(f"alerts[{i}].status must be \"firing\" or \"resolved\"")
        starts_at = raw.get("startsAt")
        if not isinstance(starts_at, str):
            raise BadPayload(f"alerts[{i}].startsAt must be a string")
        fingerprint = raw.get("fingerprint")
        if not isinstance(fingerprint, str):
            # Alertmanager always sends one; compute a stable stand-in from the labels.
            fingerprint = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
        alerts.append(
            Alert(
                name=labels["alertname"],
                status=raw["status"],
                labels={str(k): str(v) for k, v in labels.items()},
                annotations={str(k): str(v) for k, v in annotations.items()},
                starts_at=starts_at,
                fingerprint=fingerprint,
            )
        )
    return group_key, alerts


def dag_run_id(alert: Alert, window: int) -> str:
    """Deterministic run id per alert and cooldown window.

    A retried notification in the same window hits Airflow's 409; once the cooldown is over, an
    alert that is still firing gets a new run id, so a failed retraining is tried again.
    """
    digest = hashlib.sha256(f"{alert.fingerprint}|{alert.starts_at}".encode()).hexdigest()[:16]
    return f"alert__{alert.name}__{digest}__w{window}"


def cooldown_window(settings: Settings, now: float | None = None) -> int:
    """Number of the cooldown-long time slot `now` falls in; two claims are a cooldown apart, so never share one."""
    return int(now if now is not None else time.time()) // settings.retrain_cooldown_seconds


def _same_alert(run_a: str, run_b: str) -> bool:
    return run_a.rsplit("__w", 1)[0] == run_b.rsplit("__w", 1)[0]


def cooldown_key(settings: Settings) -> str:
    """Redis key holding the cooldown; one per DAG, shared by every web app replica."""
    return f"{settings.feature_store_prefix}:relay:cooldown:{settings.airflow_dag_id}"


def trigger_dag_run(settings: Settings, run_id: str, conf: dict[str, Any]) -> str:
    """Create a DAG run through Airflow 3's REST API; returns "created" or "exists" (409).

    Raises:
        AirflowOutcomeUnknown: the dagRuns request timed out waiting for the answer.
        AirflowError: Airflow unreachable, credentials refused, or any other answer.
    """
    base = settings.airflow_api_url.rstrip("/")
    try:
        token = requests.post(
            f"{base}/auth/token",
            json={"username": settings.airflow_username, "password": settings.airflow_password},
            timeout=AIRFLOW_TIMEOUT,
        )
        if token.status_code not in (200, 201):
            raise AirflowError(f"POST /auth/token answered {token.status_code}")
        try:
            access_token = token.json()["access_token"]
        except (ValueError, KeyError) as exc:
            raise AirflowError("POST /auth/token answered without an access_token") from exc
    except requests.RequestException as exc:
        raise AirflowError(f"Airflow unreachable: {exc.__class__.__name__}: {exc}") from exc
    try:
        response = requests.post(
            f"{base}/api/v2/dags/{settings.airflow_dag_id}/dagRuns",
            json={
                "dag_run_id": run_id,
                "logical_date": None,
                "conf": conf,
                "note": f"Triggered by alert {conf['alertname']} through the Alertmanager relay",
            },
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=AIRFLOW_TIMEOUT,
        )
    except requests.ReadTimeout as exc:
        # The request was sent: Airflow may have created the run and only its answer is missing.
        raise AirflowOutcomeUnknown(
            f"POST dagRuns got no answer within {AIRFLOW_TIMEOUT[1]}s: the run may exist, cooldown kept"
        ) from exc
    except requests.RequestException as exc:
        raise AirflowError(f"Airflow unreachable: {exc.__class__.__name__}: {exc}") from exc
    if response.status_code == 409:
        return "exists"
    if response.status_code != 200:
        raise AirflowError(f"POST dagRuns answered {response.status_code}: {response.text[:300]}")
    return "created"


def record(conn, settings: Settings, alert: Alert, run_id: str, outcome: str, detail: str, conf: dict) -> None:
    """Append one decision to `retrain_triggers` and count it."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO retrain_triggers (alertname, dag_id, dag_run_id, outcome, detail, conf)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (alert.name, settings.airflow_dag_id, run_id, outcome, detail, json.dumps(conf)),
        )
    RETRAIN_TRIGGERS.labels(outcome=outcome).inc()


@bp.errorhandler(psycopg2.Error)
def _log_unavailable(exc):
    # 503: Alertmanager retries the notification; the connection is opened before anything is claimed or triggered
    logger.error("retraining relay: the decision log (Postgres) is unavailable: %s", exc)
    return jsonify(triggered=False, error="the decision log (Postgres) is unavailable; retry later"), 503


@bp.errorhandler(redis.RedisError)
def _cooldown_unavailable(exc):
    logger.error("retraining relay: the cooldown store (Redis) is unavailable: %s", exc)
    return jsonify(triggered=False, error="the cooldown store (Redis) is unavailable; retry later"), 503


def _settings() -> Settings:
    return current_app.config["SETTINGS"]


def _redis(settings: Settings) -> redis.Redis:
    # One client per app, created lazily; redis-py pools connections inside it.
    client = current_app.extensions.get("relay_redis")
    if client is None:
        # Timeouts: a hung Redis answers Alertmanager with an error instead of holding the worker.
        client = current_app.extensions["relay_redis"] = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_socket_timeout,
            socket_connect_timeout=settings.redis_socket_connect_timeout,
        )
    return client


def _authorized(settings: Settings) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), settings.alert_webhook_token.encode()
    )


@bp.post("/alertmanager")
def alertmanager():
    """Receive one Alertmanager notification and trigger retraining when it asks for it."""
    settings = _settings()
    if not (settings.alert_webhook_token and settings.airflow_api_url):
        return jsonify(error="retraining relay disabled: ALERT_WEBHOOK_TOKEN or AIRFLOW_API_URL unset"), 503
    if not _authorized(settings):
        return jsonify(error="missing or wrong bearer token"), 401
    try:
        group_key, alerts = parse_payload(request.get_json(silent=True))
    except BadPayload as exc:
        return jsonify(error=str(exc)), 400

    wanted = [a for a in alerts if a.status == "firing" and a.name in settings.retrain_alerts]
    if not wanted:
        return jsonify(triggered=False, reason="no firing alert that triggers retraining"), 200
    alert = wanted[0]
    run_id = dag_run_id(alert, cooldown_window(settings))
    conf = {
        "reason": "alert",
        "alertname": alert.name,
        "triggered_by": "alertmanager-relay",
        "group_key": group_key,
        "alerts": [
            {"labels": a.labels, "starts_at": a.starts_at, "summary": a.annotations.get("summary", "")}
            for a in wanted
        ],
    }

    conn = postgres.connect(settings)  # first: a decision that cannot be recorded is not taken
    try:
        return _decide(conn, settings, alert, run_id, conf)
    finally:
        conn.close()


def _decide(conn, settings: Settings, alert: Alert, run_id: str, conf: dict):
    store = _redis(settings)
    key = cooldown_key(settings)
    # SET NX EX: the first replica to claim the window triggers; the others see the key.
    # The claim is "<run id> <unique token>", so that a replica frees only its own claim.
    claim = f"{run_id} {uuid.uuid4().hex}"
    if not store.set(key, claim, nx=True, ex=settings.retrain_cooldown_seconds):
        holder = store.get(key)
        held_run = holder.decode().split(" ", 1)[0] if holder is not None else ""
        if _same_alert(held_run, run_id):
            # Alertmanager retrying the notification that claimed this window (its first answer
            # was lost, or Airflow failed): trigger the held run id again, the 409 makes it idempotent.
            run_id, claim = held_run, holder.decode()
        else:
            ttl = store.ttl(key)
            record(conn, settings, alert, run_id, "cooldown", f"cooldown held by {holder!r}, {ttl}s left", conf)
            return jsonify(triggered=False, reason="cooldown", retry_after_seconds=ttl), 200

    try:
        result = trigger_dag_run(settings, run_id, conf)
    except AirflowError as exc:
        # An unknown outcome keeps the window: the run may exist, and Alertmanager's retry (it retries
        # on 5xx) reuses this run id, answered 409 if it does. Otherwise Airflow created nothing:
        # free the window so the retry can trigger.
        if not isinstance(exc, AirflowOutcomeUnknown):
            store.register_script(_RELEASE_CLAIM)(keys=[key], args=[claim])
        logger.error("retraining trigger for %s failed: %s", alert.name, exc)
        record(conn, settings, alert, run_id, "failed", str(exc), conf)
        return jsonify(triggered=False, error=str(exc), dag_run_id=run_id), 502
    if result == "exists":
        # A retried notification whose run Airflow already has: nothing new was started.
        record(conn, settings, alert, run_id, "duplicate", "dag run already existed", conf)
        return jsonify(triggered=False, reason="duplicate", dag_run_id=run_id), 200
    logger.info("alert %s triggered %s run %s", alert.name, settings.airflow_dag_id, run_id)
    record(conn, settings, alert, run_id, "triggered", "dag run created", conf)
    return jsonify(triggered=True, dag_run_id=run_id), 200
