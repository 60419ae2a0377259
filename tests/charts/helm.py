"""Render the project chart with the pinned helm, and prepare offline schemas for kubeconform."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.inputs import CRD_SCHEMAS, versions  # noqa: F401 - versions: used as helm.versions by other tests

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "titanic"
UPSTREAM_VALUES = REPO / "charts" / "values"
MANIFESTS = REPO / "manifests"
BIN = REPO / "bin"
HELM = BIN / "helm"
KUBECONFORM = BIN / "kubeconform"
KUBE_SCORE = BIN / "kube-score"
BUILD = REPO / "build"
NAMESPACE = "mlops"
RELEASE = "titanic"
SCENARIOS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))


def image_tag() -> str:
    """The project images' tag as the Makefile computes it (the commit, + a hash of uncommitted changes)."""
    return subprocess.run([str(REPO / "hack" / "image-tag.sh")], capture_output=True, text=True, check=True).stdout.strip()


def render_text(*args: str, values: str | None = None) -> str:
    """`helm template` release titanic in namespace mlops at the kind node's Kubernetes version."""
    cmd = [str(HELM), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
           "--kube-version", versions()["KUBE_VERSION"]]
    if values:
        cmd += ["--values", str(CHART / "ci" / values)]
    cmd += list(args)
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def render(*args: str, values: str | None = None) -> list[dict]:
    """The rendered objects (hooks and the helm test pod included)."""
    return [doc for doc in yaml.safe_load_all(render_text(*args, values=values)) if doc]


def k8s_schema_dir() -> Path:
    """Local, self-contained Kubernetes JSON schemas for kubeconform, built once under build/.

    kubernetes-validate (PyPI) ships strict schemas per Kubernetes version, but each file has a
    remote `$id` and `$ref`s to `/api/_definitions.json`, which kubeconform would fetch from the
    internet. Dropping `$id` and pointing the refs at the sibling `_definitions.json` file makes
    every reference resolve on disk.
    """
    import kubernetes_validate

    major_minor = ".".join(versions()["KUBE_VERSION"].split(".")[:2])
    source = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{major_minor}.0-local-strict"
    if not source.is_dir():
        raise FileNotFoundError(f"kubernetes-validate has no schemas for Kubernetes {major_minor}: {source}")
    target = BUILD / "k8s-schemas" / source.name
    marker = target / ".complete"
    if marker.exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for path in source.glob("*.json"):
        schema = json.loads(path.read_text())
        schema.pop("$id", None)
        text = json.dumps(schema).replace('"/api/_definitions.json#', '"_definitions.json#')
        (target / path.name).write_text(text)
    marker.write_text(str(source))
    return target


def _forbid_additional_properties(node):
    """Recursively close every object schema that lists its properties, as openapi2jsonschema --strict does."""
    if isinstance(node, dict):
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        for value in node.values():
            _forbid_additional_properties(value)
    elif isinstance(node, list):
        for value in node:
            _forbid_additional_properties(value)
    return node


def crd_schema_dir() -> Path:
    """Strict copies of the upstream CRD schemas (tests/inputs.py: converted unchanged from upstream).

    kubeconform's -strict closes only the core schemas; the CRD schemas are open, so a misspelt
    InferenceService field would pass. Close them the way the strict core schemas are closed.
    """
    target = BUILD / "crd-schemas-strict"
    marker = target / ".complete"
    if marker.exists():
        return target
    for path in CRD_SCHEMAS.glob("*/*.json"):
        out = target / path.parent.name / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_forbid_additional_properties(json.loads(path.read_text()))))
    marker.write_text(str(CRD_SCHEMAS))
    return target


def kubeconform(manifest: Path) -> subprocess.CompletedProcess:
    """kubeconform -strict against the local Kubernetes schemas and (closed copies of) the upstream CRD schemas only."""
    cmd = [
        str(KUBECONFORM), "-strict", "-summary", "-output", "json",
        "-schema-location", f"{k8s_schema_dir()}/{{{{.ResourceKind}}}}{{{{.KindSuffix}}}}.json",
        "-schema-location", f"{crd_schema_dir()}/{{{{.Group}}}}/{{{{.ResourceKind}}}}_{{{{.ResourceAPIVersion}}}}.json",
        str(manifest),
    ]
    return subprocess.run(cmd, capture_output=True, text=True)


# kube-score checks switched off, each for a stated reason:
KUBE_SCORE_IGNORES = {
    # Images are loaded into the kind node with `kind load`; Always would try (and fail) to pull them.
    "container-image-pull-policy": "images are side-loaded into kind",
    # The project images run as USER 1000 (CONVENTIONS §15); non-root is enforced by runAsNonRoot.
    "container-security-context-user-group-id": "images run as UID/GID 1000 by convention",
    # The model-server NetworkPolicy selects pods the KServe controller creates, which kube-score cannot see;
    # tests/charts asserts that every NetworkPolicy selects the intended pod labels.
    "networkpolicy-targets-pod": "selects KServe-created pods; asserted by test_network_policies_select_the_pods",
}


def kube_score(manifest: Path, *extra_ignores: str) -> subprocess.CompletedProcess:
    """kube-score with the justified ignores above; exit code 1 means a critical finding."""
    cmd = [str(KUBE_SCORE), "score", "--output-format", "ci"]
    for test in [*KUBE_SCORE_IGNORES, *extra_ignores]:
        cmd += ["--ignore-test", test]
    return subprocess.run(cmd + [str(manifest)], capture_output=True, text=True)


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    """(name, pod spec) of every pod the rendered objects create, KServe components included."""
    specs = []
    runtimes = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "ServingRuntime"}
    for o in objects:
        kind, name = o["kind"], o["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            specs.append((f"{kind}/{name}", o["spec"]["template"]["spec"]))
        elif kind == "Pod":
            specs.append((f"Pod/{name}", o["spec"]))
        elif kind == "InferenceService":
            for component in ("predictor", "transformer"):
                if component in o["spec"]:
                    specs.append((f"InferenceService/{name}/{component}", kserve_pod(o["spec"][component], runtimes)))
    return specs


def kserve_pod(component: dict, runtimes: dict) -> dict:
    """A component's pod as KServe builds it: a `model` runs its ServingRuntime's container, with the model's
    own container fields (resources, env) merged over it."""
    if "model" not in component:
        return component
    spec = {k: v for k, v in component.items() if k != "model"}
    model = component["model"]
    (container,) = runtimes[model["runtime"]]["containers"]
    spec["containers"] = [{**container, **{k: model[k] for k in ("resources", "env") if k in model}}]
    return spec


def one(objects: list[dict], kind: str, name: str) -> dict:
    """The single object of this kind and name."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (Ki/Mi/Gi or k/M/G) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if str(quantity).endswith(suffix):
            return int(float(str(quantity)[: -len(suffix)]) * factor)
    return int(quantity)
