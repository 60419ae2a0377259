"""Recreate the team's `../shared` test inputs from upstream, for CI runners that lack that folder.

Downloads (internet needed) the pinned Kaggle train.csv copy, checked by sha256, and the upstream
CRDs at the commits named in shared/k8s/crds/README.md, and converts each CRD version's
openAPIV3Schema to JSON in kubeconform's `<group>/<kind>_<version>.json` layout.

    python hack/shared_from_upstream.py ../shared
"""

from __future__ import annotations

import hashlib
import json
import sys
import urllib.request
from pathlib import Path

import yaml

RAW = "https://raw.githubusercontent.com"
CRDS = {
    "serving.kserve.io_inferenceservices.yaml": "kserve/kserve/aaac4e294dae2c7b1aa1886447793f3aa1c30912/config/crd/full",
    "serving.kserve.io_servingruntimes.yaml": "kserve/kserve/aaac4e294dae2c7b1aa1886447793f3aa1c30912/config/crd/full",
    "serving.kserve.io_clusterservingruntimes.yaml": "kserve/kserve/aaac4e294dae2c7b1aa1886447793f3aa1c30912/config/crd/full",
    "monitoring.coreos.com_servicemonitors.yaml": "prometheus-operator/prometheus-operator/v0.93.0/example/prometheus-operator-crd",
    "monitoring.coreos.com_podmonitors.yaml": "prometheus-operator/prometheus-operator/v0.93.0/example/prometheus-operator-crd",
    "monitoring.coreos.com_prometheusrules.yaml": "prometheus-operator/prometheus-operator/v0.93.0/example/prometheus-operator-crd",
    "postgresql.cnpg.io_clusters.yaml": "cloudnative-pg/cloudnative-pg/a95a534dbe0854495b863bbc1b7651f74d310916/config/crd/bases",
}


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def versions_env() -> dict[str, str]:
    lines = (Path(__file__).resolve().parent.parent / "versions.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def main(target: str) -> int:
    shared = Path(target)
    pins = versions_env()
    data = download(pins["DATASET_URL"])
    if hashlib.sha256(data).hexdigest() != pins["DATASET_SHA256"]:
        raise SystemExit(f"dataset checksum mismatch for {pins['DATASET_URL']}")
    (shared / "data" / "titanic").mkdir(parents=True, exist_ok=True)
    (shared / "data" / "titanic" / "train.csv").write_bytes(data)
    for name, where in CRDS.items():
        crd = yaml.safe_load(download(f"{RAW}/{where}/{name}"))
        (shared / "k8s" / "crds").mkdir(parents=True, exist_ok=True)
        (shared / "k8s" / "crds" / name).write_text(yaml.safe_dump(crd))
        for relative, schema in schemas_from_crd(crd).items():
            out = shared / "k8s" / "schemas" / relative
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(schema, indent=1))
    return 0


def schemas_from_crd(crd: dict) -> dict[str, dict]:
    """`<group>/<kind>_<version>.json` -> that version's openAPIV3Schema, unchanged."""
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"].lower()
    return {f"{group}/{kind}_{v['name']}.json": v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "../shared"))
