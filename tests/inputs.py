"""The pinned test inputs, in one place: the dataset, the upstream CRDs (and their JSON schemas), the upstream charts.

Each is read from the team's folder `../shared` when that has it (this machine, CI), else from a cache under
`build/test-inputs/` with the same layout, fetched once from upstream at the versions pinned in versions.env:
the dataset from DATASET_URL (sha256-checked), the CRDs from raw.githubusercontent.com at the commits below
(converted to kubeconform's schema layout), the charts with `make upstream-charts` (helm pull from their chart
repositories). Each input lands complete or not at all (written beside the cache, then renamed).

    python -m tests.inputs                                # fetch what is missing (`make test` runs it first)
    python -m tests.inputs --path data/titanic/train.csv  # where an input is, fetched if needed

A failed fetch is one line on stderr, `error: test inputs: cannot fetch <what>: <why>`, and exit code 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SHARED", REPO.parent / "shared"))
CACHE = REPO / "build" / "test-inputs"

DATASET = "data/titanic/train.csv"
K8S = "k8s"  # crds/<file>.yaml as upstream has them, schemas/<group>/<kind>_<version>.json for kubeconform
CHARTS = "charts"  # <name>/Chart.yaml: every upstream chart of cluster-up, unpacked
INPUTS = (DATASET, K8S, CHARTS)

RAW = "https://raw.githubusercontent.com"
# CRD file -> its upstream folder at a pinned commit (see ../shared/k8s/crds/README.md for why each).
CRDS = {
    "serving.kserve.io_inferenceservices.yaml": "kserve/kserve/aaac4e294dae2c7b1aa1886447793f3aa1c30912/config/crd/full",
    "serving.kserve.io_servingruntimes.yaml": "kserve/kserve/aaac4e294dae2c7b1aa1886447793f3aa1c30912/config/crd/full",
    "serving.kserve.io_clusterservingruntimes.yaml": "kserve/kserve/aaac4e294dae2c7b1aa1886447793f3aa1c30912/config/crd/full",
    "monitoring.coreos.com_servicemonitors.yaml": "prometheus-operator/prometheus-operator/v0.93.0/example/prometheus-operator-crd",
    "monitoring.coreos.com_podmonitors.yaml": "prometheus-operator/prometheus-operator/v0.93.0/example/prometheus-operator-crd",
    "monitoring.coreos.com_prometheusrules.yaml": "prometheus-operator/prometheus-operator/v0.93.0/example/prometheus-operator-crd",
    "postgresql.cnpg.io_clusters.yaml": "cloudnative-pg/cloudnative-pg/a95a534dbe0854495b863bbc1b7651f74d310916/config/crd/bases",
}


class Unavailable(Exception):
    """An input could not be fetched; the message is the one line the user sees."""


def versions() -> dict[str, str]:
    """versions.env as a dict: the one place every version is pinned."""
    pins = {}
    for line in (REPO / "versions.env").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pins[key.strip()] = value.strip()
    return pins


def path(name: str, shared: Path = SHARED, cache: Path = CACHE) -> Path:
    """Where input `name` (one of INPUTS) is read: in ../shared when it is there, else in the cache."""
    return shared / name if (shared / name).exists() else cache / name


TRAIN_CSV = path(DATASET)
TRAIN_SHA256 = versions()["DATASET_SHA256"]
CRD_FILES = path(K8S) / "crds"
CRD_SCHEMAS = path(K8S) / "schemas"
CHARTS_DIR = path(CHARTS)


def ensure(names=INPUTS, *, shared: Path = SHARED, cache: Path = CACHE, dataset_url: str | None = None,
           raw: str = RAW, chart_repo: str | None = None) -> None:
    """Fetch each input of `names` that is neither in `shared` nor in `cache` yet (raises Unavailable).

    `dataset_url`, `raw` and `chart_repo` replace the upstream locations (a mirror; the tests' local server).
    """
    fetchers = {DATASET: lambda out: _fetch_dataset(out, dataset_url or versions()["DATASET_URL"]),
                K8S: lambda out: _fetch_crds(out, raw),
                CHARTS: lambda out: _fetch_charts(out, chart_repo)}
    for name in names:
        if (shared / name).exists() or (cache / name).exists():
            continue
        target = cache / name
        partial = target.with_name(f".{target.name}.partial")  # beside it: the final rename is atomic
        shutil.rmtree(partial, ignore_errors=True)
        partial.unlink(missing_ok=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        try:
            fetchers[name](partial)
            partial.rename(target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
            partial.unlink(missing_ok=True)


def download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except (OSError, ValueError) as exc:  # URLError, HTTPError and timeouts are OSErrors
        raise Unavailable(f"cannot fetch {url}: {getattr(exc, 'reason', None) or exc}") from None


def _fetch_dataset(out: Path, url: str) -> None:
    data = download(url)
    expected = versions()["DATASET_SHA256"]
    if hashlib.sha256(data).hexdigest() != expected:
        raise Unavailable(f"cannot fetch {url}: its sha256 is not DATASET_SHA256 {expected} of versions.env")
    out.write_bytes(data)


def _fetch_crds(out: Path, raw: str) -> None:
    import yaml

    for name, where in CRDS.items():
        text = download(f"{raw}/{where}/{name}")
        (out / "crds").mkdir(parents=True, exist_ok=True)
        (out / "crds" / name).write_bytes(text)  # byte-exact, as upstream has it
        # libyaml's loader: the pure-Python one takes ~10 s for KServe's 2 MB CRD
        crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        for relative, schema in schemas_from_crd(crd).items():
            (out / "schemas" / relative).parent.mkdir(parents=True, exist_ok=True)
            (out / "schemas" / relative).write_text(json.dumps(schema, indent=1))


def schemas_from_crd(crd: dict) -> dict[str, dict]:
    """`<group>/<kind>_<version>.json` -> that version's openAPIV3Schema, unchanged."""
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"].lower()
    return {f"{group}/{kind}_{v['name']}.json": v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}


def _fetch_charts(out: Path, chart_repo: str | None) -> None:
    # make upstream-charts owns where each chart comes from; CHART_MIRROR, when set, replaces all of them
    mirror = [f"CHART_MIRROR={chart_repo}"] if chart_repo else []
    proc = subprocess.run(["make", "-s", "--no-print-directory", "upstream-charts", f"CHARTS_DIR={out}", *mirror],
                          cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr + proc.stdout).splitlines()
        why = next((line for line in lines if line.startswith("Error:")), lines[-1] if lines else "no output")
        raise Unavailable(f"cannot fetch the upstream charts (make upstream-charts): {why}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=INPUTS, help="fetch only this input if missing, and print where it is")
    parser.add_argument("--shared", type=Path, default=SHARED, help="the team's folder (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where fetched inputs go (default: %(default)s)")
    parser.add_argument("--dataset-url", default=None, help="fetch the dataset from here (default: DATASET_URL)")
    parser.add_argument("--raw", default=RAW, help="base URL of the CRD files (default: %(default)s)")
    parser.add_argument("--chart-repo", default=None, help="one Helm repository serving every chart (default: each chart's own)")
    args = parser.parse_args(argv)
    try:
        ensure([args.path] if args.path else INPUTS, shared=args.shared, cache=args.cache,
               dataset_url=args.dataset_url, raw=args.raw, chart_repo=args.chart_repo)
    except Unavailable as exc:
        print(f"error: test inputs: {exc} (fetched once into {args.cache}, unless {args.shared} has it)", file=sys.stderr)
        return 1
    if args.path:
        print(path(args.path, args.shared, args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
