"""Deadlines and cleanup (issue 23, item 4): activeDeadlineSeconds reaches every job kind, a deadline's failure
names itself, and ttlSecondsAfterFinished deletes a finished run's children without starting it again."""

from __future__ import annotations

import time

from polyvivid_operator.children import pytorchjob, rayjob, trainjob

from ..kube.client import wait_for
from ..openapi import upstream_errors
from .test_ray_children import curation
from .test_trainjob import training
from .test_training_reconcile import ready, training_manifest


def test_active_deadline_seconds_reaches_every_job_kind():
    assert trainjob.render_trainjob(training(activeDeadlineSeconds=86400))["spec"]["activeDeadlineSeconds"] == 86400
    v1 = pytorchjob.render_pytorchjob(training(activeDeadlineSeconds=600, backend="pytorchjob"))
    assert v1["spec"]["runPolicy"]["activeDeadlineSeconds"] == 600
    job = rayjob.render_rayjob(curation(activeDeadlineSeconds=3600))
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    for child in (trainjob.render_trainjob(training(activeDeadlineSeconds=86400)), v1, job):
        assert upstream_errors(child) == []
    assert "activeDeadlineSeconds" not in trainjob.render_trainjob(training())["spec"]


def test_a_finished_training_loses_its_children_after_the_ttl_and_is_not_run_again(kube, operator):
    kube.create(training_manifest("s3://runs/ttl", name="ttl", ttlSecondsAfterFinished=2))
    wait_for(lambda: kube.get("TrainJob", "ttl-train"), what="the TrainJob")
    kube.set_status("TrainJob", "ttl-train", {"conditions": [
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "the deadline passed",
         "lastTransitionTime": "2026-12-06T01:00:00Z"}]})
    failed = wait_for(lambda: (t := kube.get("PolyVividTraining", "ttl"))["status"]["phase"] == "Failed" and t)
    assert ready(failed)["reason"] == "DeadlineExceeded" and failed["status"]["finishedAt"]
    gone = wait_for(lambda: kube.get("TrainJob", "ttl-train") is None and kube.get("ConfigMap", "ttl-train-spec") is None,
                    timeout=30, what="the children deleted after the TTL")
    assert gone
    kept = wait_for(lambda: (t := kube.get("PolyVividTraining", "ttl"))["status"].get("childrenDeleted") and t)
    assert kept["status"]["phase"] == "Failed" and ready(kept)["reason"] == "ChildrenDeleted"
    assert kept["status"]["finishedAt"] == failed["status"]["finishedAt"]
    assert "after ttlSecondsAfterFinished (2 s)" in ready(kept)["message"]
    time.sleep(3)  # several reconciles: nothing is created again
    assert kube.get("TrainJob", "ttl-train") is None and kube.get("ConfigMap", "ttl-train-spec") is None

    # a spec change is a new run
    kube.patch("PolyVividTraining", "ttl", {"spec": {"seed": 3}})
    wait_for(lambda: kube.get("TrainJob", "ttl-train"), what="the TrainJob of the new run")
    again = wait_for(lambda: (t := kube.get("PolyVividTraining", "ttl"))["status"]["phase"] == "Pending" and t)
    assert "finishedAt" not in again["status"] and "childrenDeleted" not in again["status"]
