"""The CRDs are generated from the pydantic models, are structural, and agree with the models."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from polyvivid.api import CurationJob, PolyVividService, PolyVividTraining, SpecError, load_resource
from polyvivid.api.crds import all_crds
from polyvivid.cli import main

from ..openapi import crd_validator

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "manifests" / "crds"


def test_checked_in_crds_match_the_models(tmp_path):
    """Fails when polyvivid/api changes and `polyvivid crds --out manifests/crds` was not re-run."""
    assert main(["crds", "--out", str(tmp_path)]) == 0
    generated = sorted(p.name for p in tmp_path.iterdir())
    assert generated == sorted(p.name for p in CHECKED_IN.glob("*.yaml")), "re-run: polyvivid crds --out manifests/crds"
    for name in generated:
        assert yaml.safe_load((CHECKED_IN / name).read_text()) == yaml.safe_load((tmp_path / name).read_text()), \
            f"{name} drifted: re-run `polyvivid crds --out manifests/crds`"


def _nodes(schema: dict, path: str = ""):
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_schemas_are_structural(name):
    crd = all_crds()[name]
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][0] == "Phase"
    assert version["additionalPrinterColumns"][-1]["name"] == "Age"
    for path, node in _nodes(version["schema"]["openAPIV3Schema"]):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title", "const", "$defs"):
            assert forbidden not in node, (path, forbidden)
        assert node.get("additionalProperties") is not False, path
        assert not isinstance(node.get("exclusiveMinimum"), (int, float)) or isinstance(node["exclusiveMinimum"], bool)


def _validator(kind: str):
    crd = next(c for c in all_crds().values() if c["spec"]["names"]["kind"] == kind)
    return crd_validator(crd, "v1alpha1")


EXAMPLES = [ROOT / "manifests" / "examples" / "demo-training.yaml", ROOT / "manifests" / "examples" / "demo-service.yaml"]
MODELS = {"PolyVividTraining": PolyVividTraining, "CurationJob": CurationJob, "PolyVividService": PolyVividService}
ALL_EXAMPLES = sorted(p for p in (ROOT / "manifests" / "examples").rglob("*.yaml")
                      if yaml.safe_load(p.read_text()).get("kind") in MODELS)


def test_every_example_is_checked():
    assert len(ALL_EXAMPLES) == 8  # demo x2, curation, training, service, tiny/ x3


@pytest.mark.parametrize("path", ALL_EXAMPLES, ids=[str(p.relative_to(ROOT / "manifests" / "examples")) for p in ALL_EXAMPLES])
def test_example_manifests_pass_both_the_crd_schema_and_the_model(path):
    manifest = yaml.safe_load(path.read_text())
    _validator(manifest["kind"]).validate(manifest)
    load_resource(manifest, MODELS[manifest["kind"]])


@pytest.mark.parametrize("field,value", [
    (("limits", "maxSubjects"), 9), (("replicas", "gpusPerReplica"), -1), (("model", "preset"), "huge"),
    (("defaults", "height"), 100), (("limits", "queueLength"), 0),
])
def test_out_of_bounds_values_fail_the_crd_schema_and_the_model_alike(field, value):
    manifest = copy.deepcopy(yaml.safe_load(EXAMPLES[1].read_text()))
    node = manifest["spec"]
    for part in field[:-1]:
        node = node.setdefault(part, {})
    node[field[-1]] = value
    if field == ("model", "preset"):
        manifest["spec"]["model"].pop("uri")
    assert list(_validator("PolyVividService").iter_errors(manifest)), field
    with pytest.raises(SpecError):
        load_resource(manifest, PolyVividService)
