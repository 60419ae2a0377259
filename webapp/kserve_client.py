"""HTTP client for the KServe transformer (V1 protocol), registered once on the app."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import urllib3
from flask import Flask, current_app
from urllib3.exceptions import HTTPError, MaxRetryError, ReadTimeoutError
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


def _as_prediction(explanation: Any) -> Any:
    """An explanation with the predictor's decision added (survived only when the probability is strictly above
    0.5); anything that is not an explanation is returned as it is, for `_valid_prediction` to refuse."""
    if not (isinstance(explanation, dict) and isinstance(explanation.get("contributions"), dict)
            and isinstance(explanation.get("base"), (int, float)) and isinstance(explanation.get("probability"), (int, float))):
        return explanation
    return {"survived": int(explanation["probability"] > 0.5), **explanation}


def _valid_prediction(prediction: Any) -> bool:
    if not isinstance(prediction, dict):
        return False
    survived, probability = prediction.get("survived"), prediction.get("probability")
    return (survived in (0, 1) and not isinstance(probability, bool) and isinstance(probability, (int, float))
            and 0.0 <= probability <= 1.0)


class _Response:
    """Status and body of one answer, read in full (the connection goes back to the pool)."""

    def __init__(self, status: int, data: bytes):
        self.status_code, self.text = status, data.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.text)


class KServeClient:
    """Calls the transformer over one keep-alive connection pool: V1 `POST /v1/models/<name>:predict`
    by default, or the Open Inference Protocol (`protocol="v2"`, `POST /v2/models/<name>/infer`).

    Connection errors (nothing was sent) are retried once; read timeouts and HTTP errors
    are not, because the request may already have been processed. urllib3 directly, not
    requests: a requests Session looked up ~/.netrc and the proxy environment on every call
    (0.5 ms of the web hop's 1.5 ms of own CPU, profiled in bench/probe.py).
    """

    def __init__(self, base_url: str, model_name: str, *, connect_timeout: float = 1.0,
                 read_timeout: float = 5.0, pool_size: int = 40, protocol: str = "v1"):
        if protocol not in ("v1", "v2"):
            raise ValueError(f"KServe protocol must be v1 or v2, got {protocol!r}")
        self.protocol = protocol
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.timeout = (connect_timeout, read_timeout)
        self.retries = Retry(total=1, connect=1, read=0, status=0, other=0, redirect=0, backoff_factor=0,
                             raise_on_status=False)
        self.pool = urllib3.connection_from_url(self.base_url, maxsize=pool_size)

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

    def _send(self, method: str, url: str, body: Any = None, timeout: tuple[float, float] | None = None) -> _Response:
        connect, read = timeout or self.timeout
        try:
            response = self.pool.urlopen(
                method, url, body=None if body is None else json.dumps(body).encode(),
                headers={"Content-Type": "application/json"} if body is not None else None,
                timeout=urllib3.Timeout(connect=connect, read=read), retries=self.retries, redirect=False)
        except (MaxRetryError, HTTPError) as exc:
            # A read timeout means "timeout"; failing to connect (also by timeout) or a dropped
            # connection means "unreachable". A POST's read error is re-raised, not wrapped.
            cause = exc.reason if isinstance(exc, MaxRetryError) else exc
            reason = "timeout" if isinstance(cause, ReadTimeoutError) else "unreachable"
            raise InferenceError(reason, str(exc)) from exc
        return _Response(response.status, response.data)

    def _post(self, url: str, payload: Any) -> tuple[Any, _Response]:
        """(JSON body or None, response) of a 2xx answer; Rejected for a 400, InferenceError for the rest."""
        response = self._send("POST", url, payload)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code == 400:
            message = body.get("error", response.text) if isinstance(body, dict) else response.text
            raise Rejected(str(message), parse_rejection(body if body is not None else response.text))
        if response.status_code >= 400:
            raise InferenceError("server_error", f"HTTP {response.status_code}: {response.text[:200]}")
        return body, response

    def explain(self, instances: list[dict[str, Any]]) -> PredictResult:
        """V1 `:explain` (KServe has no V2 verb for it): per passenger its prediction plus `base` and the
        `contributions` of each input feature (base + sum == probability); raises like `predict`."""
        body, response = self._post(f"{self.base_url}/v1/models/{self.model_name}:explain", {"instances": instances})
        explanations = body.get("explanations") if isinstance(body, dict) else None
        predictions = [_as_prediction(e) for e in explanations] if isinstance(explanations, list) else None
        return self._result(body, response, predictions, len(instances))

    def predict(self, instances: list[dict[str, Any]]) -> PredictResult:
        """Predict for raw passengers; raises Rejected (400) or InferenceError."""
        payload = self._v2_request(instances) if self.protocol == "v2" else {"instances": instances}
        body, response = self._post(self.predict_url, payload)
        if self.protocol == "v2":
            predictions = self._v2_predictions(body)
        else:
            predictions = body.get("predictions") if isinstance(body, dict) else None
        return self._result(body, response, predictions, len(instances))

    @staticmethod
    def _result(body: Any, response: _Response, predictions: Any, n: int) -> PredictResult:
        """One valid prediction per instance, and the model version; InferenceError("bad_response") otherwise."""
        if not isinstance(predictions, list) or len(predictions) != n:
            raise InferenceError("bad_response", f"unexpected response body: {response.text[:200]}")
        for prediction in predictions:
            if not _valid_prediction(prediction):
                raise InferenceError("bad_response", f"unexpected prediction: {str(prediction)[:200]}")
        version = body.get("model_version")
        return PredictResult(predictions, str(version) if version is not None else None)

    def ready(self) -> tuple[bool, str]:
        """Whether the whole chain answers ready on the transformer's model readiness endpoint, and why not."""
        try:
            # Short read timeout: probes (readinessProbe timeoutSeconds 3) must get an answer.
            response = self._send("GET", self.ready_url, timeout=(self.timeout[0], min(self.timeout[1], 2.0)))
        except InferenceError as exc:
            return False, exc.reason
        if response.status_code == 503:  # the transformer answers, but its model is ready only while its predictor is
            return False, "predictor not ready"
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
