"""Helpers for training runs: a synthetic dataset, a small spec, real torchrun subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from polyvivid.data.synthetic import write_synthetic_dataset
from polyvivid.storage import open_store

RES_FULL = {"height": 32, "width": 32, "frames": 5}
RES_LOW = {"height": 16, "width": 16, "frames": 5}


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("synth-train")
    # 12 clips: 1, 2, 3 subjects in turn, so each stage has its own (identity: one subject)
    write_synthetic_dataset(open_store(str(root)), videos=12, seed=0, size=32, frames=9)
    return str(root)


def training_manifest(dataset: str, output: str, steps=(2, 2), low_res=1, parallelism="ddp", **spec) -> dict:
    stages = [
        {"name": name, "steps": n, "lowResSteps": low_res, "maxSubjects": subjects, "resolution": RES_FULL,
         "lowResolution": RES_LOW}
        for name, n, subjects in (("identity", steps[0], 1), ("interaction", steps[1], 3)) if n
    ]
    body = {
        "model": {"preset": "tiny"}, "dataset": {"uri": dataset}, "output": output, "stages": stages,
        "lora": {"rank": 4, "alpha": 4}, "optimizer": {"learningRate": 1e-3, "warmupSteps": 0},
        "globalBatchSize": 2, "resources": {"nodes": 1, "gpusPerNode": 0}, "precision": "fp32",
        "parallelism": parallelism, "activationCheckpointing": False, "checkpointInterval": 2,
        "progressInterval": 1, "metricsPort": 0,
        "dataLoader": {"workers": 0},  # in the training process: tests opt in to worker processes (they take seconds to start)
    }
    body.update(spec)
    return {"apiVersion": "polyvivid.io/v1alpha1", "kind": "PolyVividTraining", "metadata": {"name": "t"},
            "spec": body}


def write_spec(path: Path, manifest: dict) -> Path:
    path.write_text(yaml.safe_dump(manifest))
    return path


def worker_env(extra: dict | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "POLYVIVID_RETRY_DELAY_S": "0.05"}
    env.update(extra or {})
    return env


def s3_worker_env(s3: dict) -> dict:
    return worker_env({"POLYVIVID_S3_ENDPOINT": s3["endpoint"], "AWS_ACCESS_KEY_ID": s3["access_key"],
                       "AWS_SECRET_ACCESS_KEY": s3["secret_key"]})


def polyvivid(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polyvivid.cli", *args], capture_output=True, text=True,
                          env=env or worker_env(), timeout=timeout)


def progress(store_uri: str) -> dict:
    return json.loads(open_store(store_uri).read_text("progress.json"))


def children(pid: int) -> list[int]:
    """Direct children of a process (from /proc; no psutil needed)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def rank0_metrics_past_step(port: int, step: int) -> str | None:
    """Rank 0's /metrics text once polyvivid_train_step reached `step` (None before, or while unreachable)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    steps = [float(line.split()[-1]) for line in text.splitlines() if line.startswith("polyvivid_train_step ")]
    return text if steps and steps[0] >= step else None
