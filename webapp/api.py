"""JSON API: predictions for one passenger or a list, and the health endpoints."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from . import inference
from .kserve_client import InferenceError, Rejected, get_client
from .passenger import validate_many

bp = Blueprint("api", __name__)


def _error(status: int, message: str, **extra):
    return jsonify({"error": message, **extra}), status


@bp.post("/api/predict")
def predict():
    """Body: one passenger object, a list of them, or `{"instances": [...]}` (the V1 shape).

    Returns `{"predictions": [{"survived", "probability"}, ...], "model_version"}`.
    """
    return _answer(explain=False)


@bp.post("/api/explain")
def explain():
    """The body of /api/predict. Returns `{"explanations": [{"survived", "probability", "base", "contributions":
    {feature: c}}, ...], "model_version"}` with base + sum(contributions) == probability (TreeSHAP)."""
    return _answer(explain=True)


def _answer(explain: bool):
    body = request.get_json(silent=True)
    if isinstance(body, dict) and "instances" in body:
        body = body["instances"]
    if isinstance(body, dict):
        raw = [body]
    elif isinstance(body, list) and body:
        raw = body
    else:
        return _error(400, "body must be a JSON passenger object or a non-empty list of them")
    limit = current_app.config["MAX_INSTANCES"]
    if len(raw) > limit:
        return _error(413, f"at most {limit} passengers per request", max_instances=limit)
    errors = [{"instance": i, "field": None, "message": "must be a JSON object"}
              for i, item in enumerate(raw) if not isinstance(item, dict)]
    if errors:
        return _error(400, "invalid input", errors=errors)
    instances, field_errors = validate_many(raw)  # one vectorised check of the whole list
    errors = [e.as_dict() for e in field_errors]
    if errors:
        return _error(400, "invalid input", errors=errors)
    try:
        result = inference.predict(instances, explain=explain)
    except Rejected as exc:
        return _error(400, "invalid input", errors=[e.as_dict() for e in exc.errors], detail=exc.message)
    except InferenceError as exc:
        return _error(503, inference.unavailable_message(exc) + " Try again later.", reason=exc.reason)
    return jsonify({"explanations" if explain else "predictions": result.predictions,
                    "model_version": result.model_version})


@bp.get("/healthz")
def healthz():
    """The process serves requests (liveness); says nothing about KServe."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Deep health for monitoring and `helm test`: the transformer answers ready, which it does only while its
    predictor does; `kserve` says which link is missing. Not the pod's readiness probe (that is /healthz):
    pages work without KServe and say so, and the first model comes after install."""
    ready, detail = get_client().ready()
    return jsonify({"ready": ready, "kserve": detail}), 200 if ready else 503
