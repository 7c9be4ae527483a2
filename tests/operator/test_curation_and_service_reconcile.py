"""CurationJob -> RayJob and PolyVividService -> RayService through the real operator, and the chain
between kinds: a training waits for its CurationJob and trains on its output; a service waits for its
training, serves its final weights and rolls out again when they change. The tests play KubeRay and
the training operator by writing the children's status, and the workloads by writing summary.json and
progress.json to a real S3 server."""

from __future__ import annotations

import json

import yaml

from polyvivid.storage import open_store

from ..kube.client import wait_for
from ..specs import with_random_models
from ..openapi import upstream_errors
from .test_training_reconcile import job_status, ready, training_manifest


def curation_manifest(output: str, name: str = "raw", **spec) -> dict:
    return {"apiVersion": "polyvivid.io/v1alpha1", "kind": "CurationJob", "metadata": {"name": name, "namespace": "ml"},
            "spec": with_random_models({"input": "s3://videos/raw/", "output": output, "workers": 2, **spec})}


def service_manifest(name: str = "demo", **spec) -> dict:
    """Open (allowUnauthenticated) unless the spec names a token Secret or says otherwise."""
    auth = {} if {"apiTokenSecretRef", "allowUnauthenticated"} & set(spec) else {"allowUnauthenticated": True}
    return {"apiVersion": "polyvivid.io/v1alpha1", "kind": "PolyVividService", "metadata": {"name": name, "namespace": "ml"},
            "spec": {"model": {"preset": "tiny"}, "output": "s3://jobs/demo", **auth, **spec}}


def phase(kube, kind: str, name: str) -> str | None:
    return ((kube.get(kind, name) or {}).get("status") or {}).get("phase")


