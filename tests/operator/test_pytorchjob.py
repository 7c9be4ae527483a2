"""PolyVividTraining (spec.backend pytorchjob) -> PyTorchJob: the rendered child validates against the upstream
CRD and says what the training needs (no cluster: these are pure functions)."""

from __future__ import annotations

import copy

import yaml
from polyvivid_operator.children.pytorchjob import render_pytorchjob
from polyvivid_operator.children.training_pod import names, render_configmap

from polyvivid.api import PolyVividTraining, load_resource

from ..openapi import ROOT, upstream_errors, upstream_validator


def training(**spec_changes) -> dict:
    manifest = yaml.safe_load((ROOT / "manifests" / "examples" / "demo-training.yaml").read_text())
    manifest["metadata"].update(namespace="ml", uid="1234-5678")
    manifest["spec"].update(backend="pytorchjob", **copy.deepcopy(spec_changes))
    return manifest


def test_multi_node_gpu_job_validates_upstream_and_carries_owner_gpus_secrets_and_shm():
    t = training(resources={"nodes": 3, "gpusPerNode": 8}, metricsPort=9090,
                 storage={"endpoint": "http://minio.minio:9000", "secretRef": {"name": "s3-creds"}})
    job = render_pytorchjob(t, image="registry.local/polyvivid:1", dataset_uri="s3://data/curated")
    validator = upstream_validator("kubeflow.org_pytorchjobs.yaml")
    validator.validate(job)
    broken = copy.deepcopy(job)  # the validator is not vacuous
    broken["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    assert list(validator.iter_errors(broken))

    meta = job["metadata"]
    assert meta["name"] == "demo-train" and meta["namespace"] == "ml"
    assert meta["ownerReferences"] == [{"apiVersion": "polyvivid.io/v1alpha1", "kind": "PolyVividTraining",
                                        "name": "demo", "uid": "1234-5678", "controller": True,
                                        "blockOwnerDeletion": True}]
    assert meta["labels"]["app.kubernetes.io/instance"] == "demo"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "polyvivid-operator"
    spec = job["spec"]
    assert spec["nprocPerNode"] == "8"
    master, worker = spec["pytorchReplicaSpecs"]["Master"], spec["pytorchReplicaSpecs"]["Worker"]
    assert (master["replicas"], worker["replicas"]) == (1, 2)
    assert master["restartPolicy"] == worker["restartPolicy"] == "OnFailure"  # no enum upstream: checked here
    assert spec["runPolicy"]["backoffLimit"] >= 1
    (container,) = worker["template"]["spec"]["containers"]
    assert container["name"] == "pytorch" and container["image"] == "registry.local/polyvivid:1"
    assert container["command"][:4] == ["torchrun", "--module", "polyvivid.cli", "train"]
    assert container["command"][-2:] == ["--dataset", "s3://data/curated"]
    assert container["command"][-4:-2] == ["--metrics-addr", "0.0.0.0"]  # scraped at the pod's address
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    env = {e["name"]: e for e in container["env"]}
    assert env["POLYVIVID_S3_ENDPOINT"]["value"] == "http://minio.minio:9000"
    assert env["AWS_SECRET_ACCESS_KEY"] == {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}}}
    assert all("value" not in e for name, e in env.items() if name.startswith("AWS_") and name != "AWS_REGION")
    assert container["securityContext"]["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in worker["template"]["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["spec"]["configMap"]["name"] == names(t)["ConfigMap"]


def test_single_cpu_node_has_no_workers_and_no_gpu_limit():
    job = render_pytorchjob(training())  # the demo: 1 node, 0 GPUs
    upstream_validator("kubeflow.org_pytorchjobs.yaml").validate(job)
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Master"} and job["spec"]["nprocPerNode"] == "1"
    (container,) = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


def test_the_configmap_holds_the_manifest_the_workload_reads():
    t = training()
    t["status"] = {"phase": "Running"}
    cm = render_configmap(t)
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "1234-5678"
    manifest = yaml.safe_load(cm["data"]["training.yaml"])
    assert "status" not in manifest and "uid" not in manifest["metadata"]
    assert load_resource(manifest, PolyVividTraining).spec == PolyVividTraining.model_validate(t).spec


def test_queue_priority_and_placement_pass_through():
    t = training(resources={"nodes": 2, "gpusPerNode": 8},
                 scheduling={"image": "reg/pv:9", "queue": "research", "priorityClass": "high",
                             "nodeSelector": {"nvidia.com/gpu.product": "H100"},
                             "tolerations": [{"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}]})
    job = render_pytorchjob(t, image="ignored/by:spec")
    assert upstream_errors(job) == []
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "research"
    assert job["spec"]["runPolicy"]["suspend"] is True  # created suspended: Kueue starts it
    assert "schedulingPolicy" not in job["spec"]["runPolicy"]  # Kueue's label only: no Volcano queue
    volcano = render_pytorchjob(training(resources={"nodes": 2, "gpusPerNode": 8}, scheduling={
        "volcanoQueue": "gang", "priorityClass": "high"}))
    assert volcano["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 2, "queue": "gang", "priorityClass": "high"}
    assert volcano["spec"]["runPolicy"]["suspend"] is False and "kueue.x-k8s.io/queue-name" not in volcano["metadata"]["labels"]
    pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    assert pod["priorityClassName"] == "high" and pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}]
    assert pod["containers"][0]["image"] == "reg/pv:9"
    plain = render_pytorchjob(training())
    assert "schedulingPolicy" not in plain["spec"]["runPolicy"]
    assert "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]
