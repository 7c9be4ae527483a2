"""The CRDs are generated from the pydantic models, are structural, and agree with the models."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pydantic import ValidationError

from polyvivid.api import CurationJob, PolyVividService, PolyVividTraining, SpecError, load_resource
from polyvivid.api.crds import RESOURCES, all_crds, crd
from polyvivid.api.status import ServiceStatus, TrainingStatus
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


# the one field of each status that holds free-form workload output (a map the schema does not type)
FREE_FORM = {"PolyVividTraining": {".evaluation"}, "CurationJob": set(), "PolyVividService": set()}


@pytest.mark.parametrize("kind", sorted(RESOURCES))
def test_status_schemas_are_typed(kind):
    """The status is the kind's model in polyvivid.api.status, not a map that keeps anything; the printer
    columns read typed fields of it."""
    (version,) = crd(kind)["spec"]["versions"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["type"] == "object" and not status.get("x-kubernetes-preserve-unknown-fields")
    assert {"phase", "observedGeneration", "conditions"} <= set(status["properties"])
    assert "enum" in status["properties"]["phase"]
    assert {path for path, node in _nodes(status) if node.get("x-kubernetes-preserve-unknown-fields")} == FREE_FORM[kind]
    for column in version["additionalPrinterColumns"]:
        if column["jsonPath"].startswith(".status.conditions["):  # a condition's field, by its type
            condition = status["properties"]["conditions"]["items"]
            field = column["jsonPath"].rsplit(".", 1)[1]
            assert condition["properties"][field]["type"] == column["type"], column
            assert '@.type=="Ready"' in column["jsonPath"] and "Ready" in condition["properties"]["type"]["enum"]
        elif column["jsonPath"].startswith(".status."):
            assert status["properties"][column["jsonPath"].split(".")[2]]["type"] == column["type"], column


def test_status_models_refuse_what_their_schema_would_not_keep():
    running = {"phase": "Running", "conditions": [{"type": "Ready", "status": "False", "reason": "JobRunning",
                                                   "message": "training", "lastTransitionTime": "2026-11-24T00:00:00Z"}]}
    assert TrainingStatus.model_validate(running).conditions[0].last_transition_time == "2026-11-24T00:00:00Z"
    for bad in ({**running, "unknown": 1}, {**running, "phase": "Ready"}, {**running, "loss": float("nan")}):
        with pytest.raises(ValidationError):
            TrainingStatus.model_validate(bad)
    with pytest.raises(ValidationError):
        ServiceStatus(phase="Succeeded")  # a training's phase, not a service's


def _validator(kind: str):
    crd = next(c for c in all_crds().values() if c["spec"]["names"]["kind"] == kind)
    return crd_validator(crd, "v1alpha1")


EXAMPLES = [ROOT / "manifests" / "examples" / "demo-training.yaml", ROOT / "manifests" / "examples" / "demo-service.yaml"]
MODELS = {"PolyVividTraining": PolyVividTraining, "CurationJob": CurationJob, "PolyVividService": PolyVividService}
ALL_EXAMPLES = sorted(p for p in (ROOT / "manifests" / "examples").rglob("*.yaml")
                      if yaml.safe_load(p.read_text()).get("kind") in MODELS)


def test_every_example_is_checked():
    assert len(ALL_EXAMPLES) == 10  # demo x2, curation, training, training-720p, service, service-720p, tiny/ x3


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
