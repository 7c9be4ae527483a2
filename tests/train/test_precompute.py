"""Precomputed inputs (issue 21, item 2): encoded once into the store, then read by training in place of the
clips. Real torchrun process groups (gloo) on CPU, a local store; the tiny preset and a tiny base saved in
the published layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from polyvivid.data.dataset import write_manifest
from polyvivid.data.loader import SampleError, SubjectVideoDataset
from polyvivid.data.precomputed import INDEX, PrecomputedReader, sample_key
from polyvivid.data.synthetic import write_synthetic_dataset
from polyvivid.storage import open_store
from tests.train.conftest import polyvivid, progress, training_manifest, write_spec
from tests.train.test_training_data import structured


@pytest.fixture(scope="module")
def captioned_dataset(tmp_path_factory) -> str:
    """12 synthetic clips of 9 frames (5 windows of 5 frames), every caption structured: 16 variants each."""
    root = tmp_path_factory.mktemp("captioned")
    store = open_store(str(root))
    records = write_synthetic_dataset(store, 12, seed=0, size=32, frames=9)
    write_manifest(store, [structured(r) for r in records])
    return str(root)


def precomputed_dir(output) -> str:
    (directory,) = [p for p in (output / "precomputed").iterdir() if p.is_dir()]
    return str(directory)


def test_training_on_precomputed_inputs_gives_the_raw_clips_losses(captioned_dataset, tmp_path):
    losses = {}
    for name, extra in (("raw", {}), ("precomputed", {"precompute": {}})):
        output = tmp_path / name
        spec = write_spec(tmp_path / f"{name}.yaml", training_manifest(captioned_dataset, str(output), parallelism="fsdp",
                                                                       **extra))
        result = polyvivid("train", str(spec), "--local", "--nproc", "2")
        assert result.returncode == 0, result.stderr[-3000:]
        state = progress(str(output))
        assert state["status"] == "succeeded"
        losses[name] = [row[1] for row in state["history"]]
    assert len(losses["raw"]) == 4  # both stages, each at both sizes
    assert np.allclose(losses["raw"], losses["precomputed"], atol=1e-4, rtol=0), losses

    state = progress(str(tmp_path / "precomputed"))
    assert state["precomputed"]["samples"] == 12 and state["precomputed"]["errors"] == 0
    reader = PrecomputedReader.open(precomputed_dir(tmp_path / "precomputed"))
    assert reader.index["configuration"]["sizes"] == ["5x16x16", "5x32x32"]
    from safetensors import safe_open

    with safe_open(f"{reader.uri}/{sample_key(0)}", "pt") as f:  # a single-subject clip: the identity stage's sizes
        meta, names = f.metadata(), set(f.keys())
    assert json.loads(meta["windows"]) == {"5x16x16": [0, 1, 3, 4], "5x32x32": [0, 1, 3, 4]}  # frameWindows 4 of 5
    assert len(json.loads(meta["captions"])) == 16
    assert {f"latents/5x32x32/{k}" for k in range(4)} <= names and "captions/15/encoder_hidden_states" in names


def test_precompute_resumes_reuses_and_records_unreadable_clips(captioned_dataset, tmp_path):
    root = tmp_path / "data"
    store = open_store(str(root))
    records = write_synthetic_dataset(store, 6, seed=0, size=32, frames=9)
    store.write_bytes(records[3].video, b"\x00 not an mp4")  # one clip that cannot be decoded
    write_manifest(store, records)
    output = tmp_path / "run"
    spec = write_spec(tmp_path / "spec.yaml", training_manifest(str(root), str(output), steps=(1, 1), low_res=0))

    result = polyvivid("precompute", str(spec))
    assert result.returncode == 0, result.stderr[-3000:]
    directory = precomputed_dir(output)
    index = json.loads(open_store(directory).read_text(INDEX))
    assert index["samples"]["3"]["error"].startswith("undecodable video")
    shards = {p: p.stat().st_mtime_ns for p in (output / "precomputed").rglob("*.safetensors")}
    assert len(shards) == 5 and progress(str(output))["status"] == "precomputed"

    # Done already: nothing is encoded again.
    assert polyvivid("precompute", str(spec)).returncode == 0
    assert {p: p.stat().st_mtime_ns for p in shards} == shards

    # An interrupted run (no index yet, one shard missing): only the missing shard is encoded.
    (output / "precomputed" / directory.rsplit("/", 1)[1] / INDEX).unlink()
    missing = next(iter(shards))
    missing.unlink()
    assert polyvivid("precompute", str(spec)).returncode == 0
    assert missing.exists() and {p: p.stat().st_mtime_ns for p in shards if p != missing} == \
        {p: t for p, t in shards.items() if p != missing}
    assert json.loads(open_store(directory).read_text(INDEX)) == index

    # Another configuration (two frame windows) has a directory of its own.
    other = training_manifest(str(root), str(output), steps=(1, 1), low_res=0)
    other["spec"]["dataset"]["frameWindows"] = 2
    assert polyvivid("precompute", str(write_spec(tmp_path / "other.yaml", other))).returncode == 0
    assert len([p for p in (output / "precomputed").iterdir() if p.is_dir()]) == 2

    # Training skips the unreadable clip as a raw run would; a damaged shard is skipped too, never trained on.
    dataset = SubjectVideoDataset(str(root), frame_windows=4)
    dataset.precomputed = PrecomputedReader.open(directory)
    with pytest.raises(SampleError, match="undecodable video"):
        dataset.precomputed.read(3, dataset.samples[3], 5, 32, 32, torch.Generator())
    shard = output / "precomputed" / directory.rsplit("/", 1)[1] / sample_key(0)
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(SampleError, match="damaged precomputed sample"):
        dataset.precomputed.read(0, dataset.samples[0], 5, 32, 32, torch.Generator())
    sample = dataset.get(0, 0, 5, 32, 32, 3, torch.Generator())  # position 0's stand-in: the next readable one
    assert sample.id not in (records[0].id, records[3].id) and sample.moments.shape[-3:] == (2, 4, 4)


def test_precompute_needs_finite_frame_windows(synth_dataset, tmp_path):
    manifest = training_manifest(synth_dataset, str(tmp_path / "out"), precompute={})
    manifest["spec"]["dataset"]["frameWindows"] = 0
    result = polyvivid("train", str(write_spec(tmp_path / "spec.yaml", manifest)))
    assert result.returncode == 2 and "frameWindows" in result.stderr and "Traceback" not in result.stderr


def test_training_on_precomputed_inputs_never_loads_the_encoders(synth_dataset, tmp_path, monkeypatch):
    """On a base in the published layouts: after `polyvivid precompute`, the training run builds only the
    transformer (in this process, with LLaVA's, CLIP's and the VAE's loaders made to fail)."""
    from diffusers import AutoencoderKLHunyuanVideo
    from transformers import CLIPTextModel, LlavaForConditionalGeneration

    from polyvivid.api import PolyVividTraining, load_resource
    from polyvivid.train.trainer import train
    from tests.model.test_pipeline import save_tiny_hunyuanvideo_and_llava

    hv, llava, _ = save_tiny_hunyuanvideo_and_llava(tmp_path)
    output = tmp_path / "run"
    manifest = training_manifest(synth_dataset, str(output), steps=(1, 1), low_res=0, precompute={},
                                 model={"hunyuanvideo": str(hv), "llava": str(llava)})
    result = polyvivid("precompute", str(write_spec(tmp_path / "spec.yaml", manifest)))
    assert result.returncode == 0, result.stderr[-3000:]

    def refuse(*args, **kwargs):
        raise AssertionError("training on precomputed inputs loaded a frozen encoder")

    for model in (AutoencoderKLHunyuanVideo, CLIPTextModel, LlavaForConditionalGeneration):
        monkeypatch.setattr(model, "from_pretrained", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert train(load_resource(manifest, PolyVividTraining).spec) == 0
    state = progress(str(output))
    assert state["status"] == "succeeded" and len(state["history"]) == 2 and state["precomputed"]["samples"] == 12
