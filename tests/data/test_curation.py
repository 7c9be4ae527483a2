"""The curation pipeline end to end through real (local) Ray with the tiny Florence-2, SAM2, CLIP and
Qwen2.5-VL captioner, on constructed raw videos whose right answers are known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from polyvivid.api import CurationJob, load_resource
from polyvivid.data.loader import SubjectVideoDataset
from polyvivid.data.synthetic import render_clip
from polyvivid.storage import open_store
from polyvivid.video import encode_mp4

from ..sockets import ListenerWatch
from ..specs import with_random_models

FPS = 8


def shot(color, frames, seed, shapes=("circle", "square")):
    rng = np.random.default_rng(seed)
    subjects = [{"shape": s, "color": c, "texture": "striped"} for s, c in zip(shapes, ("red", "blue"))]
    clip = render_clip(subjects, "gray", 64, frames, rng).copy()
    background = (clip == clip[0, 0, 0]).all(-1)
    clip[background] = color
    return clip


@pytest.fixture(scope="module")
def raw_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    store = open_store(str(root))
    caption = {"caption": "A striped red circle chases a striped blue square.", "short_caption": "Shapes.",
               "subjects": ["circle", "square"]}
    # two shots (a cut at frame 16), with a caption file: two clips expected
    store.write_bytes("two_shots.mp4", encode_mp4(np.concatenate([shot((20, 60, 200), 16, 0), shot((230, 210, 40), 16, 1)]), fps=FPS))
    store.write_text("two_shots.json", json.dumps(caption))
    # letterboxed: black bars top and bottom are cropped away
    boxed = shot((40, 160, 60), 16, 2)
    boxed[:, :8] = 0
    boxed[:, -8:] = 0
    store.write_bytes("nested/letterbox.mp4", encode_mp4(boxed, fps=FPS))
    store.write_text("nested/letterbox.json", json.dumps(caption))
    # static: one frame repeated
    store.write_bytes("static.mp4", encode_mp4(np.repeat(shot((90, 90, 90), 1, 3), 16, axis=0), fps=FPS))
    store.write_text("static.json", json.dumps(caption))
    # no caption file: the (random) captioner cannot name subjects
    store.write_bytes("uncaptioned.mp4", encode_mp4(shot((120, 40, 40), 16, 4), fps=FPS))
    store.write_bytes("corrupt.mp4", b"\x00\x00\x00\x18ftypmp42 then nothing")
    store.write_text("notes.txt", "not a video")
    return root


@pytest.fixture(scope="module")
def box_filling_sam2(tmp_path_factory):
    """The tiny SAM2 (its masks fill most of the prompt box) saved the way real weights are: the stage
    loads it from a uri."""
    from polyvivid.data.segmentation import tiny_sam2

    model = tiny_sam2()
    path = tmp_path_factory.mktemp("sam2")
    model.save_pretrained(path)
    return str(path)


def spec_for(raw, out, sam2):
    return load_resource({
        "apiVersion": "polyvivid.io/v1alpha1", "kind": "CurationJob", "metadata": {"name": "c"},
        "spec": with_random_models({
            "input": str(raw), "output": str(out),
            "split": {"minClipSeconds": 1.0, "maxClipSeconds": 4.0},
            "caption": {"maxNewTokens": 8, "resources": {"cpus": 0.25}},
            "grounding": {"framesPerClip": 3, "resources": {"cpus": 0.25}},
            "segmentation": {"model": {"uri": sam2}, "resources": {"cpus": 0.25}},
            # random tiny models: accept any CLIP score and treat all detections as agreeing
            "clipScore": {"minScore": -1.0},
            "consolidation": {"maxDistance": 2.0},
        })}, CurationJob).spec


@pytest.fixture(scope="module")
def ray_local():
    """Local Ray on loopback; yields the port of its Prometheus endpoint (Ray picks and binds it:
    a port chosen beforehand can be taken by one of Ray's own components while it starts)."""
    import ray

    from polyvivid.ray_local import init_local_ray

    init_local_ray(num_cpus=2, log_to_driver=False, configure_logging=False)
    yield ray.nodes()[0]["MetricsExportPort"]
    ray.shutdown()


def test_curation_end_to_end_and_idempotent(raw_videos, box_filling_sam2, tmp_path, ray_local):
    from polyvivid.data.curation import curate

    out = tmp_path / "dataset"
    summary = curate(spec_for(raw_videos, out, box_filling_sam2), progress=False)
    assert summary["videos"] == 5 and summary["clips_written"] == 3
    reasons = {(r["video"], r["stage"]): r["reason"] for r in summary["rejects"]}
    assert "undecodable" in reasons[("corrupt.mp4", "split")]
    assert reasons[("static.mp4", "filters")].startswith("static")
    assert ("uncaptioned.mp4", "caption") in reasons
    assert summary["stages"]["split"]["in"] == 5 and summary["stages"]["write"]["out"] == 3
    assert all(summary["stages"][s]["out"] <= summary["stages"][s]["in"] for s in summary["stages"] if s != "split")

    store = open_store(str(out))
    assert json.loads(store.read_text("summary.json"))["clips_written"] == 3
    dataset = SubjectVideoDataset(str(out))
    assert len(dataset) == 3
    by_source = {s.model_extra["source"]: s for s in dataset.samples}
    letterbox = by_source["nested/letterbox.mp4"]
    assert letterbox.height == 48 and letterbox.width == 64  # the black bars are gone
    sample = dataset.get(0, 0, 5, 32, 32, 2, torch.Generator().manual_seed(0))
    assert sample.video.shape == (3, 5, 32, 32) and [w for w, _ in sample.subjects] == ["circle", "square"]

    # Per-stage counters and durations reach Prometheus through Ray's metrics agent (~10 s later).
    import time
    import urllib.request

    def scrape():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ray_local}/metrics", timeout=5) as r:
                return r.read().decode()
        except OSError:
            return ""

    def totals():
        """Counter values summed over worker processes, by (stage, result)."""
        out = {}
        for line in scrape().splitlines():
            if line.startswith("ray_polyvivid_curate_rows_total{"):
                labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.rindex("}")].split(",") if "=" in kv)
                key = (labels["stage"].strip('"'), labels["result"].strip('"'))
                out[key] = out.get(key, 0) + float(line.rsplit(" ", 1)[1])
        return out

    deadline = time.time() + 60
    while totals().get(("write", "passed")) != 3 and time.time() < deadline:
        time.sleep(2)
    counted = totals()
    assert counted.get(("write", "passed")) == 3 and counted.get(("filters", "rejected")) == 1, counted
    assert counted.get(("split", "rejected")) == 1 and counted.get(("caption", "rejected")) == 1, counted
    assert "ray_polyvivid_curate_stage_seconds_bucket" in scrape()

    # A re-run skips finished videos and retries the two rejected for a fixable reason (an unreadable file,
    # no caption): nothing changed, so neither does the dataset
    manifest = store.read_text("manifest.jsonl")
    again = curate(spec_for(raw_videos, out, box_filling_sam2), progress=False)
    assert (again["videos_this_run"], again["videos_retried"], again["clips_written"]) == (2, 2, 3)
    assert store.read_text("manifest.jsonl") == manifest
    assert again["random_models"] == ["caption.model", "grounding.model", "clipScore.model"]  # SAM2 is a saved one


