"""One prediction round trip shared by the HTML page and the JSON API: call KServe, count it."""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import g

from . import metrics
from .kserve_client import InferenceError, PredictResult, Rejected, get_client

logger = logging.getLogger(__name__)

# What a user reads when the model server cannot answer (never the exception text).
UNAVAILABLE_MESSAGES = {
    "unreachable": "The prediction service cannot be reached.",
    "timeout": "The prediction service did not answer in time.",
    "server_error": "The prediction service failed to answer.",
    "bad_response": "The prediction service gave an answer this app cannot read.",
}


def predict(instances: list[dict[str, Any]], explain: bool = False) -> PredictResult:
    """Predict validated instances (with `explain`, through KServe's `:explain`, which also answers the
    prediction); counts outcomes and errors, re-raises Rejected/InferenceError."""
    started = time.perf_counter()
    try:
        client = get_client()
        result = client.explain(instances) if explain else client.predict(instances)
    except Rejected as exc:
        metrics.count_error("rejected")
        logger.info("transformer rejected %d instance(s): %s", len(instances), exc.message)
        raise
    except InferenceError as exc:
        metrics.count_error(exc.reason)
        logger.warning("prediction failed (%s): %s", exc.reason, exc.detail)
        raise
    finally:
        g.kserve_seconds = time.perf_counter() - started
    metrics.count_predictions(result.predictions)
    return result


def unavailable_message(exc: InferenceError) -> str:
    return UNAVAILABLE_MESSAGES.get(exc.reason, UNAVAILABLE_MESSAGES["server_error"])
