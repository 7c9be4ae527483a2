"""PolyVividTraining through the real operator and an API server over HTTP: create -> TrainJob (or, with
spec.backend pytorchjob, PyTorchJob) and ConfigMap with owner references; the test plays Kubeflow Trainer
(writes the job's status) and the workload (writes progress.json to a real S3 server) and the training's
status follows; update; delete; restart without duplicates; specs that are still wrong after the schema."""

from __future__ import annotations

import json
import time

import yaml

from polyvivid.storage import open_store

from ..kube.client import wait_for
from ..openapi import ROOT, upstream_errors
from .conftest import running_operator


def training_manifest(output: str, name: str = "demo", **spec) -> dict:
    manifest = yaml.safe_load((ROOT / "manifests" / "examples" / "demo-training.yaml").read_text())
    manifest["metadata"] = {"name": name, "namespace": "ml"}
    manifest["spec"].update(output=output, **spec)
    return manifest


def ready(obj: dict | None) -> dict:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions", []) if c["type"] == "Ready"), {})


def job_condition(type_: str, at: str) -> dict:
    """A PyTorchJob's status (training-operator v1): its conditions, the latest true one last."""
    return {"conditions": [{"type": "Created", "status": "True", "lastTransitionTime": "2026-11-24T00:00:00Z"},
                           {"type": type_, "status": "True", "reason": f"PyTorchJob{type_}", "lastTransitionTime": at}]}


def job_status(state: str, at: str) -> dict:
    """A TrainJob's status (Trainer v2.3) as its controller writes it: Running is a Job with active pods,
    Succeeded the Complete condition, Failed the Failed one."""
    jobs = [{"name": "node", "ready": 1 if state == "Running" else 0, "succeeded": int(state == "Succeeded"),
             "failed": int(state == "Failed"), "active": 1 if state == "Running" else 0, "suspended": 0}]
    condition = {"Succeeded": "Complete", "Failed": "Failed"}.get(state)
    conditions = [{"type": condition, "status": "True", "reason": f"Jobs{condition}", "message": "",
                   "lastTransitionTime": at}] if condition else []
    return {"jobsStatus": jobs, **({"conditions": conditions} if conditions else {})}


