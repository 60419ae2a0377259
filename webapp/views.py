"""HTML pages: the prediction form and the production model's card."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, abort, current_app, render_template, request
from urllib3.exceptions import HTTPError

from . import inference, model_card
from .kserve_client import InferenceError, Rejected
from .passenger import CLASSES, DEFAULTS, FIELDS, PORTS, SEXES, validate_form

logger = logging.getLogger(__name__)

bp = Blueprint("views", __name__)


def _render(values, errors=None, result=None, service_error=None, status=200):
    return render_template(
        "predict.html", values=values, errors=errors or {}, result=result, service_error=service_error,
        sexes=SEXES, classes=CLASSES, ports=PORTS,
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
        result = inference.predict([instance])
    except Rejected as exc:
        by_field = {e.field: e.message for e in exc.errors if e.field in FIELDS}
        if not by_field:
            by_field["_form"] = f"The model server rejected this passenger: {exc.message}"
        return _render(values, by_field, status=400)
    except InferenceError as exc:
        return _render(values, service_error=inference.unavailable_message(exc), status=503)
    prediction = dict(result.predictions[0], model_version=result.model_version)
    return _render(values, result=prediction)


@bp.get("/model")
def model():
    card = model_card.load(current_app.config["SETTINGS"])
    return render_template("model.html", card=card, plots=model_card.PLOTS, headline=model_card.HEADLINE_METRICS,
                           **model_card.provenance(card.metadata))


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
