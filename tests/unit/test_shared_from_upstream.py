"""The CI helper that rebuilds ../shared from upstream converts CRDs exactly as the team's copy does."""

import json

import yaml

from hack.shared_from_upstream import CRDS, schemas_from_crd
from tests.conftest import SHARED


def test_conversion_reproduces_the_shared_schemas():
    produced = {}
    for name in CRDS:
        produced.update(schemas_from_crd(yaml.safe_load((SHARED / "k8s" / "crds" / name).read_text())))
    shared = {str(p.relative_to(SHARED / "k8s" / "schemas")): p for p in (SHARED / "k8s" / "schemas").rglob("*.json")}
    assert set(produced) == set(shared)
    for relative, schema in produced.items():
        assert schema == json.loads(shared[relative].read_text()), relative