def test_a_rerun_retries_a_video_once_it_has_a_caption(raw_videos, box_filling_sam2, tmp_path, ray_local):
    """The user's fix for "no caption": a caption file beside the video; the re-run picks it up."""
    from polyvivid.data.curation import curate

    raw = tmp_path / "raw"
    open_store(str(raw)).write_bytes("uncaptioned.mp4", open_store(str(raw_videos)).read_bytes("uncaptioned.mp4"))
    out = tmp_path / "dataset"
    first = curate(spec_for(raw, out, box_filling_sam2), progress=False)
    assert first["clips_written"] == 0 and first["rejects"][0]["stage"] == "caption"
    open_store(str(raw)).write_text("uncaptioned.json", json.dumps(
        {"caption": "A striped red circle bounces.", "subjects": ["circle"]}))
    second = curate(spec_for(raw, out, box_filling_sam2), progress=False)
    assert (second["videos_retried"], second["clips_written"], second["rejects"]) == (1, 1, [])
    third = curate(spec_for(raw, out, box_filling_sam2), progress=False)
    assert (third["videos_this_run"], third["clips_written"]) == (0, 1)


def test_polyvivid_curate_command_from_and_to_s3(raw_videos, box_filling_sam2, s3_env, s3_bucket, tmp_path):
    """The command a RayJob runs, reading raw videos from S3 and writing the dataset there: its own
    local Ray here, counts per stage printed, exit codes."""
    import os
    import subprocess
    import sys

    import yaml

    open_store(f"{s3_bucket}/raw").upload_dir(raw_videos, "")
    spec = spec_for(f"{s3_bucket}/raw", f"{s3_bucket}/dataset", box_filling_sam2)
    manifest = {"apiVersion": "polyvivid.io/v1alpha1", "kind": "CurationJob", "metadata": {"name": "c"},
                "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True)}
    path = tmp_path / "curation.yaml"
    path.write_text(yaml.safe_dump(manifest))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # s3_env set the S3 variables
    run = lambda *a: subprocess.run([sys.executable, "-m", "polyvivid.cli", "curate", *a], capture_output=True,
                                    text=True, env=env, timeout=300)
    command = [sys.executable, "-m", "polyvivid.cli", "curate", str(path), "--local"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with ListenerWatch(proc.pid) as listeners:  # every process of its local Ray, while it runs
        stdout, stderr = proc.communicate(timeout=300)
    result = subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"gcs_server", "raylet"} <= listeners.processes(), listeners.processes()
    assert listeners.not_loopback() == []
    assert "dataset: " in result.stdout and "(3 clips;" in result.stdout
    assert any(line.startswith("split") and "in     5" in line for line in result.stdout.splitlines())
    dataset = SubjectVideoDataset(f"{s3_bucket}/dataset")
    assert len(dataset) == 3
    assert dataset.get(1, 0, 5, 32, 32, 2, torch.Generator().manual_seed(0)).video.shape == (3, 5, 32, 32)

    manifest["spec"]["split"]["minClipSeconds"] = 10
    path.write_text(yaml.safe_dump(manifest))
    result = run(str(path))
    assert result.returncode == 2 and "minClipSeconds exceeds maxClipSeconds" in result.stderr


def test_the_readme_local_curation_example_runs_on_the_sample_videos(tmp_path):
    """The README's two commands, as written, from a directory laid out as the repository: sample raw videos,
    then the example CurationJob with its explicit random models, end with a dataset training can read."""
    import os
    import shutil
    import subprocess
    import sys

    from ..openapi import ROOT

    commands = ["polyvivid synth-data --raw --out out/raw-videos --videos 4",
                "polyvivid curate manifests/local/curation.yaml --local"]
    readme = (ROOT / "README.md").read_text()
    assert all(command in readme for command in commands)
    (tmp_path / "manifests" / "local").mkdir(parents=True)
    shutil.copy(ROOT / "manifests" / "local" / "curation.yaml", tmp_path / "manifests" / "local")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for command in commands:
        result = subprocess.run([sys.executable, "-m", "polyvivid.cli", *command.split()[1:]], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    assert "warning: random weights (preset: tiny) for caption.model, grounding.model" in result.stdout
    dataset = SubjectVideoDataset(str(tmp_path / "out" / "curated"))
    assert len(dataset) >= 2
    assert all(s.fps == 24 and s.background for s in dataset.samples)  # the source rate, the caption's fields
