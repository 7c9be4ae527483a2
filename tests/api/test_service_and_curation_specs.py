"""PolyVividService and CurationJob manifests: defaults and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from polyvivid.api import CurationJob, PolyVividService, SpecError, load_resource

from ..specs import with_random_models

ROOT = Path(__file__).resolve().parents[2]


def service(**spec):
    body = {"model": {"preset": "tiny"}, "output": "s3://serve/jobs"}
    body.update(spec)
    return {"apiVersion": "polyvivid.io/v1alpha1", "kind": "PolyVividService", "metadata": {"name": "s"}, "spec": body}


def test_service_defaults():
    spec = load_resource(service(), PolyVividService).spec
    assert spec.replicas.min == spec.replicas.max == 1 and spec.replicas.gpus_per_replica == 1.0
    assert spec.limits.max_subjects == 4 and spec.limits.queue_length == 64
    assert spec.api_token_secret_ref is None
    spec = load_resource(service(model={"training": "run-1"}, apiTokenSecretRef={"name": "tok"}), PolyVividService).spec
    assert spec.model.training == "run-1" and spec.api_token_secret_ref.key == "token"


@pytest.mark.parametrize("change, field", [
    (dict(model={}), "spec.model"),
    (dict(model={"preset": "tiny", "uri": "s3://x"}), "spec.model"),
    (dict(replicas={"min": 3, "max": 2}), "spec.replicas"),
    (dict(limits={"maxFrames": 128}), "spec.limits"),
    (dict(limits={"maxHeight": 100}), "spec.limits.maxHeight"),
    (dict(defaults={"numFrames": 257}), "defaults.numFrames (257) exceeds its limit (129)"),
    (dict(limits={"maxRequestBytes": 10}), "spec.limits.maxRequestBytes"),
])
def test_invalid_services_name_the_field(change, field):
    with pytest.raises(SpecError) as err:
        load_resource(service(**change), PolyVividService)
    assert field in str(err.value)


def test_allow_unauthenticated_defaults_off_and_excludes_a_token_secret():
    assert load_resource(service(), PolyVividService).spec.allow_unauthenticated is False
    assert load_resource(service(allowUnauthenticated=True), PolyVividService).spec.allow_unauthenticated is True
    with pytest.raises(SpecError, match="spec: Value error, give apiTokenSecretRef or allowUnauthenticated, not both"):
        load_resource(service(allowUnauthenticated=True, apiTokenSecretRef={"name": "tok"}), PolyVividService)


def test_the_crd_has_allow_unauthenticated_as_an_optional_boolean_defaulting_to_false():
    """`make manifests` ran after the field was added (the generic drift test says the same for every field)."""
    crd = yaml.safe_load((ROOT / "manifests" / "crds" / "polyvivid.io_polyvividservices.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["allowUnauthenticated"]["type"] == "boolean"
    assert spec["properties"]["allowUnauthenticated"]["default"] is False
    assert "allowUnauthenticated" not in spec.get("required", [])


def curation(**spec):
    body = with_random_models({"input": "s3://raw/", "output": "s3://data/set", **spec})
    return {"apiVersion": "polyvivid.io/v1alpha1", "kind": "CurationJob", "metadata": {"name": "c"}, "spec": body}


def test_curation_needs_a_model_for_every_model_stage_and_random_weights_are_explicit():
    bare = {"apiVersion": "polyvivid.io/v1alpha1", "kind": "CurationJob", "metadata": {"name": "c"},
            "spec": {"input": "s3://raw/", "output": "s3://data/set", "grounding": {"model": {"uri": "s3://m/f2"}}}}
    with pytest.raises(SpecError, match=r"no model for caption\.model, segmentation\.model, clipScore\.model: "
                                        r"give each `uri:`.*`preset: tiny` for random weights"):
        load_resource(bare, CurationJob)
    spec = load_resource(curation(caption={"model": {"uri": "s3://m/qwen"}}), CurationJob).spec
    assert spec.random_model_stages() == ["grounding.model", "segmentation.model", "clipScore.model"]
    real = {alias: {"model": {"uri": f"s3://m/{alias}"}} for alias in ("caption", "grounding", "segmentation", "clipScore")}
    assert load_resource(curation(**real), CurationJob).spec.random_model_stages() == []
    with_filter = load_resource(curation(**real, filters={"qualityScorer": {"preset": "tiny"}}), CurationJob).spec
    assert with_filter.random_model_stages() == ["filters.qualityScorer"]


def test_curation_defaults_and_errors():
    spec = load_resource(curation(), CurationJob).spec
    assert spec.grounding.frames_per_clip == 6 and spec.split.max_fps == 24
    assert spec.filters.subtitle_detector is None and spec.consolidation.max_distance == 0.3
    with pytest.raises(SpecError, match="spec.split: Value error, minClipSeconds exceeds maxClipSeconds"):
        load_resource(curation(split={"minClipSeconds": 30}), CurationJob)
    with pytest.raises(SpecError, match="spec.grounding.model"):
        load_resource(curation(grounding={"model": {"uri": "s3://m", "preset": "tiny"}}), CurationJob)
    with pytest.raises(SpecError, match="spec.clipScore.minScore"):
        load_resource(curation(clipScore={"minScore": 2}), CurationJob)
