"""Score step: metrics of a model version on any labelled Kaggle-format CSV (new labelled data arriving later)."""

from __future__ import annotations

import argparse
import logging

import pandas as pd

from pipeline import features, model, registry, schema
from pipeline.errors import ModelNotFound, SchemaError
from pipeline.settings import Settings
from pipeline.steps import ingest
from pipeline.store import postgres

logger = logging.getLogger(__name__)

MAX_REPORTED = 20  # invalid rows listed in the result; the count covers all of them


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", required=True, help="model version, or `production`, or `latest`")
    parser.add_argument("--input", required=True, help="labelled CSV in the Kaggle format: http(s)://, s3://bucket/key or a path")


def resolve(conn, model_name: str, version: str) -> dict:
    """The registry row of a version id or of the aliases `production` / `latest`."""
    if version == "production":
        row = registry.get_production(conn, model_name)
    elif version == "latest":
        row = registry.latest(conn, model_name)
    else:
        return registry.get(conn, model_name, version)
    if row is None:
        raise ModelNotFound(f"model {model_name} has no {version} version")
    return row


def run(settings: Settings, version: str, input: str) -> dict:  # noqa: A002 - the CLI flag is --input
    conn = postgres.connect(settings)
    try:
        row = resolve(conn, settings.model_name, version)
    finally:
        conn.close()
    pipeline = registry.load_model(settings, row)
    meta = model.load_json(settings, row["artifact_uri"])

    header, rows, lines, malformed = ingest.parse(ingest.fetch(input, settings))
    if schema.LABEL not in header:
        raise SchemaError(f"{input} has no {schema.LABEL} column: scoring needs labelled data")
    checked = schema.validate(pd.DataFrame(rows, columns=header))
    invalid = [(lines[pos], reason) for pos, reason in schema.reasons_by_position(checked.rejected).items()]
    valid = checked.valid
    unlabelled = valid[schema.LABEL].isna()
    invalid += [(lines[pos], f"{schema.LABEL}: is required for scoring") for pos in valid.index[unlabelled]]
    invalid += [(line, reason) for line, _, reason in malformed]
    invalid.sort()
    valid = valid[~unlabelled]

    result = {"version": row["version"], "input": input, "rows": len(valid), "rows_invalid": len(invalid),
              "invalid": [{"line": line, "reason": reason} for line, reason in invalid[:MAX_REPORTED]]}
    if valid.empty:
        raise SchemaError(f"{input} has no valid labelled rows to score ({len(invalid)} invalid)")
    X = features.transform(valid)
    if meta.get("group_features"):  # the statistics of the model's own feature set, as the transformer serves them
        from pipeline.steps.features import GroupStatistics

        X = GroupStatistics(settings).add_to(X, meta["feature_set"], features.passenger_groups(valid))
    X = X[meta["feature_columns"]]
    proba = pipeline.predict_proba(X)[:, 1]
    metrics = model.classification_metrics(valid[schema.LABEL].to_numpy(dtype=int), pipeline.predict(X), proba)
    result.update(metrics)
    if invalid:
        logger.warning("%d invalid rows of %s were not scored", len(invalid), input)
    return result
