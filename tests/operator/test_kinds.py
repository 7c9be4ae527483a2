"""One descriptor per kind (polyvivid_operator.kinds), used by the handlers and `polyvivid render`
alike: it covers exactly the CRDs' kinds, takes their plurals and models from polyvivid.api.crds (the
operator spells no plural again), and its dependencies resolve in render to what the operator resolves
once the named resource succeeded."""

from __future__ import annotations

import re

import pytest

from polyvivid.api.crds import RESOURCES, crd
from polyvivid.api.status import TrainingProgress
from polyvivid_operator.handlers.common import RECONCILERS, workload_output
from polyvivid_operator.kinds import KINDS, Output, dependents
from polyvivid_operator.kube import PLURALS
from polyvivid_operator.render import render

from ..openapi import ROOT
from .test_curation_and_service_reconcile import curation_manifest, service_manifest
from .test_training_reconcile import training_manifest


def test_the_descriptors_are_the_crds_kinds():
    assert set(KINDS) == set(RESOURCES) == set(RECONCILERS)  # every kind has its handlers, through its descriptor
    for kind, descriptor in KINDS.items():
        resource = RESOURCES[kind]
        assert descriptor.kind == kind
        assert (descriptor.plural, descriptor.model, descriptor.status) == \
            (resource.plural, resource.model, resource.status)
        assert PLURALS[kind] == resource.plural  # the operator's API client


def test_no_plural_of_ours_is_spelled_in_the_operator():
    sources = {p: p.read_text() for p in (ROOT / "operator" / "polyvivid_operator").rglob("*.py")}
    for resource in RESOURCES.values():
        spelled = [p.name for p, text in sources.items() if re.search(rf"\b{resource.plural}\b", text)]
        assert spelled == [], f"{resource.plural} is spelled in {spelled}: take it from polyvivid.api.crds"


@pytest.mark.parametrize("kind,dep", [(d.kind, dep) for d in KINDS.values() for dep in d.dependencies],
                         ids=lambda v: v if isinstance(v, str) else v.path)
def test_each_dependency_is_a_name_field_of_the_spec_naming_a_kind_of_ours(kind, dep):
    node = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for part in dep.field:
        node = node["properties"][part]
    assert node["type"] == "string"
    assert dep.kind in KINDS and (KINDS[kind], dep) in dependents(dep.kind)


def test_render_resolves_what_the_operator_will_once_the_named_resource_succeeded():
    curation = curation_manifest("s3://datasets/curated")
    training = training_manifest("s3://runs/demo", dataset={"curationJob": "raw"})
    service = service_manifest(model={"training": "demo"})
    children = {c["kind"]: c for c in render([curation, training, service], "reg/pv:1")}
    assert children["TrainJob"]["spec"]["trainer"]["command"][-2:] == ["--dataset", "s3://datasets/curated"]
    assert "model: s3://runs/demo/final" in children["RayService"]["spec"]["serveConfigV2"]

    dataset, weights = KINDS["PolyVividTraining"].dependencies[0], KINDS["PolyVividService"].dependencies[0]
    assert dataset.produced(curation) is None and weights.produced(training) is None  # not succeeded: wait
    done = {"phase": "Succeeded", "finalWeights": {"uri": "s3://runs/demo/final", "version": "v1"}}
    assert dataset.produced({**curation, "status": {"phase": "Succeeded"}}) == dataset.planned(curation)
    assert weights.produced({**training, "status": done}) == Output(weights.planned(training).uri, "v1")


def test_workload_output_that_does_not_fit_the_status_is_left_out_and_said():
    progress, why = workload_output(TrainingProgress, {"step": 3, "loss": 0.25, "stage": None}, "progress.json")
    assert (progress.step, progress.loss, why) == (3, 0.25, "")
    progress, why = workload_output(TrainingProgress, {"step": 3, "loss": float("nan")}, "progress.json")
    assert progress == TrainingProgress() and why.startswith("progress.json not usable: loss: ")
