"""KServe predictor: the one model artefact of a version, evaluated on feature vectors.

Input is the output of `pipeline.features.transform` (the transformer sends it):
- V1 `{"instances": [{feature: value, ...}, ...]}` (or rows as lists in `feature_columns` order);
- V2 one input tensor per feature column (FP32/FP64 for numbers, BYTES for categories).
Output: per instance the survival probability and decision, plus the model version.

`:explain` (V1 body as above) answers per instance `{"probability", "base", "contributions": {feature: c}}`
with base + sum(contributions) == probability: TreeSHAP over the same forest (pipeline.explain).
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import pandas as pd
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from pipeline.explain import Explainer
from pipeline import serving
from pipeline.serving import metrics
from pipeline.serving.artifacts import ModelArtifacts
from pipeline.serving.onnx_export import build_runner, categorical_column, decisions, numeric_column

logger = logging.getLogger(__name__)


class TitanicPredictor(Model):
    """Loads exactly one `model.joblib` and serves it through ONNX Runtime (or sklearn)."""

    def __init__(self, name: str, loader: Callable[[], ModelArtifacts], runtime: str = "onnx"):
        super().__init__(name)
        self._loader, self.runtime = loader, runtime
        self.artifacts: ModelArtifacts | None = None
        self.runner = None
        self.explainer: Explainer | None = None

    def load(self) -> bool:
        """Load and convert the artefact; `ready` only after both succeeded (errors propagate)."""
        artifacts = self._loader()
        self.runner = build_runner(artifacts.pipeline, artifacts.numeric_features, artifacts.categorical_features,
                                   self.runtime)
        self.explainer = Explainer(artifacts.pipeline)  # at load: its first use must not pay shap's import
        self.artifacts = artifacts
        metrics.set_model(artifacts.version, artifacts.accuracy)
        logger.info("predictor ready: model %s version %s on %s", self.name, artifacts.version, self.runner.name)
        self.ready = True
        return self.ready

    @property
    def version(self) -> str:
        return self.artifacts.version

    def _columns_from_instances(self, instances) -> dict[str, np.ndarray]:
        if not isinstance(instances, list) or not instances:
            raise InvalidInput('"instances" must be a non-empty list')
        names = self.artifacts.feature_columns
        if all(isinstance(row, dict) for row in instances):
            for i, row in enumerate(instances):
                missing = [c for c in names if c not in row]
                if missing:
                    raise InvalidInput(f"instance {i}: {serving.missing('feature(s)', missing, self.version)}")
            raw = {c: [row[c] for row in instances] for c in names}
        elif all(isinstance(row, list) and len(row) == len(names) for row in instances):
            raw = {c: [row[j] for row in instances] for j, c in enumerate(names)}
        else:
            raise InvalidInput(f"instances must be objects keyed by feature or lists of {len(names)} values "
                               f"in the order {names}")
        return self._typed(raw)

    def _columns_from_infer_request(self, request: InferRequest) -> dict[str, np.ndarray]:
        given = {i.name: i for i in request.inputs}
        missing = [c for c in self.artifacts.feature_columns if c not in given]
        if missing:
            raise InvalidInput(serving.missing("input tensor(s)", missing, self.version))
        return self._typed({c: given[c].as_numpy().reshape(-1).tolist() for c in self.artifacts.feature_columns})

    def _typed(self, raw: dict[str, list]) -> dict[str, np.ndarray]:
        columns = {}
        for c in self.artifacts.numeric_features:
            try:
                columns[c] = numeric_column(raw[c])
            except (TypeError, ValueError) as exc:
                raise InvalidInput(f"feature {c} must be numeric: {exc}") from exc
        for c in self.artifacts.categorical_features:
            columns[c] = categorical_column(raw[c])
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise InvalidInput("all input tensors must have the same length")
        return columns

    def predict(self, payload, headers=None):
        if isinstance(payload, InferRequest):
            proba = self.runner.predict_proba(self._columns_from_infer_request(payload))
            n = len(proba)
            outputs = [
                InferOutput("probability", [n], "FP64", proba[:, 1].astype(np.float64).tolist()),
                InferOutput("survived", [n], "INT64", decisions(proba).tolist()),
            ]
            # The version also goes into parameters: kserve 0.21's REST client (InferResponse.from_bytes)
            # drops the top-level model_version, which the transformer needs.
            return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs,
                                 model_version=self.version, parameters={"model_version": self.version})
        if not isinstance(payload, dict):
            raise InvalidInput('expected a JSON object with "instances"')
        proba = self.runner.predict_proba(self._columns_from_instances(payload.get("instances")))
        survived = decisions(proba).tolist()
        probability = proba[:, 1].astype(np.float64).tolist()
        return {"predictions": [{"survived": s, "probability": p} for s, p in zip(survived, probability)],
                "model_version": self.version}

    def explain(self, payload, headers=None):
        """V1 `:explain`: exact contributions of each input feature to each instance's survival probability."""
        if not isinstance(payload, dict):
            raise InvalidInput('expected a JSON object with "instances"')
        columns = self._columns_from_instances(payload.get("instances"))
        frame = pd.DataFrame({c: columns[c] for c in self.artifacts.feature_columns})
        return {"explanations": self.explainer.explain(frame), "model_version": self.version}
