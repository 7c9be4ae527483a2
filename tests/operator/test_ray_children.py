"""CurationJob -> RayJob and PolyVividService -> RayService: the rendered children validate against
the upstream KubeRay CRDs (schema and CEL) and carry what the workloads need (pure functions)."""

from __future__ import annotations

import copy

import pytest
import yaml
from polyvivid_operator.children import rayjob, rayservice

from polyvivid.api.service import ServiceSpec
from polyvivid.serve.config import IMPORT_PATH, TOKEN_ENV

from ..openapi import ROOT, upstream_errors
from ..specs import with_random_models


def curation(**spec) -> dict:
    return {"apiVersion": "polyvivid.io/v1alpha1", "kind": "CurationJob",
            "metadata": {"name": "raw", "namespace": "ml", "uid": "c-1"},
            "spec": with_random_models({"input": "s3://videos/raw/", "output": "s3://datasets/curated", **spec})}


def service(**spec) -> dict:
    manifest = yaml.safe_load((ROOT / "manifests" / "examples" / "demo-service.yaml").read_text())
    manifest["metadata"].update(namespace="serving", uid="s-1")
    if "allowUnauthenticated" in spec:  # the demo has a token Secret; running open replaces it
        manifest["spec"].pop("apiTokenSecretRef")
    manifest["spec"].update(copy.deepcopy(spec))
    return manifest


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def test_rayjob_validates_upstream_and_runs_curate_on_gpu_workers_it_shuts_down():
    job = rayjob.render_rayjob(curation(workers=3, worker={"gpus": 4, "cpus": 16, "memory": "128Gi"},
                                        storage={"secretRef": {"name": "s3"}},
                                        scheduling={"queue": "team-a", "nodeSelector": {"gpu": "h100"},
                                                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                                     "effect": "NoSchedule"}]}),
                               image="reg/polyvivid:2")
    assert upstream_errors(job) == []
    broken = copy.deepcopy(job)
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName")
    broken["spec"]["rayClusterSpec"]["managedBy"] = "someone"
    errors = upstream_errors(broken)
    assert any("groupName" in e for e in errors) and any("managedBy" in e for e in errors)  # schema + CEL bite

    assert job["metadata"]["name"] == "raw-curate" and job["metadata"]["ownerReferences"][0]["uid"] == "c-1"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    spec = job["spec"]
    assert spec["entrypoint"] == "polyvivid curate /etc/polyvivid/curation.yaml"
    assert spec["shutdownAfterJobFinishes"] is True
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # model work stays on the workers
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 3
    (worker,) = containers(group["template"])
    assert worker["image"] == "reg/polyvivid:2" and worker["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert group["template"]["spec"]["nodeSelector"] == {"gpu": "h100"}
    assert group["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    (head_container,) = containers(head["template"])
    assert {m["mountPath"] for m in head_container["volumeMounts"]} >= {"/etc/polyvivid"}  # the driver reads the spec
    env = {e["name"]: e for e in head_container["env"]}
    assert env["HF_HUB_OFFLINE"]["value"] == "1" and "valueFrom" in env["AWS_SECRET_ACCESS_KEY"]
    assert rayjob.render_configmap(curation())["metadata"]["name"] == "raw-curate-spec"
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}  # Ray's own token auth, by KubeRay


def test_rayjob_without_workers_lets_the_head_work():
    job = rayjob.render_rayjob(curation(workers=0))
    assert upstream_errors(job) == []
    assert "num-cpus" not in job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]


def test_rayservice_validates_upstream_serves_the_resolved_weights_and_autoscales():
    svc = service(model={"training": "demo"}, replicas={"min": 1, "max": 6, "gpusPerReplica": 1, "cpusPerReplica": 2},
                  worker={"gpus": 2, "cpus": 16, "memory": "200Gi"}, apiTokenSecretRef={"name": "api"},
                  scheduling={"image": "reg/pv:3", "priorityClass": "serving"})
    obj = rayservice.render_rayservice(svc, model_uri="s3://runs/demo/final", model_version="2026-11-24T10:00:00Z")
    assert upstream_errors(obj) == []
    assert obj["metadata"]["name"] == "demo" and obj["metadata"]["ownerReferences"][0]["kind"] == "PolyVividService"
    assert obj["spec"]["upgradeStrategy"]["type"] == "NewCluster"  # no in-place resize without headroom
    config = yaml.safe_load(obj["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    assert app["import_path"] == IMPORT_PATH and app["args"]["model"] == "s3://runs/demo/final"
    assert app["args"]["model_version"] == "2026-11-24T10:00:00Z"
    assert ServiceSpec.model_validate(app["args"]["spec"]).replicas.max == 6  # the app reads the spec back
    cluster = obj["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}
    (group,) = cluster["workerGroupSpecs"]
    # two 1-GPU replicas per 2-GPU pod: 1..6 replicas need 1..3 pods
    assert (group["minReplicas"], group["maxReplicas"]) == (1, 3) and cluster["enableInTreeAutoscaling"] is True
    (worker,) = containers(group["template"])
    assert worker["image"] == "reg/pv:3" and group["template"]["spec"]["priorityClassName"] == "serving"
    token = {e["name"]: e for e in worker["env"]}[TOKEN_ENV]
    assert token == {"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}
    assert rayservice.endpoint(svc) == "http://demo-serve-svc.serving.svc:8000"
    assert "model_version" not in yaml.safe_load(
        rayservice.render_rayservice(service())["spec"]["serveConfigV2"])["applications"][0]["args"]


def test_a_replica_larger_than_a_worker_pod_is_refused():
    spec = ServiceSpec.model_validate(service(replicas={"gpusPerReplica": 4}, worker={"gpus": 2})["spec"])
    with pytest.raises(ValueError, match="more than one worker pod"):
        rayservice.worker_bounds(spec)


def test_ray_pods_get_the_pull_secrets_and_service_account():
    scheduling = {"imagePullSecrets": ["regcred"], "serviceAccountName": "polyvivid-ray"}
    job = rayjob.render_rayjob(curation(scheduling=scheduling))
    svc = rayservice.render_rayservice(service(scheduling=scheduling), image="reg/pv:1")
    assert upstream_errors(job) == [] and upstream_errors(svc) == []
    for cluster in (job["spec"]["rayClusterSpec"], svc["spec"]["rayClusterConfig"]):
        for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]):
            pod = group["template"]["spec"]
            assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["serviceAccountName"] == "polyvivid-ray"