def test_training_lifecycle_create_status_update_delete(kube, s3_bucket, operator):
    out = f"{s3_bucket}/run"
    store = open_store(out)
    created = kube.create(training_manifest(out))
    job = wait_for(lambda: kube.get("TrainJob", "demo-train"), what="the TrainJob")
    assert upstream_errors(job) == []
    assert job["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    assert job["spec"]["trainer"]["image"] == "registry.test/polyvivid:ci"
    cm = kube.get("ConfigMap", "demo-train-spec")
    assert yaml.safe_load(cm["data"]["training.yaml"])["spec"]["output"] == out
    pending = wait_for(lambda: (t := kube.get("PolyVividTraining", "demo")) and (t.get("status") or {}).get("phase") and t)
    assert pending["status"]["phase"] == "Pending" and pending["status"]["trainJob"] == "demo-train"
    assert ready(pending)["observedGeneration"] == 1

    # the training operator starts it; the pods first precompute the inputs (spec.precompute), then train
    store.write_text("progress.json", json.dumps({"status": "precomputing", "total_steps": 8,
                                                   "precompute": {"samples": 40, "done": 16}}))
    kube.set_status("TrainJob", "demo-train", job_status("Running", "2026-11-24T00:01:00Z"))
    wait_for(lambda: ready(kube.get("PolyVividTraining", "demo"))["message"] ==
             "precomputing the inputs before the first step (16 of 40 samples)", what="the precomputing message")
    store.write_text("progress.json", json.dumps({"status": "running", "step": 3, "total_steps": 8, "loss": 0.25,
                                                   "step_seconds": 2.5,
                                                   "stage": "identity", "last_checkpoint": "step-00000002",
                                                   "precomputed": {"uri": f"{out}/precomputed/0123", "samples": 40}}))
    running = wait_for(lambda: (t := kube.get("PolyVividTraining", "demo"))["status"].get("step") == 3 and t,
                       what="progress in the status")
    assert running["status"]["phase"] == "Running" and running["status"]["loss"] == 0.25
    assert running["status"]["stage"] == "identity" and running["status"]["latestCheckpoint"] == "step-00000002"
    assert running["status"]["precomputedInputs"] == f"{out}/precomputed/0123"
    # progress as Trainer v2's trainerStatus: percent and the time left at the last step's pace
    total = running["status"]["totalSteps"]
    assert running["status"]["progressPercentage"] == int(100 * 3 / total)
    assert running["status"]["estimatedRemainingSeconds"] == round((total - 3) * 2.5)
    # a condition for each phase, True for the current one (and Ready)
    conditions = {c["type"]: c for c in running["status"]["conditions"]}
    assert set(conditions) == {"Ready", "Waiting", "Pending", "Running", "Suspended", "Succeeded", "Failed", "Invalid"}
    assert [t for t, c in conditions.items() if c["status"] == "True"] == ["Running"]
    assert conditions["Pending"]["reason"] == "PhaseRunning"

    # a spec change reaches the children (generation 2 observed). A TrainJob's trainer is immutable (the
    # emulator refuses the change, as the upstream CRD's CEL does): the TrainJob is replaced, its pods
    # checkpoint on SIGTERM and the new one resumes
    first_uid = kube.get("TrainJob", "demo-train")["metadata"]["uid"]
    kube.patch("PolyVividTraining", "demo", {"spec": {"resources": {"nodes": 2, "gpusPerNode": 2}, "globalBatchSize": 4}})
    job = wait_for(lambda: (j := kube.get("TrainJob", "demo-train")) and j["spec"]["trainer"]["numProcPerNode"] == 2 and j,
                   what="the TrainJob replaced")
    assert job["spec"]["trainer"]["numNodes"] == 2 and job["metadata"]["uid"] != first_uid
    kube.set_status("TrainJob", "demo-train", job_status("Running", "2026-11-24T00:01:30Z"))
    wait_for(lambda: ready(kube.get("PolyVividTraining", "demo")).get("observedGeneration") == 2)

    # the evaluation stage (spec.evaluation) runs after the last step: the message says so
    store.write_text("progress.json", json.dumps({"status": "evaluating", "step": 8, "loss": 0.1,
                                                   "final": f"{out}/final"}))
    wait_for(lambda: ready(kube.get("PolyVividTraining", "demo"))["message"].startswith("evaluating the final weights"),
             what="the evaluating message")

    # done: final weights with a version, the evaluation's numbers, Ready=True, an Event for each transition
    evaluation = {"metrics": {"clip_b": 0.31, "temporal_consistency": 0.97}, "report": f"{out}/eval/report.json",
                  "videos": 2, "cases": 2}
    store.write_text("progress.json", json.dumps({"status": "succeeded", "step": 8, "loss": 0.1, "stage": "interaction",
                                                   "final": f"{out}/final", "updated_at": "2026-11-24T01:00:00+00:00",
                                                   "evaluation": evaluation}))
    kube.set_status("TrainJob", "demo-train", job_status("Succeeded", "2026-11-24T01:00:01Z"))
    done = wait_for(lambda: (t := kube.get("PolyVividTraining", "demo"))["status"]["phase"] == "Succeeded" and t)
    assert done["status"]["finalWeights"] == {"uri": f"{out}/final", "version": "2026-11-24T01:00:00+00:00"}
    assert done["status"]["evaluation"] == evaluation
    assert ready(done)["status"] == "True"
    events = wait_for(lambda: [e for e in kube.list("Event") if e["involvedObject"]["name"] == "demo"
                               and "Succeeded" in e["message"]], what="an Event")
    assert "Running -> Succeeded" in events[0]["message"]

    # deleting the training removes its children (owner references)
    kube.delete("PolyVividTraining", "demo")
    wait_for(lambda: kube.get("PolyVividTraining", "demo") is None, what="the training to go")
    wait_for(lambda: kube.get("TrainJob", "demo-train") is None and kube.get("ConfigMap", "demo-train-spec") is None,
             what="the children to go")


def test_a_pytorchjob_backend_training_follows_its_pytorchjob(kube, s3_bucket, operator):
    """spec.backend pytorchjob: the v1 child, its conditions read into the training's status."""
    out = f"{s3_bucket}/v1"
    kube.create(training_manifest(out, name="v1", backend="pytorchjob"))
    job = wait_for(lambda: kube.get("PyTorchJob", "v1-train"), what="the PyTorchJob")
    assert upstream_errors(job) == [] and kube.get("TrainJob", "v1-train") is None
    open_store(out).write_text("progress.json", json.dumps({"status": "running", "step": 2, "total_steps": 8}))
    kube.set_status("PyTorchJob", "v1-train", job_condition("Running", "2026-11-24T00:01:00Z"))
    running = wait_for(lambda: (t := kube.get("PolyVividTraining", "v1"))["status"].get("step") == 2 and t)
    assert running["status"]["phase"] == "Running" and running["status"]["pytorchJob"] == "v1-train"
    assert "trainJob" not in running["status"]
    kube.set_status("PyTorchJob", "v1-train", job_condition("Failed", "2026-11-24T00:02:00Z"))
    failed = wait_for(lambda: (t := kube.get("PolyVividTraining", "v1"))["status"]["phase"] == "Failed" and t)
    assert ready(failed)["message"].startswith("the PyTorchJob failed")


def test_a_restarted_operator_creates_no_duplicates_and_changes_nothing(kube, apiserver, monkeypatch):
    with running_operator(monkeypatch):
        kube.create(training_manifest("s3://runs/restart"))
        wait_for(lambda: (kube.get("PolyVividTraining", "demo").get("status") or {}).get("phase") == "Pending")
    job_before = kube.get("TrainJob", "demo-train")
    status_before = kube.get("PolyVividTraining", "demo")["status"]
    gets_before = apiserver.api.requests_by_verb.get("GET", 0)
    with running_operator(monkeypatch):
        wait_for(lambda: apiserver.api.requests_by_verb.get("GET", 0) > gets_before, what="the new operator's reads")
        time.sleep(3)  # several timer ticks and the resume
    assert len(kube.list("TrainJob")) == 1 and len(kube.list("ConfigMap")) == 1
    job_after = kube.get("TrainJob", "demo-train")
    assert job_after["metadata"]["resourceVersion"] == job_before["metadata"]["resourceVersion"]
    assert kube.get("PolyVividTraining", "demo")["status"]["conditions"] == status_before["conditions"]


def test_invalid_specs_get_a_reason_and_no_children(kube, operator):
    out = "s3://runs/invalid"
    cases = {
        "no-secret": ({"storage": {"secretRef": {"name": "missing-creds"}}}, "Secret 'missing-creds' not found"),
        "no-curation": ({"dataset": {"curationJob": "nope"}}, "CurationJob 'nope' not found"),
        "too-many-gpus": ({"resources": {"nodes": 1, "gpusPerNode": 16}}, "16 GPUs per node requested"),
        "two-models": ({"model": {"preset": "tiny", "hunyuanvideo": "s3://b/hv", "llava": "s3://b/ll"}},
                       "give either preset, or hunyuanvideo and llava"),
        # what a TrainJob's runtime patch cannot carry (Trainer v2.3): refused with the way out
        "priority": ({"scheduling": {"priorityClass": "high"}}, "a TrainJob (Kubeflow Trainer v2.3) cannot set its "
                                                                 "pods' priority class"),
        "metrics-port": ({"metricsPort": 9100}, "spec.metricsPort: a TrainJob's pods declare the training runtime's "
                                                "metrics port, 9090"),
    }
    for name, (spec, _) in cases.items():
        kube.create(training_manifest(out, name=name, **spec))
    for name, (_, message) in cases.items():
        t = wait_for(lambda: (t := kube.get("PolyVividTraining", name)) and ready(t).get("reason") and t, what=name)
        assert t["status"]["phase"] == "Invalid", name
        assert ready(t)["status"] == "False" and ready(t)["reason"] == "InvalidSpec", name
        assert message in ready(t)["message"], (name, ready(t)["message"])
        assert kube.get("TrainJob", f"{name}-train") is None, name
    def warned() -> set[str]:  # kopf posts Events from a queue, shortly after the status write
        return {e["involvedObject"]["name"] for e in kube.list("Event")
                if e["type"] == "Warning" and e["reason"] == "InvalidSpec"}

    wait_for(lambda: warned() == set(cases), what="a Warning Event per invalid training")

    # fixing the spec (creating the Secret) lets it run
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "missing-creds"},
                 "data": {"AWS_ACCESS_KEY_ID": "YQ==", "AWS_SECRET_ACCESS_KEY": "Yg=="}})
    wait_for(lambda: kube.get("TrainJob", "no-secret-train"), what="the TrainJob once the Secret exists")
