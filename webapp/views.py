"""HTML pages: the prediction form and the production model's card."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, abort, current_app, render_template, request
from urllib3.exceptions import HTTPError

from pipeline.errors import ModelNotFound

from . import explanation, inference, model_card
from .kserve_client import InferenceError, Rejected
from .passenger import CLASSES, DEFAULTS, FIELDS, PORTS, SEXES, validate_form

logger = logging.getLogger(__name__)

bp = Blueprint("views", __name__)


def _render(values, errors=None, result=None, service_error=None, status=200, factors=()):
    return render_template(
        "predict.html", values=values, errors=errors or {}, result=result, service_error=service_error,
        sexes=SEXES, classes=CLASSES, ports=PORTS, factors=factors,
    ), status


@bp.route("/", methods=["GET", "POST"])
def predict():
    if request.method == "GET":
        return _render({k: ("" if v is None else v) for k, v in DEFAULTS.items()})
    values = {field: request.form.get(field, "") for field in FIELDS}
    instance, errors = validate_form(request.form)
    if errors:
        return _render(values, {e.field: e.message for e in errors}, status=400)
    try:
        try:  # one call answers the prediction and why
            result = inference.predict([instance], explain=True)
        except InferenceError as exc:
            if exc.reason not in ("server_error", "bad_response"):
                raise
            # a model server without :explain (e.g. mid-upgrade) still gives the prediction
            logger.warning("explanation unavailable (%s): predicting without it", exc.detail)
            result = inference.predict([instance])
    except Rejected as exc:
        by_field = {e.field: e.message for e in exc.errors if e.field in FIELDS}
        if not by_field:
            by_field["_form"] = f"The model server rejected this passenger: {exc.message}"
        return _render(values, by_field, status=400)
    except InferenceError as exc:
        return _render(values, service_error=inference.unavailable_message(exc), status=503)
    prediction = dict(result.predictions[0], model_version=result.model_version)
    shown = explanation.factors(instance, prediction) if "contributions" in prediction else ()
    return _render(values, result=prediction, factors=shown)


@bp.get("/model")
def model():
    card = model_card.load(current_app.config["SETTINGS"])
    return render_template("model.html", card=card, plots=model_card.PLOTS, headline=model_card.HEADLINE_METRICS,
                           **model_card.provenance(card.metadata))


@bp.get("/model/versions")
def versions():
    """Lineage of one version (?v=X), or two side by side (?v=X&v=Y): all from the registry and S3."""
    wanted = list(dict.fromkeys(request.args.getlist("v")))
    if not 1 <= len(wanted) <= 2 or not all(model_card.valid_version(v) for v in wanted):
        abort(400, description="Choose one version to see its lineage, or two to compare them (?v=...&v=...).")
    try:
        columns, problems = model_card.load_lineage(current_app.config["SETTINGS"], wanted)
    except ModelNotFound as exc:
        abort(404, description=str(exc))
    params = sorted({k for c in columns for k in c.row["params"]})
    return render_template("versions.html", columns=columns, problems=problems, params=params,
                           headline=model_card.HEADLINE_METRICS)


@bp.get("/model/<version>/plots/<name>.png")
def plot(version: str, name: str):
    if name not in model_card.PLOTS:
        abort(404)
    try:
        data = model_card.plot(current_app.config["SETTINGS"], version, name)
    except HTTPError as exc:
        logger.warning("plot %s/%s unavailable: %s", version, name, exc)
        abort(503)
    if data is None:
        abort(404)
    response = Response(data, mimetype="image/png")
    # A version's folder is written once and never changed, so browsers may keep its plots.
    response.headers["Cache-Control"] = "public, max-age=86400, immutable"
    return response
