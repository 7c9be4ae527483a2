"""The chart's RBAC allows every request the real operator makes, and no more than the rules say: the
operator (kopf and its own client) runs a whole lifecycle of all three kinds against the test API server,
which logs each request as RBAC sees it (verb, API group, resource/subresource, namespace); each must be
allowed by the rendered ClusterRole or the Role of its namespace. Run cluster-wide (default values) and
watching one namespace (watchNamespaces). The API server here enforces no RBAC itself (a real cluster
would): the check is this comparison."""

from __future__ import annotations

import json

import pytest
import requests

from ..kube.client import wait_for
from ..operator.conftest import running_operator
from ..operator.test_curation_and_service_reconcile import curation_manifest, phase, service_manifest
from ..operator.test_training_reconcile import job_condition, training_manifest
from .conftest import render

OPERATOR_AGENTS = ("kopf/", "polyvivid-operator")
CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces", "clusterkopfpeerings"}


def allowed(objs: list[dict], verb: str, group: str, resource: str, namespace: str | None) -> bool:
    roles = [o for o in objs if o["kind"] == "ClusterRole"]
    if namespace is not None and resource.split("/")[0] not in CLUSTER_SCOPED:
        roles += [o for o in objs if o["kind"] == "Role" and o["metadata"]["namespace"] == namespace]
    return any(group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
               for role in roles for rule in role["rules"])


def lifecycle(kube, tmp_path) -> None:
    """Curation -> training on its output -> service of the training's weights; a spec change; an invalid
    spec; then everything deleted."""
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "api-token", "namespace": "ml"},
                 "stringData": {"token": "t0ken"}})
    out = tmp_path / "run"
    kube.create(curation_manifest(str(tmp_path / "data")))
    kube.create(training_manifest(str(out), dataset={"curationJob": "raw"}))
    kube.create(service_manifest(model={"training": "demo"}, apiTokenSecretRef={"name": "api-token"}))
    kube.create(training_manifest(str(tmp_path / "x"), name="too-big", resources={"nodes": 1, "gpusPerNode": 64}))
    wait_for(lambda: kube.get("RayJob", "raw-curate"), what="the RayJob")
    kube.set_status("RayJob", "raw-curate", {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
    wait_for(lambda: kube.get("PyTorchJob", "demo-train"), what="the PyTorchJob")
    out.mkdir()
    (out / "progress.json").write_text(json.dumps({"status": "succeeded", "step": 8, "final": f"{out}/final",
                                                   "updated_at": "2026-11-24T01:00:00+00:00"}))
    kube.set_status("PyTorchJob", "demo-train", job_condition("Succeeded", "2026-11-24T01:00:01Z"))
    wait_for(lambda: kube.get("RayService", "demo"), what="the RayService")
    kube.patch("PolyVividService", "demo", {"spec": {"scheduling": {"image": "registry.test/polyvivid:v2"}}})
    wait_for(lambda: "v2" in json.dumps(kube.get("RayService", "demo")["spec"]), what="the spec change")
    wait_for(lambda: phase(kube, "PolyVividTraining", "too-big") == "Invalid")
    for kind, name in (("PolyVividService", "demo"), ("PolyVividTraining", "demo"), ("PolyVividTraining", "too-big"),
                       ("CurationJob", "raw")):
        kube.delete(kind, name)
    wait_for(lambda: not kube.list("PolyVividTraining") and not kube.list("PolyVividService")
             and not kube.list("CurationJob"), what="all resources gone (kopf released them)")


@pytest.mark.parametrize("namespaces", [[], ["ml"]], ids=["cluster-wide", "one-namespace"])
def test_every_request_of_the_operator_is_allowed_by_the_chart(namespaces, kube, apiserver, monkeypatch, tmp_path):
    requests.post(f"{apiserver.url}/api/v1/namespaces", timeout=5,
                  json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml"}}).raise_for_status()
    with running_operator(monkeypatch, namespaces=namespaces):
        lifecycle(kube, tmp_path)
    objs = render({"watchNamespaces": namespaces} if namespaces else None)
    calls = {entry[1:] for entry in apiserver.api.audit if entry[0].startswith(OPERATOR_AGENTS)}
    agents = {entry[0].split("/")[0] for entry in apiserver.api.audit if entry[0].startswith(OPERATOR_AGENTS)}
    assert agents == {"kopf", "polyvivid-operator"}  # both clients were seen (and told apart from the test's)
    # the lifecycle exercised the rights that matter
    made = {(verb, resource) for verb, _, resource, _ in calls}
    assert {("get", "secrets"), ("create", "pytorchjobs"), ("create", "rayjobs"), ("create", "rayservices"),
            ("patch", "rayservices"), ("create", "configmaps"), ("create", "events"),
            ("watch", "polyvividtrainings"), ("patch", "polyvividservices/status")} <= made, sorted(made)
    denied = sorted(r for r in calls if not allowed(objs, *r))
    assert denied == [], f"requests the chart's RBAC would deny: {denied}"
    if namespaces:
        assert all(ns in (None, "ml") for *_, ns in calls)


def test_the_check_can_fail():
    """A request outside the rules (deleting a Secret; a watched kind in another namespace) is denied."""
    objs = render({"watchNamespaces": ["ml"]})
    assert allowed(objs, "get", "", "secrets", "ml")
    assert not allowed(objs, "delete", "", "secrets", "ml")
    assert not allowed(objs, "get", "", "secrets", "kube-system")
    assert allowed(objs, "list", "apiextensions.k8s.io", "customresourcedefinitions", None)
