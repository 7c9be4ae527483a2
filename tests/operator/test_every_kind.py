"""For each kind, the same contract through the real operator: create -> child; a spec change reaches
the child; a restarted operator rewrites nothing; deleting the resource deletes its children."""

from __future__ import annotations

import time

import pytest

from ..kube.client import wait_for
from .conftest import running_operator
from .test_curation_and_service_reconcile import curation_manifest, service_manifest
from .test_training_reconcile import ready, training_manifest


def child_image(child: dict) -> str:
    spec = child["spec"]
    if child["kind"] == "TrainJob":
        return spec["trainer"]["image"]
    if child["kind"] == "PyTorchJob":
        template = spec["pytorchReplicaSpecs"]["Master"]["template"]
    else:
        cluster = spec.get("rayClusterSpec") or spec["rayClusterConfig"]
        template = cluster["workerGroupSpecs"][0]["template"]
    return template["spec"]["containers"][0]["image"]


CASES = {
    "PolyVividTraining": (lambda: training_manifest("s3://runs/one", name="one"), "TrainJob", "one-train"),
    "CurationJob": (lambda: curation_manifest("s3://datasets/one", name="one"), "RayJob", "one-curate"),
    "PolyVividService": (lambda: service_manifest(name="one"), "RayService", "one"),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_create_update_restart_delete(kind, kube, apiserver, monkeypatch):
    manifest, child_kind, child_name = CASES[kind]
    with running_operator(monkeypatch):
        kube.create(manifest())
        child = wait_for(lambda: kube.get(child_kind, child_name), what=f"the {child_kind}")
        assert child["metadata"]["ownerReferences"][0]["kind"] == kind
        assert child_image(child) == "registry.test/polyvivid:ci"
        wait_for(lambda: ready(kube.get(kind, "one")).get("observedGeneration") == 1)

        kube.patch(kind, "one", {"spec": {"scheduling": {"image": "registry.test/polyvivid:v2"}}})
        wait_for(lambda: child_image(kube.get(child_kind, child_name)) == "registry.test/polyvivid:v2",
                 what="the new image in the child")
        wait_for(lambda: ready(kube.get(kind, "one")).get("observedGeneration") == 2)
    before = {c["metadata"]["name"]: c["metadata"]["resourceVersion"] for c in kube.list(child_kind)}
    parent_before = kube.get(kind, "one")["metadata"]["resourceVersion"]

    with running_operator(monkeypatch):
        time.sleep(2.5)  # the resume, watch replays and two timer ticks
        assert {c["metadata"]["name"]: c["metadata"]["resourceVersion"] for c in kube.list(child_kind)} == before
        assert kube.get(kind, "one")["metadata"]["resourceVersion"] == parent_before  # nor its status

        kube.delete(kind, "one")
        wait_for(lambda: kube.get(kind, "one") is None, what="the resource to go (kopf releases its finalizer)")
        wait_for(lambda: kube.list(child_kind) == [] and kube.list("ConfigMap") == [], what="the children to go")
