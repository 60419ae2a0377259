"""Passenger streams for the drift tests: real training rows, and the same rows shifted.

Used by the tests and by `make drift-demo` (`python -m tests.monitoring.drift --url ...`), which
sends the shifted stream through the ingress of a running cluster.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd
import requests

from tests.inputs import TRAIN_CSV  # Kaggle's train.csv, the test dataset; `make drift-demo` passes --csv

FIELDS = ["Name", "Sex", "Age", "Pclass", "SibSp", "Parch", "Fare", "Embarked", "Cabin"]


def _rows(frame: pd.DataFrame) -> list[dict]:
    rows = []
    for record in frame[FIELDS].to_dict("records"):
        rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()})
    for row in rows:
        for key in ("Pclass", "SibSp", "Parch"):
            row[key] = int(row[key])
        row["Cabin"] = row["Cabin"] or ""
    return rows


def in_distribution_rows(n: int | None = None, seed: int = 7, csv: Path = TRAIN_CSV) -> list[dict]:
    """Passengers of the training data itself, in random order (what the model expects)."""
    frame = pd.read_csv(csv).dropna(subset=["Embarked"])
    frame = frame.sample(frac=1.0, random_state=seed)
    return _rows(frame.head(n) if n else frame)


def shifted_rows(n: int | None = None, seed: int = 11, csv: Path = TRAIN_CSV) -> list[dict]:
    """The same passengers, all travelling first class and paying ten times the fare."""
    rows = in_distribution_rows(n, seed, csv)
    for row in rows:
        row["Pclass"] = 1
        row["Fare"] = round(float(row["Fare"]) * 10, 4)
    return rows


def predict_url(base: str, model: str = "titanic") -> str:
    return f"{base.rstrip('/')}/v1/models/{model}:predict"


def replay(url: str, rows: list[dict], batch: int = 20, timeout: float = 30.0, headers: dict | None = None) -> int:
    """POST `rows` in batches to a V1 predict URL; returns how many were predicted."""
    done = 0
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        response = requests.post(url, json={"instances": chunk}, timeout=timeout, headers=headers or {})
        response.raise_for_status()
        done += len(response.json()["predictions"])
    return done


def print_psi(query_response) -> None:
    """Print `max by (feature) (titanic_feature_drift_psi)` from a Prometheus query API answer."""
    for result in json.load(query_response)["data"]["result"]:
        print(f"  {result['metric'].get('feature', '?'):>14}  {float(result['value'][1]):.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send passengers to the model server (drift demo).")
    parser.add_argument("--url", required=True,
                        help="prediction URL taking {\"instances\": [...]}: the web app's /api/predict or a V1 :predict")
    parser.add_argument("--csv", type=Path, default=TRAIN_CSV, help="Kaggle train.csv to draw passengers from")
    parser.add_argument("--stream", choices=["shifted", "normal"], default="shifted", help="which passengers to send")
    parser.add_argument("--rounds", type=int, default=3, help="how many times to replay the stream")
    parser.add_argument("--host", default=None, help="Host header, when --url names the ingress by IP")
    args = parser.parse_args(argv)
    rows = shifted_rows(csv=args.csv) if args.stream == "shifted" else in_distribution_rows(csv=args.csv)
    headers = {"Host": args.host} if args.host else None
    total = sum(replay(args.url, rows, headers=headers) for _ in range(args.rounds))
    json.dump({"stream": args.stream, "predicted": total}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
