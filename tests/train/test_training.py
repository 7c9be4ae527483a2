"""Training on CPU with real torchrun process groups (gloo), the tiny preset, synthetic data and
a real S3 server. Each run is a separate torchrun launch, as in a PyTorchJob pod."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

from polyvivid.storage import open_store
from tests.conftest import free_port
from tests.train.conftest import (
    children, polyvivid, progress, rank0_metrics_past_step, s3_worker_env, training_manifest, wait_for, worker_env,
    write_spec,
)


def stage_parts(history):
    """[(stage, resolution), ...] in the order they ran, repeats collapsed."""
    parts = []
    for _, _, stage, res in history:
        if not parts or parts[-1] != (stage, res):
            parts.append((stage, res))
    return parts


def test_ddp_and_fsdp2_on_two_processes_train_both_stages_into_s3(synth_dataset, s3_env, s3_bucket, tmp_path):
    histories = {}
    for mode in ("ddp", "fsdp"):
        output = f"{s3_bucket}/runs/{mode}"
        spec = write_spec(tmp_path / f"{mode}.yaml", training_manifest(synth_dataset, output, parallelism=mode,
                                                                        activationCheckpointing=True,
                                                                        dataLoader={"workers": 2}))
        result = polyvivid("train", str(spec), "--local", "--nproc", "2", env=s3_worker_env(s3_env))
        assert result.returncode == 0, result.stderr[-3000:]
        state = progress(output)
        assert state["status"] == "succeeded" and state["step"] == state["total_steps"] == 4
        assert state["world_size"] == 2
        assert stage_parts(state["history"]) == [("identity", "low"), ("identity", "full"),
                                                 ("interaction", "low"), ("interaction", "full")]
        keys = open_store(output).list()
        assert "checkpoints/latest" in keys
        assert {f"checkpoints/step-0000000{step}/manifest.json" for step in (2, 4)} <= set(keys)  # both complete
        assert {"final/polyvivid_weights.safetensors", "final/polyvivid_pipeline.json"} <= set(keys)
        histories[mode] = [row[1] for row in state["history"]]
    # Same seed, same samples, same noise: the two parallelisms (with activation checkpointing) compute
    # the same losses.
    assert np.allclose(histories["ddp"], histories["fsdp"], atol=1e-4)

    video = tmp_path / "from-final.mp4"
    result = polyvivid("generate", "--model", f"{s3_bucket}/runs/fsdp/final", "--prompt", "A red circle",
                       "--subject", f"circle={_subject_image(synth_dataset)}", "--steps", "2",
                       "--output", str(video), env=s3_worker_env(s3_env))
    assert result.returncode == 0, result.stderr[-2000:]
    assert video.stat().st_size > 0


def _subject_image(dataset: str) -> str:
    return os.path.join(dataset, open_store(dataset).list("subjects/")[0])


def test_two_nodes_rendezvous_over_c10d(synth_dataset, tmp_path):
    output = str(tmp_path / "out")
    spec = write_spec(tmp_path / "spec.yaml", training_manifest(synth_dataset, output, steps=(1, 1), low_res=0))
    port = free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=two-nodes",
               "-m", "polyvivid.cli", "train", str(spec)]
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=worker_env())
             for _ in range(2)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    state = progress(output)
    assert state["status"] == "succeeded" and state["world_size"] == 2


def test_killed_run_resumes_and_matches_an_uninterrupted_one(synth_dataset, tmp_path):
    # loader workers too: a killed rank's workers must die with it, or its peers wait on its open sockets
    manifest = lambda out: training_manifest(synth_dataset, out, steps=(6, 6), checkpointInterval=3,
                                             dataLoader={"workers": 2})
    reference = str(tmp_path / "reference")
    result = polyvivid("train", str(write_spec(tmp_path / "ref.yaml", manifest(reference))), "--local", "--nproc", "2")
    assert result.returncode == 0, result.stderr[-2000:]

    output = str(tmp_path / "interrupted")
    spec = write_spec(tmp_path / "run.yaml", manifest(output))
    launcher = subprocess.Popen([sys.executable, "-m", "polyvivid.cli", "train", str(spec), "--local", "--nproc", "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=worker_env())
    store = open_store(output)
    wait_for(lambda: store.exists("checkpoints/latest"), 120, "the first checkpoint")
    workers = wait_for(lambda: children(launcher.pid), 10, "workers")  # the launcher starts the ranks itself
    os.kill(workers[-1], signal.SIGKILL)
    first_log = launcher.communicate(timeout=120)[0]
    assert launcher.returncode != 0
    killed_at = int(store.read_text("checkpoints/latest").split("-")[1])
    assert 3 <= killed_at < 12, first_log[-2000:]

    resumed = polyvivid("train", str(spec), "--local", "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from checkpoints/step-{killed_at:08d} at step {killed_at}" in resumed.stderr
    assert f"step {killed_at}/12 " not in resumed.stderr and f"step {killed_at + 1}/12 " in resumed.stderr
    steps_after = [row[0] for row in progress(output)["history"]]
    assert steps_after[-1] == 12
    ref = {row[0]: row[1] for row in progress(reference)["history"]}
    got = {row[0]: row[1] for row in progress(output)["history"]}
    assert all(abs(got[s] - ref[s]) < 1e-4 for s in range(killed_at + 1, 13)), (got, ref)


def test_training_learns_on_synthetic_data(synth_dataset, tmp_path):
    from polyvivid.data.loader import SubjectVideoDataset
    from polyvivid.model.pipeline import PolyVividPipeline, load_pipeline
    from polyvivid.train.trainer import validation_loss

    output = str(tmp_path / "learn")
    manifest = training_manifest(synth_dataset, output, steps=(0, 40), low_res=0, globalBatchSize=4,
                                 optimizer={"learningRate": 3e-3, "warmupSteps": 0}, checkpointInterval=40,
                                 progressInterval=10)
    result = polyvivid("train", str(write_spec(tmp_path / "learn.yaml", manifest)))
    assert result.returncode == 0, result.stderr[-2000:]
    dataset = SubjectVideoDataset(synth_dataset)
    before = validation_loss(PolyVividPipeline.from_preset("tiny", lora_rank=4, lora_alpha=4.0), dataset,
                             range(12), 0, 5, 32, 32, 3)
    after = validation_loss(load_pipeline(f"{output}/final"), dataset, range(12), 0, 5, 32, 32, 3)
    assert after < 0.9 * before, (before, after)


def test_sigterm_checkpoints_and_exits_for_a_restart_and_metrics_are_served(synth_dataset, tmp_path):
    """SIGTERM -> the step ends -> a checkpoint is uploaded -> exit 143, within the pods' grace period
    (spec.terminationGracePeriodSeconds, the kubelet's SIGKILL after it): the path a preempted or suspended
    training pod takes."""
    output = str(tmp_path / "preempt")
    port = free_port()
    grace = 30
    spec = write_spec(tmp_path / "spec.yaml", training_manifest(
        synth_dataset, output, steps=(200, 0), low_res=0, checkpointInterval=1000, metricsPort=port,
        terminationGracePeriodSeconds=grace))
    proc = subprocess.Popen([sys.executable, "-m", "polyvivid.cli", "train", str(spec), "--metrics-addr", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=worker_env())

    metrics = wait_for(lambda: rank0_metrics_past_step(port, 2), 120, "metrics with two steps")
    for name in ("polyvivid_train_loss", "polyvivid_train_samples_per_second", "polyvivid_train_step_seconds",
                 "polyvivid_train_total_steps 200"):
        assert name in metrics
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    log = proc.communicate(timeout=120)[0]
    took = time.monotonic() - signalled
    assert proc.returncode == 143, log[-2000:]
    assert took < grace, f"SIGTERM to exit took {took:.1f} s, more than the {grace} s grace period"
    state = progress(output)
    assert state["status"] == "preempted" and 2 <= state["step"] < 200
    assert open_store(output).read_text("checkpoints/latest") == f"step-{state['step']:08d}"


def test_permanent_storage_failure_stops_clearly_and_keeps_the_last_checkpoint(synth_dataset, tmp_path):
    output = tmp_path / "broken"
    (output / "checkpoints").mkdir(parents=True)
    (output / "checkpoints" / "step-00000004").write_text("a file where a directory must go")
    spec = write_spec(tmp_path / "spec.yaml", training_manifest(synth_dataset, str(output), steps=(3, 3)))
    result = polyvivid("train", str(spec))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("polyvivid: error: checkpoint at step 4 not saved") and "checkpoints/step-00000002" in last
    assert "failed after 5 attempts" in last
    assert (output / "checkpoints" / "latest").read_text() == "step-00000002"


def test_bad_credentials_and_bad_specs_exit_2_with_one_line(synth_dataset, s3_env, s3_bucket, tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", training_manifest(synth_dataset, f"{s3_bucket}/x"))
    env = s3_worker_env({**s3_env, "secret_key": "wrong"})
    result = polyvivid("train", str(spec), env=env)
    assert result.returncode == 2 and "credentials" in result.stderr.strip().splitlines()[-1]
    bad = training_manifest(synth_dataset, str(tmp_path / "o"), globalBatchSize=3)
    result = polyvivid("train", str(write_spec(tmp_path / "bad.yaml", bad)), "--local", "--nproc", "2")
    assert result.returncode != 0 and "not a multiple of the world size" in result.stderr
    invalid = training_manifest(synth_dataset, str(tmp_path / "o"), globalBatchSize=0)
    result = polyvivid("train", str(write_spec(tmp_path / "invalid.yaml", invalid)))
    assert result.returncode == 2 and result.stderr.strip() == (
        f"polyvivid: error: {tmp_path / 'invalid.yaml'}: spec.globalBatchSize: Input should be greater than or equal to 1")


def test_only_the_chosen_groups_train_and_the_export_is_complete(synth_dataset, tmp_path):
    from safetensors.torch import load_file

    from polyvivid.model.pipeline import PolyVividPipeline, load_pipeline

    output = tmp_path / "partial"
    manifest = training_manifest(synth_dataset, str(output), steps=(2, 0), low_res=0, trainable=["identity_injection"],
                                 optimizer={"learningRate": 1e-2, "warmupSteps": 0})
    result = polyvivid("train", str(write_spec(tmp_path / "spec.yaml", manifest)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trainable parameters: identity_injection" in result.stderr and "lora_" not in result.stderr.split(
        "trainable parameters:")[1].splitlines()[0]
    trained = load_file(output / "final" / "polyvivid_weights.safetensors")
    fresh = PolyVividPipeline.from_preset("tiny", lora_rank=4, lora_alpha=4.0).transformer.polyvivid_state_dict()
    assert trained.keys() == fresh.keys()
    changed = {k for k in trained if not (trained[k] == fresh[k]).all()}
    assert changed and all(k.startswith("identity_injection.") for k in changed)
    load_pipeline(str(output / "final"))
