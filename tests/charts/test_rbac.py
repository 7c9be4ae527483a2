"""The chart's RBAC allows every request the real operator makes, and no more than the rules say: the
operator (kopf and its own client) runs a whole lifecycle of all three kinds against the test API server,
which logs each request as RBAC sees it (verb, API group, resource/subresource, namespace); each must be
allowed by the rendered ClusterRole or the Role of its namespace. Run cluster-wide (default values) and
watching one namespace (watchNamespaces). The API server here enforces no RBAC itself (a real cluster
would): the check is this comparison, or, for rbac.secretNamespaces, the server is made to enforce the
rendered rules (403, as a real one would) and the operator reports what it may not read."""

from __future__ import annotations

import json

import pytest
import requests

from polyvivid.storage import open_store

from ..kube.apiserver import ApiError, ApiServer
from ..kube.client import wait_for
from ..operator.conftest import running_operator
from ..operator.test_curation_and_service_reconcile import curation_manifest, phase, service_manifest
from ..operator.test_training_reconcile import job_status, ready, training_manifest
from .conftest import render

OPERATOR_AGENTS = ("kopf/", "polyvivid-operator")
CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces", "clusterkopfpeerings"}


def allowed(objs: list[dict], verb: str, group: str, resource: str, namespace: str | None) -> bool:
    roles = [o for o in objs if o["kind"] == "ClusterRole"]
    if namespace is not None and resource.split("/")[0] not in CLUSTER_SCOPED:
        roles += [o for o in objs if o["kind"] == "Role" and o["metadata"]["namespace"] == namespace]
    return any(group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
               for role in roles for rule in role["rules"])


