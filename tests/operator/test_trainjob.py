"""PolyVividTraining -> TrainJob (Kubeflow Trainer v2.3, the default backend), on the chart's
ClusterTrainingRuntime: both validate against the upstream CRDs (schema and CEL), and the TrainJob carries
what the training needs (no cluster: pure functions)."""

from __future__ import annotations

import copy

import pytest
import yaml
from polyvivid_operator.children.trainjob import PATCH_MANAGER, RUNTIME_CONTAINER, RUNTIME_JOB, render_trainjob
from polyvivid_operator.children.training_pod import names
from polyvivid_operator.config import OperatorConfig
from polyvivid_operator.validation import InvalidSpec, check_training

from polyvivid.api import PolyVividTraining

from ..charts.conftest import render as render_chart
from ..openapi import ROOT, upstream_errors


def training(**spec_changes) -> dict:
    manifest = yaml.safe_load((ROOT / "manifests" / "examples" / "demo-training.yaml").read_text())
    manifest["metadata"].update(namespace="ml", uid="1234-5678")
    manifest["spec"].update(copy.deepcopy(spec_changes))
    return manifest


def pod_patch(job: dict) -> dict:
    (patch,) = job["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert patch["manager"] == PATCH_MANAGER and replicated["name"] == RUNTIME_JOB
    return replicated["template"]["spec"]["template"]


def test_a_multi_node_gpu_trainjob_validates_upstream_and_carries_the_training():
    t = training(resources={"nodes": 4, "gpusPerNode": 8}, metricsPort=9090, globalBatchSize=32,
                 storage={"endpoint": "http://minio.minio:9000", "secretRef": {"name": "s3-creds"}},
                 scheduling={"queue": "research", "nodeSelector": {"nvidia.com/gpu.product": "H100"},
                             "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]})
    job = render_trainjob(t, image="registry.local/polyvivid:1", dataset_uri="s3://data/curated", runtime="rt")
    assert upstream_errors(job) == []
    broken = copy.deepcopy(job)  # the check is not vacuous: the schema and the CEL rules both bite
    broken["spec"]["trainer"]["numNodes"] = "four"
    broken["spec"]["managedBy"] = "someone-else"
    errors = upstream_errors(broken)
    assert any("numNodes" in e for e in errors) and any("managedBy" in e or "trainjob-controller" in e for e in errors)

    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["metadata"]["name"] == "demo-train"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "1234-5678"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "research"
    assert job["spec"]["runtimeRef"] == {"name": "rt", "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"}
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 8)
    # defaults from the GPU count: 12 cores and 96 GiB a GPU, requests = limits (Guaranteed), /dev/shm in them
    assert trainer["resourcesPerNode"] == {
        "limits": {"cpu": "96", "memory": "768Gi", "nvidia.com/gpu": 8},
        "requests": {"cpu": "96", "memory": "768Gi", "nvidia.com/gpu": 8, "ephemeral-storage": "250Gi"}}
    assert trainer["image"] == "registry.local/polyvivid:1"
    assert trainer["command"][:5] == ["torchrun", "--module", "polyvivid.cli", "train", "/etc/polyvivid/training.yaml"]
    assert trainer["command"][-2:] == ["--dataset", "s3://data/curated"]
    env = {e["name"]: e for e in trainer["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert not {name for name in env if name.startswith("PET_")}  # Trainer's own (its webhook refuses them)

    pod = pod_patch(job)
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "training"
    (container,) = pod["spec"]["containers"]
    assert container["name"] == RUNTIME_CONTAINER and container["securityContext"]["runAsNonRoot"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/etc/polyvivid", "/dev/shm", "/var/cache/polyvivid"}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["spec"]["configMap"]["name"] == names(t)["ConfigMap"] == "demo-train-spec"
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}  # 8Gi a GPU
    assert volumes["weights-cache"]["emptyDir"] == {"sizeLimit": "200Gi"}  # the pod's own: in its ephemeral storage
    assert env["POLYVIVID_CACHE"]["value"] == "/var/cache/polyvivid" and env["OMP_NUM_THREADS"]["value"] == "12"
    assert pod["spec"]["terminationGracePeriodSeconds"] == 900
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_a_cpu_trainjob_has_one_process_and_no_gpus():
    job = render_trainjob(training())  # the demo: 1 node, 0 GPUs
    assert upstream_errors(job) == []
    assert job["spec"]["trainer"]["numProcPerNode"] == 1
    assert job["spec"]["trainer"]["resourcesPerNode"]["limits"] == {"cpu": "4", "memory": "16Gi"}
    assert "nvidia.com/gpu" not in yaml.safe_dump(job)


def test_pod_essentials_pass_through_to_both_backends():
    """Resources, /dev/shm, env with the NCCL preset (a spec.env name wins), envFrom (PyTorchJob only),
    the grace period, pull secrets, service account and a shared weights cache."""
    from polyvivid_operator.children.pytorchjob import render_pytorchjob

    changes = dict(
        resources={"nodes": 2, "gpusPerNode": 8, "cpusPerNode": 64, "memoryPerNode": "1Ti", "shmSize": "128Gi",
                   "ephemeralStorage": "20Gi", "extended": {"rdma/rdma_shared_device_a": 1}},
        globalBatchSize=16, network="infiniband", terminationGracePeriodSeconds=1800,
        env=[{"name": "NCCL_IB_HCA", "value": "mlx5_0,mlx5_1"},
             {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}}}],
        scheduling={"imagePullSecrets": ["regcred"], "serviceAccountName": "trainer"},
        weightsCache={"persistentVolumeClaim": "hf-weights"})
    job = render_trainjob(training(**changes))
    v1 = render_pytorchjob(training(backend="pytorchjob", envFrom=[{"configMapRef": {"name": "extra"}}], **changes))
    assert upstream_errors(job) == [] and upstream_errors(v1) == []
    v1_pod = v1["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]
    (v1_container,) = v1_pod["spec"]["containers"]
    for resources, env, pod in ((job["spec"]["trainer"]["resourcesPerNode"], job["spec"]["trainer"]["env"],
                                 pod_patch(job)), (v1_container["resources"], v1_container["env"], v1_pod)):
        assert resources["limits"] == {"cpu": "64", "memory": "1Ti", "nvidia.com/gpu": 8, "rdma/rdma_shared_device_a": 1}
        assert resources["requests"]["ephemeral-storage"] == "20Gi"  # the cache is a PVC: not the pod's storage
        values = {e["name"]: e.get("value", e.get("valueFrom")) for e in env}
        assert [e["name"] for e in env].count("NCCL_IB_HCA") == 1 and values["NCCL_IB_HCA"] == "mlx5_0,mlx5_1"
        assert values["NCCL_NET_GDR_LEVEL"] == "PHB" and values["NCCL_IB_DISABLE"] == "0"  # the preset's others
        assert values["WANDB_API_KEY"] == {"secretKeyRef": {"name": "wandb", "key": "key"}}
        assert values["OMP_NUM_THREADS"] == "8"  # 64 cores for 8 processes
        spec = pod["spec"]
        assert spec["terminationGracePeriodSeconds"] == 1800
        assert spec["imagePullSecrets"] == [{"name": "regcred"}] and spec["serviceAccountName"] == "trainer"
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["weights-cache"] == {"name": "weights-cache", "persistentVolumeClaim": {"claimName": "hf-weights"}}
        assert volumes["dshm"]["emptyDir"]["sizeLimit"] == "128Gi"
    assert v1_container["envFrom"] == [{"configMapRef": {"name": "extra"}}]
    tcp = {e["name"]: e.get("value") for e in render_trainjob(training(network="tcp"))["spec"]["trainer"]["env"]}
    assert tcp["NCCL_IB_DISABLE"] == "1" and tcp["NCCL_SOCKET_IFNAME"] == "eth0"
    with pytest.raises(ValueError, match="shmSize 64Gi is more than half of memoryPerNode 100Gi"):
        PolyVividTraining.model_validate(training(resources={"gpusPerNode": 8, "memoryPerNode": "100Gi"}))


def test_what_a_trainjob_cannot_carry_is_refused_with_the_way_out():
    config = OperatorConfig()
    check_training(PolyVividTraining.model_validate(training()).spec, config)
    with pytest.raises(InvalidSpec, match=r"^spec.scheduling.priorityClass: .*workloadPriorityClass, or spec.backend: "
                                          r"pytorchjob$"):
        check_training(PolyVividTraining.model_validate(training(scheduling={"priorityClass": "high"})).spec, config)
    with pytest.raises(InvalidSpec, match=r"^spec.metricsPort: .* use 9090 or 0"):
        check_training(PolyVividTraining.model_validate(training(metricsPort=9100)).spec, config)
    with pytest.raises(InvalidSpec, match=r"^spec.envFrom: a TrainJob .* takes env only"):
        check_training(PolyVividTraining.model_validate(training(envFrom=[{"secretRef": {"name": "s"}}])).spec, config)
    check_training(PolyVividTraining.model_validate(training(metricsPort=9100, backend="pytorchjob")).spec, config)


def test_the_chart_installs_the_runtime_the_trainjobs_reference():
    (runtime,) = [o for o in render_chart() if o["kind"] == "ClusterTrainingRuntime"]
    assert upstream_errors(runtime) == []
    assert runtime["metadata"]["name"] == OperatorConfig().training_runtime
    assert runtime["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == RUNTIME_JOB
    assert job["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    (container,) = job["template"]["spec"]["template"]["spec"]["containers"]
    assert container["name"] == RUNTIME_CONTAINER and container["securityContext"]["runAsNonRoot"] is True
    assert {"name": "metrics", "containerPort": 9090} in container["ports"]
    deployment = next(o for o in render_chart() if o["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POLYVIVID_TRAINING_RUNTIME"] == runtime["metadata"]["name"]
    assert not [o for o in render_chart({"trainingRuntime": {"install": False}}) if o["kind"] == "ClusterTrainingRuntime"]


def test_kueue_children_are_created_suspended_and_spec_suspend_holds_them_out_of_the_queue():
    """With a queue: the label, suspend true on create (then Kueue's, see the emulator test). spec.suspend: no
    label (out of Kueue's queue, which would start it again) and suspend true, for every kind."""
    from polyvivid_operator.children import rayjob, rayservice
    from polyvivid_operator.children.common import KUEUE_QUEUE_LABEL, kueue_owned_paths

    from .test_ray_children import curation, service

    queued = render_trainjob(training(scheduling={"queue": "research", "workloadPriorityClass": "urgent"}))
    assert queued["spec"]["suspend"] is True and queued["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "research"
    assert queued["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "urgent"  # Kueue's admission order
    assert kueue_owned_paths(queued) == [("spec", "suspend")]
    plain = render_trainjob(training())
    assert plain["spec"]["suspend"] is False and kueue_owned_paths(plain) == []
    held = render_trainjob(training(scheduling={"queue": "research", "workloadPriorityClass": "urgent"}, suspend=True))
    assert held["spec"]["suspend"] is True and KUEUE_QUEUE_LABEL not in held["metadata"]["labels"]
    assert "kueue.x-k8s.io/priority-class" not in held["metadata"]["labels"]
    assert kueue_owned_paths(held) == []  # ours to set: true until spec.suspend is false again
    job = rayjob.render_rayjob(curation(scheduling={"queue": "data"}))
    assert job["spec"]["suspend"] is True and kueue_owned_paths(job) == [("spec", "suspend")]
    assert rayjob.render_rayjob(curation(suspend=True))["spec"]["suspend"] is True
    svc = rayservice.render_rayservice(service(suspend=True))
    assert svc["spec"]["rayClusterConfig"]["suspend"] is True and upstream_errors(svc) == []
    assert "suspend" not in rayservice.render_rayservice(service())["spec"]["rayClusterConfig"]
    queued_service = rayservice.render_rayservice(service(scheduling={"queue": "serving"}))  # Kueue's rayservice integration
    assert queued_service["spec"]["rayClusterConfig"]["suspend"] is True
    assert kueue_owned_paths(queued_service) == [("spec", "rayClusterConfig", "suspend")]
    for child in (queued, held, job):
        assert upstream_errors(child) == []


def test_a_queued_service_must_not_autoscale():
    from polyvivid.api.service import ServiceSpec
    from polyvivid_operator.validation import check_service

    from .test_ray_children import service

    body = service(scheduling={"queue": "serving"}, replicas={"min": 1, "max": 4, "gpusPerReplica": 1},
                   worker={"gpus": 1, "cpus": 8, "memory": "96Gi"})["spec"]
    with pytest.raises(InvalidSpec, match=r"^spec.replicas: with a Kueue queue .* set min = max \(now 1 and 4\)"):
        check_service(ServiceSpec.model_validate(body), OperatorConfig())
    fixed = ServiceSpec.model_validate({**body, "replicas": {"min": 2, "max": 2, "gpusPerReplica": 1}})
    check_service(fixed, OperatorConfig())
