"""The operator reads progress.json from a real S3 server (SeaweedFS), its configured object store
(POLYVIVID_S3_ENDPOINT), with the credentials of the Secret the training names, not with any of its own
(none are in its environment here)."""

from __future__ import annotations

import base64
import json

from polyvivid.storage import open_store

from ..kube.client import wait_for
from .conftest import running_operator
from .test_training_reconcile import job_status, ready, training_manifest


def secret(name: str, access: str, key: str) -> dict:
    encode = lambda v: base64.b64encode(v.encode()).decode()  # noqa: E731
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "data": {"AWS_ACCESS_KEY_ID": encode(access), "AWS_SECRET_ACCESS_KEY": encode(key)}}


def test_progress_is_read_with_the_specs_secret(kube, apiserver, s3_bucket, s3_env, monkeypatch):
    output = f"{s3_bucket}/runs/demo"
    open_store(output).write_text("progress.json", json.dumps({"status": "running", "step": 5, "loss": 0.5,
                                                                "stage": "identity"}))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # POLYVIVID_S3_ENDPOINT stays: the configured store
        monkeypatch.delenv(var)
    kube.create(secret("s3-creds", s3_env["access_key"], s3_env["secret_key"]))
    kube.create(secret("wrong-creds", s3_env["access_key"], "not-the-key"))
    # "good" names the configured endpoint (compared normalised: the trailing slash does not matter), "bad"
    # none (the configured one is used)
    kube.create(training_manifest(output, name="good", storage={"endpoint": s3_env["endpoint"] + "/",
                                                                "secretRef": {"name": "s3-creds"}}))
    kube.create(training_manifest(output, name="bad", storage={"secretRef": {"name": "wrong-creds"}}))
    with running_operator(monkeypatch):
        for name in ("good", "bad"):
            wait_for(lambda: kube.get("TrainJob", f"{name}-train"))
            kube.set_status("TrainJob", f"{name}-train", job_status("Running", "2026-11-24T00:01:00Z"))
        good = wait_for(lambda: (t := kube.get("PolyVividTraining", "good"))["status"].get("step") == 5 and t,
                        what="progress read from S3")
        assert good["status"]["loss"] == 0.5 and good["status"]["stage"] == "identity"
        bad = wait_for(lambda: (t := kube.get("PolyVividTraining", "bad"))["status"].get("phase") == "Running" and t)
        assert "step" not in bad["status"] and "progress.json not readable" in ready(bad)["message"]