def test_curation_runs_as_a_rayjob_and_a_waiting_training_uses_its_output(kube, s3_bucket, operator):
    data = f"{s3_bucket}/curated"
    kube.create(training_manifest(f"{s3_bucket}/run", dataset={"curationJob": "raw"}))
    kube.create(curation_manifest(data))
    rayjob = wait_for(lambda: kube.get("RayJob", "raw-curate"), what="the RayJob")
    assert upstream_errors(rayjob) == []
    assert rayjob["spec"]["entrypoint"] == "polyvivid curate /etc/polyvivid/curation.yaml"
    assert rayjob["metadata"]["ownerReferences"][0]["kind"] == "CurationJob"
    assert kube.get("ConfigMap", "raw-curate-spec")
    training = wait_for(lambda: (t := kube.get("PolyVividTraining", "demo")) and ready(t).get("reason") and t)
    assert training["status"]["phase"] == "Waiting" and ready(training)["reason"] == "WaitingForCuration"
    assert kube.get("TrainJob", "demo-train") is None

    kube.set_status("RayJob", "raw-curate", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    wait_for(lambda: phase(kube, "CurationJob", "raw") == "Running")
    open_store(data).write_text("summary.json", json.dumps({"videos": 12, "clips_written": 30, "rejects": [{"clip": "a"}] * 5,
                                                   "stages": {"split": {"in": 12, "out": 35, "rejected": 0}}}))
    kube.set_status("RayJob", "raw-curate", {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
    done = wait_for(lambda: (c := kube.get("CurationJob", "raw"))["status"]["phase"] == "Succeeded" and c)
    assert (done["status"]["videos"], done["status"]["clipsWritten"], done["status"]["rejected"]) == (12, 30, 5)
    assert ready(done)["status"] == "True"

    job = wait_for(lambda: kube.get("TrainJob", "demo-train"), what="the training to start after curation")
    assert job["spec"]["trainer"]["command"][-2:] == ["--dataset", data]
    assert wait_for(lambda: kube.get("PolyVividTraining", "demo")["status"]["phase"] == "Pending")


def test_a_failed_rayjob_fails_the_curation_with_its_message(kube, operator):
    kube.create(curation_manifest("s3://datasets/d"))
    wait_for(lambda: kube.get("RayJob", "raw-curate"))
    kube.set_status("RayJob", "raw-curate", {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED",
                                             "message": "entrypoint exited with 2"})
    failed = wait_for(lambda: (c := kube.get("CurationJob", "raw"))["status"]["phase"] == "Failed" and c)
    assert ready(failed)["status"] == "False" and "exited with 2" in ready(failed)["message"]
    assert wait_for(lambda: [e for e in kube.list("Event") if e["type"] == "Warning" and e["involvedObject"]["name"] == "raw"])


def test_invalid_curation_and_service_specs_get_a_reason_and_no_children(kube, operator):
    kube.create(curation_manifest("s3://datasets/d", name="big-actor", worker={"gpus": 1},
                                  caption={"resources": {"gpus": 2}}))
    kube.create(service_manifest(name="no-training", model={"training": "missing"}))
    kube.create(service_manifest(name="no-token", apiTokenSecretRef={"name": "api-token"}))
    kube.create(service_manifest(name="huge-replica", replicas={"gpusPerReplica": 4}, worker={"gpus": 2}))
    expected = {("CurationJob", "big-actor"): "an actor needs 2.0 GPUs, a worker has 1",
                ("PolyVividService", "no-training"): "PolyVividTraining 'missing' not found",
                ("PolyVividService", "no-token"): "Secret 'api-token' not found",
                ("PolyVividService", "huge-replica"): "a replica needs 4.0 GPUs"}
    for (kind, name), message in expected.items():
        obj = wait_for(lambda: (o := kube.get(kind, name)) and ready(o).get("reason") and o, what=name)
        assert ready(obj)["reason"] == "InvalidSpec" and message in ready(obj)["message"], ready(obj)
        assert obj["status"]["phase"] == "Invalid"
    assert kube.list("RayJob") == [] and kube.list("RayService") == []


def test_service_waits_for_its_training_serves_its_weights_and_rolls_out_new_ones(kube, s3_bucket, operator):
    out = f"{s3_bucket}/run"
    store = open_store(out)
    kube.create(training_manifest(out))
    kube.create(service_manifest(model={"training": "demo"}, replicas={"min": 1, "max": 4, "gpusPerReplica": 1},
                                 worker={"gpus": 2}))
    waiting = wait_for(lambda: (s := kube.get("PolyVividService", "demo")) and ready(s).get("reason") and s)
    assert waiting["status"]["phase"] == "Waiting" and ready(waiting)["reason"] == "WaitingForTraining"
    assert kube.get("RayService", "demo") is None

    store.write_text("progress.json", json.dumps({"status": "succeeded", "step": 8, "final": f"{out}/final",
                                                  "updated_at": "2026-11-24T01:00:00+00:00"}))
    wait_for(lambda: kube.get("TrainJob", "demo-train"))
    kube.set_status("TrainJob", "demo-train", job_status("Succeeded", "2026-11-24T01:00:01Z"))
    rs = wait_for(lambda: kube.get("RayService", "demo"), what="the RayService after the training succeeded")
    assert upstream_errors(rs) == []
    (app,) = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    assert app["args"]["model"] == f"{out}/final" and app["args"]["model_version"] == "2026-11-24T01:00:00+00:00"
    group = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["maxReplicas"]) == (1, 2)

    deploying = wait_for(lambda: (s := kube.get("PolyVividService", "demo"))["status"]["phase"] == "Deploying" and s)
    assert deploying["status"]["endpoint"] == "http://demo-serve-svc.ml.svc:8000"
    kube.set_status("RayService", "demo", {"serviceStatus": "Running", "numServeEndpoints": 2,
                                           "conditions": [{"type": "Ready", "status": "True", "reason": "RayServiceReady",
                                                           "lastTransitionTime": "2026-11-24T01:05:00Z"}]})
    served = wait_for(lambda: (s := kube.get("PolyVividService", "demo"))["status"]["phase"] == "Ready" and s)
    assert served["status"]["readyReplicas"] == 2 and ready(served)["status"] == "True"

    # retrained: new final weights -> the serve config changes (KubeRay rolls the application out)
    store.write_text("progress.json", json.dumps({"status": "succeeded", "step": 8, "final": f"{out}/final",
                                                  "updated_at": "2026-11-25T09:00:00+00:00"}))
    rolled = wait_for(lambda: "2026-11-25T09:00:00" in kube.get("RayService", "demo")["spec"]["serveConfigV2"]
                      and kube.get("RayService", "demo"), what="the new weights in serveConfigV2")
    assert yaml.safe_load(rolled["spec"]["serveConfigV2"])["applications"][0]["args"]["model"] == f"{out}/final"
    assert len(kube.list("RayService")) == 1

    kube.delete("PolyVividService", "demo")
    wait_for(lambda: kube.get("RayService", "demo") is None, what="the RayService to go with its owner")
