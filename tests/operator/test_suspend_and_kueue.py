"""spec.suspend and Kueue (issue 23, item 3), through the real operator and the API emulator.

- A queued child is created suspended with Kueue's label; once it exists its suspension is Kueue's: the
  operator's reconciles leave what Kueue set. spec.suspend takes the child out of the queue (no label,
  suspended); resuming puts it back, suspended, for Kueue to start.
- Suspending a training checkpoints it and resuming continues from the checkpoint: the test plays Kubeflow
  Trainer with a real `polyvivid train` process as the pod (SIGTERM when the TrainJob is suspended, a new
  process when it is not), on a real S3 server.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import yaml

from polyvivid.data.synthetic import write_synthetic_dataset
from polyvivid.storage import open_store

from ..kube.client import wait_for
from ..train.conftest import s3_worker_env
from ..train.conftest import training_manifest as tiny_training
from .test_training_reconcile import job_status, ready, training_manifest

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def test_kueue_owns_a_queued_childs_suspension_and_spec_suspend_takes_it_out_of_the_queue(kube, operator):
    kube.create(training_manifest("s3://runs/q", name="queued", scheduling={"queue": "research"}))
    job = wait_for(lambda: kube.get("TrainJob", "queued-train"), what="the TrainJob")
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"][QUEUE_LABEL] == "research"
    kube.set_status("TrainJob", "queued-train", {"conditions": [
        {"type": "Suspended", "status": "True", "reason": "Suspended", "message": "", "lastTransitionTime": "2026-12-06T00:00:00Z"}]})
    waiting = wait_for(lambda: (t := kube.get("PolyVividTraining", "queued")) and ready(t).get("reason") == "QueuedInKueue" and t,
                       what="the queued message")
    assert waiting["status"]["phase"] == "Pending" and "LocalQueue research" in ready(waiting)["message"]

    # Kueue admits it: it unsuspends the TrainJob. A reconcile (a spec change) leaves Kueue's value alone.
    kube.patch("TrainJob", "queued-train", {"spec": {"suspend": False}})
    kube.patch("PolyVividTraining", "queued", {"spec": {"seed": 7}})
    wait_for(lambda: ready(kube.get("PolyVividTraining", "queued")).get("observedGeneration") == 2)
    time.sleep(2)  # and the timer's reconciles after it
    assert kube.get("TrainJob", "queued-train")["spec"]["suspend"] is False

    # spec.suspend: out of Kueue's queue (which would start it again) and suspended by the operator
    kube.patch("PolyVividTraining", "queued", {"spec": {"suspend": True}})
    held = wait_for(lambda: (j := kube.get("TrainJob", "queued-train"))["spec"]["suspend"] is True and j)
    assert QUEUE_LABEL not in held["metadata"]["labels"]
    suspended = wait_for(lambda: (t := kube.get("PolyVividTraining", "queued"))["status"]["phase"] == "Suspended" and t)
    assert ready(suspended)["reason"] == "Suspended" and "set spec.suspend: false to resume" in ready(suspended)["message"]
    # resumed: back in the queue, still suspended: Kueue starts it when the quota allows
    kube.patch("PolyVividTraining", "queued", {"spec": {"suspend": False}})
    back = wait_for(lambda: (j := kube.get("TrainJob", "queued-train"))["metadata"]["labels"].get(QUEUE_LABEL) and j)
    assert back["spec"]["suspend"] is True


def _pod(manifest: dict, env: dict) -> subprocess.Popen:
    """A training pod: `polyvivid train` on the manifest the ConfigMap holds."""
    return subprocess.Popen([sys.executable, "-m", "polyvivid.cli", "train", manifest], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_suspending_a_training_checkpoints_it_and_resuming_continues_from_the_checkpoint(
        kube, operator, s3_bucket, s3_env, tmp_path):
    data, out = f"{s3_bucket}/data", f"{s3_bucket}/run"
    write_synthetic_dataset(open_store(data), videos=6, seed=0, size=32, frames=9)
    manifest = tiny_training(data, out, steps=(40, 0), low_res=0, checkpointInterval=1000, progressInterval=1)
    manifest["metadata"] = {"name": "pause", "namespace": "ml"}
    kube.create(manifest)
    config = wait_for(lambda: kube.get("ConfigMap", "pause-train-spec"), what="the spec ConfigMap")
    spec_file = tmp_path / "training.yaml"
    spec_file.write_text(config["data"]["training.yaml"])
    env = s3_worker_env(s3_env)
    progress = lambda: yaml.safe_load(open_store(out).read_text("progress.json"))  # noqa: E731

    assert wait_for(lambda: kube.get("TrainJob", "pause-train"))["spec"]["suspend"] is False
    pod = _pod(str(spec_file), env)  # Trainer starts the pod
    try:
        kube.set_status("TrainJob", "pause-train", job_status("Running", "2026-12-06T00:01:00Z"))
        wait_for(lambda: open_store(out).exists("progress.json") and progress().get("step", 0) >= 3, 120, 0.2,
                 "three steps")

        kube.patch("PolyVividTraining", "pause", {"spec": {"suspend": True}})
        wait_for(lambda: kube.get("TrainJob", "pause-train")["spec"]["suspend"] is True, what="the TrainJob suspended")
        pod.send_signal(signal.SIGTERM)  # JobSet deletes the pods of a suspended TrainJob: SIGTERM
        log = pod.communicate(timeout=60)[0]
        assert pod.returncode == 143, log[-2000:]
        stopped = progress()
        assert stopped["status"] == "preempted"
        checkpoint = open_store(out).read_text("checkpoints/latest")
        assert checkpoint == f"step-{stopped['step']:08d}" and stopped["step"] < 40
        kube.set_status("TrainJob", "pause-train", {"conditions": [
            {"type": "Suspended", "status": "True", "reason": "Suspended", "message": "",
             "lastTransitionTime": "2026-12-06T00:02:00Z"}]})
        wait_for(lambda: kube.get("PolyVividTraining", "pause")["status"]["phase"] == "Suspended")

        kube.patch("PolyVividTraining", "pause", {"spec": {"suspend": False}})
        wait_for(lambda: kube.get("TrainJob", "pause-train")["spec"]["suspend"] is False, what="the TrainJob resumed")
        pod = _pod(str(spec_file), env)  # Trainer starts the pods again
        log = pod.communicate(timeout=300)[0]
        assert pod.returncode == 0, log[-2000:]
    finally:
        if pod.poll() is None:
            pod.kill()
            pod.wait()
    done = progress()
    assert done["status"] == "succeeded" and done["step"] == 40
    assert f"resumed from checkpoints/{checkpoint} at step {stopped['step']}" in log, log[-2000:]
    first = next(line for line in log.splitlines() if " step " in line and "/40 " in line)
    assert f" step {stopped['step'] + 1}/40 " in first, first  # not from step 1