def lifecycle(kube, bucket: str) -> None:
    """Curation -> training on its output -> service of the training's weights; a spec change; an invalid
    spec; then everything deleted."""
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "api-token", "namespace": "ml"},
                 "stringData": {"token": "t0ken"}})
    out = f"{bucket}/run"
    kube.create(curation_manifest(f"{bucket}/data"))
    kube.create(training_manifest(out, dataset={"curationJob": "raw"}))
    kube.create(service_manifest(model={"training": "demo"}, apiTokenSecretRef={"name": "api-token"}))
    kube.create(training_manifest(f"{bucket}/x", name="too-big", resources={"nodes": 1, "gpusPerNode": 64}))
    kube.create(training_manifest(f"{bucket}/v1", name="v1", backend="pytorchjob",  # the other training child,
                                  ttlSecondsAfterFinished=0))  # deleted once it ended
    wait_for(lambda: kube.get("RayJob", "raw-curate"), what="the RayJob")
    kube.set_status("RayJob", "raw-curate", {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
    wait_for(lambda: kube.get("TrainJob", "demo-train"), what="the TrainJob")
    wait_for(lambda: kube.get("PyTorchJob", "v1-train"), what="the PyTorchJob")
    kube.set_status("PyTorchJob", "v1-train", {"conditions": [
        {"type": "Failed", "status": "True", "reason": "PyTorchJobFailed", "lastTransitionTime": "2026-11-24T00:00:00Z"}]})
    wait_for(lambda: kube.get("PyTorchJob", "v1-train") is None, what="the finished PyTorchJob deleted (TTL 0)")
    kube.patch("PolyVividTraining", "demo", {"spec": {"resources": {"nodes": 1, "gpusPerNode": 2},
                                                      "globalBatchSize": 2}})  # an immutable TrainJob field
    wait_for(lambda: (j := kube.get("TrainJob", "demo-train")) and j["spec"]["trainer"]["numProcPerNode"] == 2,
             what="the TrainJob replaced")
    open_store(out).write_text("progress.json", json.dumps({"status": "succeeded", "step": 8, "final": f"{out}/final",
                                                            "updated_at": "2026-11-24T01:00:00+00:00"}))
    kube.set_status("TrainJob", "demo-train", job_status("Succeeded", "2026-11-24T01:00:01Z"))
    wait_for(lambda: kube.get("RayService", "demo"), what="the RayService")
    kube.patch("PolyVividService", "demo", {"spec": {"scheduling": {"image": "registry.test/polyvivid:v2"}}})
    wait_for(lambda: "v2" in json.dumps(kube.get("RayService", "demo")["spec"]), what="the spec change")
    wait_for(lambda: phase(kube, "PolyVividTraining", "too-big") == "Invalid")
    for kind, name in (("PolyVividService", "demo"), ("PolyVividTraining", "demo"), ("PolyVividTraining", "too-big"),
                       ("PolyVividTraining", "v1"), ("CurationJob", "raw")):
        kube.delete(kind, name)
    wait_for(lambda: not kube.list("PolyVividTraining") and not kube.list("PolyVividService")
             and not kube.list("CurationJob"), what="all resources gone (kopf released them)")


@pytest.mark.parametrize("namespaces", [[], ["ml"]], ids=["cluster-wide", "one-namespace"])
def test_every_request_of_the_operator_is_allowed_by_the_chart(namespaces, kube, apiserver, s3_bucket, monkeypatch):
    requests.post(f"{apiserver.url}/api/v1/namespaces", timeout=5,
                  json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml"}}).raise_for_status()
    with running_operator(monkeypatch, namespaces=namespaces):
        lifecycle(kube, s3_bucket)
    objs = render({"watchNamespaces": namespaces} if namespaces else None)
    calls = {entry[1:] for entry in apiserver.api.audit if entry[0].startswith(OPERATOR_AGENTS)}
    agents = {entry[0].split("/")[0] for entry in apiserver.api.audit if entry[0].startswith(OPERATOR_AGENTS)}
    assert agents == {"kopf", "polyvivid-operator"}  # both clients were seen (and told apart from the test's)
    # the lifecycle exercised the rights that matter
    made = {(verb, resource) for verb, _, resource, _ in calls}
    assert {("get", "secrets"), ("create", "trainjobs"), ("delete", "trainjobs"), ("delete", "pytorchjobs"),
            ("delete", "configmaps"), ("create", "pytorchjobs"), ("create", "rayjobs"), ("create", "rayservices"),
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


def enforce(objs: list[dict], monkeypatch) -> None:
    """The test API server answers 403 Forbidden to every request of the operator that the rendered rules
    do not allow, as a real API server would (the test's own requests pass)."""
    handle = ApiServer._handle

    async def enforcing(self, request):
        agent = request.headers.get("User-Agent", "")
        if request.resource is not None and request.resource.plural is not None and agent.startswith(OPERATOR_AGENTS):
            method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
            self._audit(request, method)  # the request as RBAC sees it
            _, verb, group, resource, namespace = self.audit[-1]
            if not allowed(objs, verb, group, resource, namespace):
                return await self._render_error(ApiError(status=403, reason="Forbidden",
                                                         message=f"{resource} is forbidden in {namespace}"))
            self.audit.pop()  # allowed: handle() records it
        return await handle(self, request)

    monkeypatch.setattr(ApiServer, "_handle", enforcing)


def test_with_secret_namespaces_secrets_elsewhere_are_forbidden_and_reported(kube, apiserver, monkeypatch):
    """rbac.secretNamespaces=[ml], cluster-wide: the ClusterRole has no Secrets, a Role gives them in ml.
    A training in ml with a secretRef runs; in another namespace its Secret read is a 403, which the operator
    reports as InvalidSpec naming the field and the reason (no crash, no silent retry loop); a service there
    with an API token Secret likewise. Every other request of the operator is allowed."""
    objs = render({"rbac": {"secretNamespaces": ["ml"]}})
    assert not allowed(objs, "get", "", "secrets", "other") and allowed(objs, "get", "", "secrets", "ml")
    enforce(objs, monkeypatch)
    for ns in ("ml", "other"):
        kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": ns},
                     "stringData": {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "token": "t"}})
        kube.create({**training_manifest("s3://runs/t", storage={"secretRef": {"name": "creds"}}),
                     "metadata": {"name": "t", "namespace": ns}})
    kube.create({**service_manifest(apiTokenSecretRef={"name": "creds"}), "metadata": {"name": "s", "namespace": "other"}})
    with running_operator(monkeypatch):
        wait_for(lambda: kube.get("TrainJob", "t-train", namespace="ml"), what="the training in ml to run")
        for kind, name, field in (("PolyVividTraining", "t", "spec.storage.secretRef"),
                                  ("PolyVividService", "s", "spec.apiTokenSecretRef")):
            obj = wait_for(lambda: (o := kube.get(kind, name, namespace="other")) and ready(o).get("reason") and o,
                           what=f"{kind} in other")
            assert obj["status"]["phase"] == "Invalid" and ready(obj)["reason"] == "InvalidSpec"
            assert ready(obj)["message"].startswith(f"{field}: the operator may not read Secret 'creds' in "
                                                    "namespace 'other' (403 Forbidden)"), ready(obj)["message"]
            assert "rbac.secretNamespaces" in ready(obj)["message"]
        assert kube.list("TrainJob", namespace="other") == [] and kube.list("RayService", namespace="other") == []
    calls = {entry[1:] for entry in apiserver.api.audit if entry[0].startswith(OPERATOR_AGENTS)}
    assert sorted(r for r in calls if not allowed(objs, *r)) == [("get", "", "secrets", "other")]
