"""Checkpoints: safetensors + JSON with a manifest, nothing unpickled, damaged ones skipped, the newest
K good ones kept. The loader runs in-process on the tiny transformer with a real AdamW state; the
distributed resume runs under torchrun (FSDP2, 2 processes) against the real S3 server."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import pytest
import torch

from polyvivid.model.presets import get_preset
from polyvivid.model.transformer import PolyVividTransformer
from polyvivid.storage import LocalStore, S3Settings, S3Store, open_store
from polyvivid.train.checkpoint import FILES, MANIFEST, CheckpointError, Checkpoints
from polyvivid.train.parallel import DistEnv
from tests.conftest import free_port
from tests.train.conftest import polyvivid, progress, s3_worker_env, training_manifest, write_spec

SINGLE = DistEnv(0, 1, 0, torch.device("cpu"))
ADAMW = ("step", "exp_avg", "exp_avg_sq")


def tiny(seed: int = 0, lora_rank: int = 4):
    """The tiny transformer with PolyVivid's own parameters trainable and a fresh AdamW."""
    torch.manual_seed(seed)
    model = PolyVividTransformer(**{**get_preset("tiny").transformer, "lora_rank": lora_rank, "lora_alpha": 4.0})
    model.freeze_base()
    own = {n for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01)
    return model, optimizer, own


def train_step(model, optimizer):
    """One AdamW step whose gradient touches every trainable parameter (LoRA B starts at zero)."""
    sum((p ** 2 + p).sum() for p in model.parameters() if p.requires_grad).backward()
    optimizer.step()
    optimizer.zero_grad()


def own_params(model, own):
    return {n: p.detach().clone() for n, p in model.named_parameters() if n in own}


@pytest.fixture
def saved(tmp_path):
    """checkpoints/step-00000002 and step-00000004 of one run, and the parameters each holds."""
    store = open_store(str(tmp_path / "out"))
    model, optimizer, own = tiny()
    checkpoints = Checkpoints(store, SINGLE, tmp_path / "scratch", keep=2)
    params = {}
    for step in (2, 4):
        train_step(model, optimizer)
        checkpoints.save(model, optimizer, own, {"step": step}, step)
        params[step] = own_params(model, own)
    return store, params


def resume(store, tmp_path, keep: int = 2, **model_options):
    """A new process's resume: a fresh model and optimizer, then the newest good checkpoint."""
    model, optimizer, own = tiny(seed=1, **model_options)
    checkpoints = Checkpoints(store, SINGLE, tmp_path / "scratch-resume", keep)
    state = checkpoints.load(model, optimizer, own)
    return state, model, optimizer, own, checkpoints


def skip_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping checkpoint")]


def test_a_checkpoint_is_safetensors_and_json_with_a_manifest_and_restores_parameters_and_adamw(tmp_path):
    store = open_store(str(tmp_path / "out"))
    model, optimizer, own = tiny()
    train_step(model, optimizer)
    train_step(model, optimizer)
    name = Checkpoints(store, SINGLE, tmp_path / "scratch", keep=2).save(model, optimizer, own, {"step": 2}, 2)
    assert name == "checkpoints/step-00000002"
    assert store.list() == ["checkpoints/latest"] + sorted(f"{name}/{f}" for f in (*FILES, MANIFEST))
    assert store.read_text("checkpoints/latest") == "step-00000002"

    manifest = json.loads(store.read_text(f"{name}/{MANIFEST}"))
    for f in FILES:
        data = store.read_bytes(f"{name}/{f}")
        assert manifest["files"][f] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    from safetensors.torch import load_file

    local = tmp_path / "out" / name
    assert set(load_file(local / "model.safetensors")) == own  # PolyVivid's own parameters only, no base
    assert set(load_file(local / "optimizer.safetensors")) == {f"state.{n}.{k}" for n in own for k in ADAMW}
    [group] = json.loads(store.read_text(f"{name}/optimizer.json"))
    assert set(group["params"]) == own and group["betas"] == [0.9, 0.999] and group["weight_decay"] == 0.01

    state, fresh, fresh_optimizer, _, _ = resume(store, tmp_path)
    assert state == {"step": 2}
    restored = own_params(fresh, own)
    assert all(torch.equal(restored[n], p) for n, p in own_params(model, own).items())
    before, after = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert before["state"].keys() == after["state"].keys()
    for i, values in before["state"].items():
        assert all(torch.equal(values[k], after["state"][i][k]) for k in ADAMW), i
    # The restored state carries on exactly as the saved one (the moments, not only the weights).
    train_step(model, optimizer)
    train_step(fresh, fresh_optimizer)
    assert all(torch.equal(own_params(fresh, own)[n], p) for n, p in own_params(model, own).items())


