"""Alertmanager webhook notifications as Alertmanager sends them, for the relay tests."""

from __future__ import annotations

import uuid

TOKEN = "test-webhook-token"


def alert_payload(alertname="TitanicFeatureDrift", status="firing", fingerprint=None, feature="Fare", **extra) -> dict:
    """An Alertmanager webhook notification (version 4) with one alert, as Alertmanager sends it."""
    fingerprint = fingerprint or uuid.uuid4().hex[:16]
    alert = {
        "status": status,
        "labels": {"alertname": alertname, "severity": "warning", "namespace": "mlops", "feature": feature},
        "annotations": {"summary": f"Input drift on feature {feature} (PSI 0.61)", "description": "..."},
        "startsAt": "2026-11-26T10:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://kps-prometheus.monitoring:9090/graph?g0.expr=...",
        "fingerprint": fingerprint,
    }
    body = {
        "version": "4",
        "groupKey": '{}:{alertname="%s"}' % alertname,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "titanic-retrain",
        "groupLabels": {"alertname": alertname},
        "commonLabels": alert["labels"],
        "commonAnnotations": alert["annotations"],
        "externalURL": "http://kps-alertmanager.monitoring:9093",
        "alerts": [alert],
    }
    body.update(extra)
    return body


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
