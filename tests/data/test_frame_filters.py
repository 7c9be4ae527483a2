"""The model hooks among the filters: subtitle/watermark detectors and the quality scorer."""

from __future__ import annotations


import numpy as np
import pytest

from polyvivid.api.curation import FilterSpec, ModelRef
from polyvivid.data.frame_filters import ClipFilters, FrameClassifier, tiny_classifier
from polyvivid.data.synthetic import render_clip

from ..specs import with_random_models

FRAMES = render_clip([{"shape": "circle", "color": "red", "texture": "dotted"}], "gray", 32, 6,
                     np.random.default_rng(0))


def test_unset_hooks_are_skipped_and_set_ones_decide():
    tiny = ModelRef(preset="tiny")
    assert ClipFilters(FilterSpec()).reason_to_drop(FRAMES) is None
    strict = ClipFilters(FilterSpec(subtitle_detector=tiny, detector_threshold=0.01))
    assert strict.reason_to_drop(FRAMES).startswith("subtitle detected (p=")
    lenient = ClipFilters(FilterSpec(watermark_detector=tiny, detector_threshold=1.0))
    assert lenient.reason_to_drop(FRAMES) is None
    picky = ClipFilters(FilterSpec(quality_scorer=tiny, min_quality=1e9))
    assert picky.reason_to_drop(FRAMES).startswith("quality ")
    assert ClipFilters(FilterSpec(quality_scorer=tiny, min_quality=-1e9)).reason_to_drop(FRAMES) is None


def test_detector_reads_its_positive_label_from_a_saved_model(tmp_path):
    model, processor = tiny_classifier(2)
    model.config.id2label = {0: "clean", 1: "Subtitle"}
    model.config.label2id = {"clean": 0, "Subtitle": 1}
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = FrameClassifier.load(str(tmp_path), None, positive="subtitle")
    assert loaded.index == 1
    p = loaded.mean_output(FRAMES)
    assert 0.0 <= p <= 1.0 and p == pytest.approx(FrameClassifier(model, processor, "subtitle").mean_output(FRAMES))


def test_split_and_filter_rejects_with_the_hook_reason(tmp_path):
    from polyvivid.api import CurationJob, load_resource
    from polyvivid.data.curation import split_and_filter
    from polyvivid.storage import open_store
    from polyvivid.video import encode_mp4

    store = open_store(str(tmp_path))
    store.write_bytes("v.mp4", encode_mp4(np.concatenate([FRAMES] * 3), fps=8))
    spec = load_resource({"apiVersion": "polyvivid.io/v1alpha1", "kind": "CurationJob", "metadata": {"name": "c"},
                          "spec": with_random_models({"input": str(tmp_path), "output": str(tmp_path / "out"),
                                                      "split": {"minClipSeconds": 1, "maxClipSeconds": 4},
                                                      "filters": {"watermarkDetector": {"preset": "tiny"},
                                                                  "detectorThreshold": 0.01}})},
                         CurationJob).spec
    rows = split_and_filter({"video": "v.mp4"}, spec)
    assert [r["reject"]["stage"] for r in rows] == ["filters"]
    assert rows[0]["reject"]["reason"].startswith("watermark detected")
