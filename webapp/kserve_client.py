"""HTTP client for the KServe transformer (V1 protocol), registered once on the app."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import requests
from flask import Flask, current_app
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .passenger import FIELDS, FieldError

logger = logging.getLogger(__name__)


class InferenceError(Exception):
    """The model server could not answer; `reason` is the metric label and the user hint."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


class Rejected(Exception):
    """The transformer answered 400: the instances are invalid."""

    def __init__(self, message: str, errors: list[FieldError]):
        self.message, self.errors = message, errors
        super().__init__(message)


@dataclass(frozen=True)
class PredictResult:
    predictions: list[dict[str, Any]]
    model_version: str | None


# "instance 0: Age: must be ..." (pipeline.errors.InvalidInstance) or any message naming a field.
_INSTANCE_FIELD = re.compile(r"instance\s+(\d+)\W+(" + "|".join(FIELDS) + r")\b\W*(.*)", re.IGNORECASE | re.DOTALL)
_ANY_FIELD = re.compile(r"\b(" + "|".join(FIELDS) + r")\b")


def parse_rejection(body: Any) -> list[FieldError]:
    """Field errors out of a transformer 400 body, whatever the exact shape of its message."""
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        out = []
        for item in body["errors"]:
            if isinstance(item, dict) and item.get("field"):
                out.append(FieldError(str(item["field"]), str(item.get("message") or item.get("reason") or "is invalid"),
                                      int(item.get("instance") or item.get("index") or 0)))
        if out:
            return out
    message = body.get("error", "") if isinstance(body, dict) else str(body)
    message = str(message)
    canonical = {f.lower(): f for f in FIELDS}
    errors = []
    for line in message.splitlines() or [message]:
        match = _INSTANCE_FIELD.search(line)
        if match:
            errors.append(FieldError(canonical[match.group(2).lower()], match.group(3).strip() or "is invalid",
                                     int(match.group(1))))
        elif named := _ANY_FIELD.search(line):
            errors.append(FieldError(named.group(1), line.strip()))
    return errors


def _valid_prediction(prediction: Any) -> bool:
    if not isinstance(prediction, dict):
        return False
    survived, probability = prediction.get("survived"), prediction.get("probability")
    return (survived in (0, 1) and not isinstance(probability, bool) and isinstance(probability, (int, float))
            and 0.0 <= probability <= 1.0)


class KServeClient:
    """Calls the transformer over one pooled session: V1 `POST /v1/models/<name>:predict` by
    default, or the Open Inference Protocol (`protocol="v2"`, `POST /v2/models/<name>/infer`).

    Connection errors (nothing was sent) are retried once; read timeouts and HTTP errors
    are not, because the request may already have been processed.
    """

    def __init__(self, base_url: str, model_name: str, *, connect_timeout: float = 1.0,
                 read_timeout: float = 5.0, pool_size: int = 10, protocol: str = "v1"):
        if protocol not in ("v1", "v2"):
            raise ValueError(f"KServe protocol must be v1 or v2, got {protocol!r}")
        self.protocol = protocol
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.timeout = (connect_timeout, read_timeout)
        retry = Retry(total=1, connect=1, read=0, status=0, other=0, redirect=0, backoff_factor=0)
        adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=pool_size)
        self.session = requests.Session()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    @property
    def predict_url(self) -> str:
        if self.protocol == "v2":
            return f"{self.base_url}/v2/models/{self.model_name}/infer"
        return f"{self.base_url}/v1/models/{self.model_name}:predict"

    @property
    def ready_url(self) -> str:
        if self.protocol == "v2":
            return f"{self.base_url}/v2/models/{self.model_name}/ready"
        return f"{self.base_url}/v1/models/{self.model_name}"

    @staticmethod
    def _v2_request(instances: list[dict[str, Any]]) -> dict[str, Any]:
        # One BYTES tensor per raw field; "" is unknown, as in a CSV (the transformer validates text).
        n = len(instances)
        return {"inputs": [
            {"name": f, "shape": [n], "datatype": "BYTES",
             "data": ["" if i.get(f) is None else str(i[f]) for i in instances]}
            for f in FIELDS]}

    @staticmethod
    def _v2_predictions(body: Any) -> list[dict[str, Any]] | None:
        if not isinstance(body, dict) or not isinstance(body.get("outputs"), list):
            return None
        outputs = {o.get("name"): o.get("data") for o in body["outputs"] if isinstance(o, dict)}
        survived, probability = outputs.get("survived"), outputs.get("probability")
        if not isinstance(survived, list) or not isinstance(probability, list) or len(survived) != len(probability):
            return None
        return [{"survived": s, "probability": p} for s, p in zip(survived, probability)]

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            kwargs.setdefault("timeout", self.timeout)
            return self.session.request(method, url, **kwargs)
        except requests.Timeout as exc:
            # ConnectTimeout is both a Timeout and a ConnectionError: it means "unreachable".
            reason = "unreachable" if isinstance(exc, requests.ConnectTimeout) else "timeout"
            raise InferenceError(reason, str(exc)) from exc
        except requests.ConnectionError as exc:
            raise InferenceError("unreachable", str(exc)) from exc

    def predict(self, instances: list[dict[str, Any]]) -> PredictResult:
        """Predict for raw passengers; raises Rejected (400) or InferenceError."""
        payload = self._v2_request(instances) if self.protocol == "v2" else {"instances": instances}
        response = self._send("POST", self.predict_url, json=payload)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code == 400:
            message = body.get("error", response.text) if isinstance(body, dict) else response.text
            raise Rejected(str(message), parse_rejection(body if body is not None else response.text))
        if response.status_code >= 400:
            raise InferenceError("server_error", f"HTTP {response.status_code}: {response.text[:200]}")
        if self.protocol == "v2":
            predictions = self._v2_predictions(body)
        else:
            predictions = body.get("predictions") if isinstance(body, dict) else None
        if not isinstance(predictions, list) or len(predictions) != len(instances):
            raise InferenceError("bad_response", f"unexpected response body: {response.text[:200]}")
        for prediction in predictions:
            if not _valid_prediction(prediction):
                raise InferenceError("bad_response", f"unexpected prediction: {str(prediction)[:200]}")
        version = body.get("model_version")
        return PredictResult(predictions, str(version) if version is not None else None)

    def ready(self) -> tuple[bool, str]:
        """Whether the model answers ready on the V1 readiness endpoint, and why not."""
        try:
            # Short read timeout: probes (readinessProbe timeoutSeconds 3) must get an answer.
            response = self._send("GET", self.ready_url,
                                  timeout=(self.timeout[0], min(self.timeout[1], 2.0)))
        except InferenceError as exc:
            return False, exc.reason
        if response.status_code != 200:
            return False, f"HTTP {response.status_code}"
        try:
            ready = bool(response.json().get("ready"))
        except (ValueError, AttributeError):
            return False, "bad_response"
        return ready, "ready" if ready else "not ready"


def init_app(app: Flask) -> None:
    """Build the client from the app's settings and config, once per process."""
    settings = app.config["SETTINGS"]
    app.extensions["kserve"] = KServeClient(
        settings.kserve_url,
        settings.model_name,
        connect_timeout=float(app.config["KSERVE_CONNECT_TIMEOUT"]),
        read_timeout=float(app.config["KSERVE_READ_TIMEOUT"]),
        pool_size=int(app.config["KSERVE_POOL_SIZE"]),
        protocol=str(app.config["KSERVE_PROTOCOL"]),
    )


def get_client() -> KServeClient:
    return current_app.extensions["kserve"]
