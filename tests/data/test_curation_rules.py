"""Curation's rules that follow the paper (section 3, appendix A.3), stage by stage without Ray: the frame
rate clips keep, every consistent clique of a phrase as its own subject, the structured caption's fields
in the manifest, and which rejects a re-run retries."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from polyvivid.api import CurationJob, load_resource
from polyvivid.data.captioning import parse_structured
from polyvivid.data.curation import rejected, split_and_filter, subjects_of_phrase, write_clip
from polyvivid.data.dataset import SampleRecord
from polyvivid.data.synthetic import render_clip
from polyvivid.storage import open_store
from polyvivid.video import encode_mp4

from ..specs import with_random_models


def spec(tmp_path, **body):
    return load_resource({"apiVersion": "polyvivid.io/v1alpha1", "kind": "CurationJob", "metadata": {"name": "c"},
                          "spec": with_random_models({"input": str(tmp_path / "raw"), "output": str(tmp_path / "out"),
                                                      "split": {"minClipSeconds": 0.5, "maxClipSeconds": 10},
                                                      **body})}, CurationJob).spec


def moving_clip(frames: int) -> np.ndarray:
    subjects = [{"shape": "circle", "color": "red", "texture": "striped"}]
    return render_clip(subjects, "gray", 32, frames, np.random.default_rng(0))


def test_clips_keep_the_source_frame_rate_up_to_max_fps(tmp_path):
    raw = open_store(str(tmp_path / "raw"))
    raw.write_bytes("slow.mp4", encode_mp4(moving_clip(16), fps=8))
    raw.write_bytes("fast.mp4", encode_mp4(moving_clip(60), fps=30))
    default = spec(tmp_path)
    assert default.split.max_fps == 24
    [slow] = split_and_filter({"video": "slow.mp4"}, default)
    assert slow["fps"] == 8 and len(slow["frames"]) == 16  # 8 fps stays 8 fps: every frame kept
    [fast] = split_and_filter({"video": "fast.mp4"}, default)
    assert fast["fps"] == 24 and len(fast["frames"]) == 48  # 30 fps capped at 24: 2 s of 24 fps
    [capped] = split_and_filter({"video": "fast.mp4"}, spec(tmp_path, split={"minClipSeconds": 0.5, "maxFps": 10}))
    assert capped["fps"] == 10 and len(capped["frames"]) == 20


def test_two_look_alike_subjects_of_one_phrase_are_two_subjects(tmp_path):
    """Six sampled frames; the phrase "man" was found on two different men, three frames each. Their CLIP
    features are alike (cosine distance 0.4 between the men, under 0.01 within one man's detections), so
    only a clique per man passes the one-third rule: two subjects, "man" and "man 2"."""
    rng = np.random.default_rng(0)
    first, second = np.eye(8)[0], np.eye(8)[0] * 0.6 + np.eye(8)[1] * 0.8  # cos = 0.6: distance 0.4
    features = np.stack([first + rng.normal(0, 0.01, 8) for _ in range(3)]
                        + [second + rng.normal(0, 0.01, 8) for _ in range(3)])
    images = [Image.new("RGB", (8, 16), c) for c in ["navy"] * 3 + ["darkblue"] * 3]
    passing = [({"image": image, "frame": i}, 0.30 + 0.01 * i) for i, image in enumerate(images)]
    subjects = subjects_of_phrase("man", passing, features, 6, spec(tmp_path))
    assert [s["name"] for s in subjects] == ["man", "man 2"] and [s["phrase"] for s in subjects] == ["man", "man"]
    assert [s["clip_score"] for s in subjects] == [0.32, 0.35]  # each keeps its own best cut-out
    # one man only on two of six frames: not over a third, not a subject
    assert [s["name"] for s in subjects_of_phrase("man", passing[:5], features[:5], 6, spec(tmp_path))] == ["man"]

    # both go into the manifest under their own names, with the word the caption uses
    row = {"clip": "c-000", "video": "v.mp4", "frames": moving_clip(5), "fps": 8,
           "caption": "A man hands a guitar to another man.", "short_caption": "Two men and a guitar.",
           "background": "a garden", "style": "", "camera": "static", "unmatched_subjects": ["guitar"],
           "subjects": subjects}
    line = json.loads(json.dumps(write_clip(row, spec(tmp_path))["record"]))  # as manifest.jsonl has it
    record = SampleRecord.model_validate(line)
    assert [(s.word, s.key) for s in record.subjects] == [("man", "man"), ("man", "man 2")]
    assert (line["short_caption"], line["background"], line["camera"]) == ("Two men and a guitar.", "a garden", "static")
    assert "style" not in line and line["unmatched_subjects"] == ["guitar"]  # empty fields are not stored
    assert line["subjects"][0] == {"word": "man", "image": "subjects/c-000_0.png"}


def test_two_subjects_with_one_name_are_refused_by_the_manifest():
    line = {"id": "1", "video": "v.mp4", "caption": "A man meets a man.",
            "subjects": [{"word": "man", "image": "a.png"}, {"word": "man", "image": "b.png"}]}
    try:
        SampleRecord.model_validate(line)
    except ValueError as e:
        assert "subject names must be distinct" in str(e)
    else:
        raise AssertionError("two subjects named 'man' validated")
    line["subjects"][1]["name"] = "man 2"
    assert [s.key for s in SampleRecord.model_validate(line).subjects] == ["man", "man 2"]


def test_structured_captions_keep_background_style_and_camera():
    answer = ('Sure: {"caption": "A man plays a guitar.", "short_caption": "A guitarist.", "background": "a stage", '
              '"style": "documentary", "camera": "slow push-in", "subjects": ["man", "guitar"]}')
    parsed = parse_structured(answer)
    assert (parsed.short_caption, parsed.background, parsed.style, parsed.camera) == \
        ("A guitarist.", "a stage", "documentary", "slow push-in")
    assert parse_structured('{"caption": "A cat.", "subjects": ["cat"], "style": 3}').style == ""  # not text


def test_rejects_that_a_model_or_a_caption_file_can_fix_are_marked_for_retry():
    row = {"video": "v.mp4", "clip": "c", "frames": np.zeros(1)}
    assert rejected(row, "caption", "no subject phrases")["reject"]["fixable"]
    assert rejected(row, "consolidation", "no clique")["reject"]["fixable"]
    assert not rejected(row, "filters", "static")["reject"]["fixable"]
    assert not rejected(row, "split", "shorter than 2s")["reject"]["fixable"]
    assert "frames" not in rejected(row, "split", "undecodable", fixable=True)