class _Touch:
    """Unpickling this runs `touch PATH`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_a_crafted_pickle_in_the_checkpoint_is_never_unpickled(saved, tmp_path, caplog):
    store, params = saved
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Touch(marker))
    pickle.loads(payload)  # the payload is live: unpickling it runs the command
    assert marker.exists()
    marker.unlink()

    # Where torch.distributed.checkpoint kept its pickled metadata, and as the `latest` hint: ignored.
    store.write_bytes("checkpoints/step-00000004/.metadata", payload)
    store.write_bytes("checkpoints/latest", payload)
    state, model, _, own, _ = resume(store, tmp_path)
    assert state == {"step": 4} and not marker.exists() and not skip_lines(caplog)

    # As each file of the latest checkpoint in turn: that checkpoint is skipped, step 2 restored.
    for f in (*FILES, MANIFEST):
        key = f"checkpoints/step-00000004/{f}"
        good = store.read_bytes(key)
        store.write_bytes(key, payload)
        caplog.clear()
        state, model, _, own, _ = resume(store, tmp_path)
        assert not marker.exists(), f
        assert state == {"step": 2}, f
        assert all(torch.equal(p, params[2][n]) for n, p in own_params(model, own).items())
        [line] = skip_lines(caplog)
        assert line.startswith("skipping checkpoint checkpoints/step-00000004: ") and f in line, line
        store.write_bytes(key, good)


LATEST_4 = "checkpoints/step-00000004"


def truncate(store, key, size):
    store.write_bytes(key, store.read_bytes(key)[:size])


def flip_last_byte(store, key):
    data = store.read_bytes(key)
    store.write_bytes(key, data[:-1] + bytes([data[-1] ^ 1]))


@pytest.mark.parametrize("damage, why", [
    pytest.param(lambda s: truncate(s, f"{LATEST_4}/model.safetensors", 1000), "model.safetensors has 1000 bytes",
                 id="truncated"),
    pytest.param(lambda s: flip_last_byte(s, f"{LATEST_4}/optimizer.safetensors"),
                 "optimizer.safetensors does not match its SHA-256", id="flipped-byte"),
    pytest.param(lambda s: s.delete(f"{LATEST_4}/{MANIFEST}"), "manifest.json is missing (incomplete)",
                 id="no-manifest"),
    pytest.param(lambda s: s.delete(f"{LATEST_4}/trainer_state.json"), "trainer_state.json is missing",
                 id="missing-file"),
    pytest.param(lambda s: s.write_text(f"{LATEST_4}/{MANIFEST}", "{"), "manifest.json is not JSON", id="bad-manifest"),
])
def test_a_damaged_latest_checkpoint_is_skipped_for_the_newest_good_one(saved, tmp_path, caplog, damage, why):
    store, params = saved
    damage(store)
    state, model, _, own, _ = resume(store, tmp_path)
    assert state == {"step": 2}
    assert all(torch.equal(p, params[2][n]) for n, p in own_params(model, own).items())
    [line] = skip_lines(caplog)
    assert line.startswith("skipping checkpoint checkpoints/step-00000004: ") and why in line, line


@pytest.mark.parametrize("latest", ["", "garbage\n", "step-99999999"])
def test_the_latest_hint_does_not_matter(saved, tmp_path, caplog, latest):
    store, params = saved
    store.write_text("checkpoints/latest", latest)
    state, model, _, own, _ = resume(store, tmp_path)
    assert state == {"step": 4} and not skip_lines(caplog)
    assert all(torch.equal(p, params[4][n]) for n, p in own_params(model, own).items())


def test_with_no_good_checkpoint_the_run_starts_fresh_and_says_so(saved, tmp_path, caplog):
    store, _ = saved
    for step in (2, 4):
        store.delete(f"checkpoints/step-{step:08d}/optimizer.json")
    model, _, own = tiny(seed=1)
    fresh = own_params(model, own)
    state, model, _, own, _ = resume(store, tmp_path)
    assert state is None
    assert all(torch.equal(p, fresh[n]) for n, p in own_params(model, own).items())
    assert [line.split(":")[0] for line in skip_lines(caplog)] == [
        "skipping checkpoint checkpoints/step-00000004", "skipping checkpoint checkpoints/step-00000002"]
    assert any(r.getMessage().startswith("no good checkpoint in ") and r.getMessage().endswith("starting from step 0")
               for r in caplog.records)


def test_unreadable_storage_or_a_checkpoint_for_another_model_stops_instead_of_starting_fresh(
        saved, tmp_path, monkeypatch):
    store, _ = saved
    with pytest.raises(CheckpointError, match="step-00000004 does not fit this model: .* is \\[4, .* here"):
        resume(store, tmp_path, lora_rank=8)
    monkeypatch.setenv("POLYVIVID_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("POLYVIVID_RETRY_DELAY_S", "0.01")
    # Nothing listens there (verify_tls=False: a plain connection pool, which does not back off).
    nowhere = S3Store("bucket", "run", S3Settings(f"127.0.0.1:{free_port()}", False, "a", "b", verify_tls=False))
    with pytest.raises(CheckpointError, match="cannot read s3://bucket/run/checkpoints: .*unreachable"):
        resume(nowhere, tmp_path)


def test_only_the_newest_k_good_checkpoints_are_kept(saved, tmp_path):
    store, _ = saved
    names = lambda: [int(n[5:]) for n in Checkpoints(store, SINGLE, tmp_path, 2).names()]
    model, optimizer, own = tiny()
    checkpoints = Checkpoints(store, SINGLE, tmp_path / "scratch-more", keep=2)
    train_step(model, optimizer)
    checkpoints.save(model, optimizer, own, {"step": 6}, 6)
    assert names() == [6, 4, 2]  # this process knows only 6 to be good: nothing older is deleted yet
    train_step(model, optimizer)
    checkpoints.save(model, optimizer, own, {"step": 8}, 8)
    assert names() == [8, 6]

    # The newest gets damaged. The restart resumes from 6; its checkpoint at 7 (SIGTERM) leaves the
    # damaged, newer 8 alone and keeps 6; step 8 then replaces the damaged one.
    store.write_bytes("checkpoints/step-00000008/model.safetensors", b"")
    state, model, optimizer, own, checkpoints = resume(store, tmp_path)
    assert state == {"step": 6}
    for step, after in ((7, [8, 7, 6]), (8, [8, 7])):
        train_step(model, optimizer)
        checkpoints.save(model, optimizer, own, {"step": step}, step)
        assert names() == after
    assert resume(store, tmp_path)[0] == {"step": 8}

    one = Checkpoints(store, SINGLE, tmp_path / "scratch-one", keep=1)
    assert one.load(model, optimizer, own) == {"step": 8}
    train_step(model, optimizer)
    one.save(model, optimizer, own, {"step": 9}, 9)
    assert names() == [9] and store.list("checkpoints/step-00000008/") == []


class _RacingStore(LocalStore):
    """The store as a resuming process sees it while another still trains: `during` runs once, just
    after the first file of the checkpoint being read comes down."""

    def __init__(self, root, during):
        super().__init__(root)
        self.during = during

    def download_file(self, key, local):
        super().download_file(key, local)
        if key.endswith("/model.safetensors") and self.during:
            self.during, during = None, self.during
            during()


def test_a_resume_racing_a_pruning_run_finds_the_new_checkpoint_instead_of_starting_fresh(tmp_path, caplog):
    root = tmp_path / "out"
    model, optimizer, own = tiny()
    writer = Checkpoints(open_store(str(root)), SINGLE, tmp_path / "scratch", keep=1)
    train_step(model, optimizer)
    writer.save(model, optimizer, own, {"step": 2}, 2)

    def the_other_run_saves_step_4():  # and, keeping 1, deletes step 2 while it is being read
        train_step(model, optimizer)
        writer.save(model, optimizer, own, {"step": 4}, 4)

    racing = _RacingStore(root, the_other_run_saves_step_4)
    state, resumed, _, _, _ = resume(racing, tmp_path, keep=1)
    assert state == {"step": 4}
    assert all(torch.equal(p, own_params(model, own)[n]) for n, p in own_params(resumed, own).items())
    [line] = skip_lines(caplog)
    assert line.startswith("skipping checkpoint checkpoints/step-00000002: ") and "is missing" in line


def test_fsdp2_resume_in_s3_skips_the_damaged_latest_checkpoint_and_matches_the_uninterrupted_run(
        synth_dataset, s3_env, s3_bucket, tmp_path):
    output = f"{s3_bucket}/run"
    manifest = training_manifest(synth_dataset, output, steps=(3, 3), parallelism="fsdp")
    spec = write_spec(tmp_path / "spec.yaml", manifest)
    env = s3_worker_env(s3_env)
    first = polyvivid("train", str(spec), "--local", "--nproc", "2", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    store = open_store(output)
    names = lambda: Checkpoints(store, SINGLE, tmp_path, 2).names()
    assert names() == ["step-00000006", "step-00000004"]  # keepCheckpoints defaults to 2: step 2 is gone
    uninterrupted = {row[0]: row[1] for row in progress(output)["history"]}

    key = "checkpoints/step-00000006/optimizer.safetensors"
    store.write_bytes(key, store.read_bytes(key)[:-100])
    store.write_text("checkpoints/latest", "")
    again = polyvivid("train", str(spec), "--local", "--nproc", "2", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    [line] = [l for l in again.stderr.splitlines() if "skipping checkpoint" in l]
    assert "skipping checkpoint checkpoints/step-00000006: optimizer.safetensors has" in line
    assert "resumed from checkpoints/step-00000004 at step 4" in again.stderr
    assert "step 5/6 " in again.stderr and "step 4/6 " not in again.stderr
    # Steps 5 and 6 after the resume compute what the uninterrupted run did (6 after an AdamW step
    # from the restored moments).
    resumed = {row[0]: row[1] for row in progress(output)["history"]}
    assert all(abs(resumed[s] - uninterrupted[s]) < 1e-4 for s in (5, 6)), (resumed, uninterrupted)
    assert names() == ["step-00000006", "step-00000004"] and store.read_text("checkpoints/latest") == "step-00000006"
