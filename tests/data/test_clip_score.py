"""CLIP scoring on the tiny preset and from a saved directory (the real loading path)."""

from __future__ import annotations

import torch

from polyvivid.data.clip_score import ClipScorer
from polyvivid.samples import draw_subject


def test_features_are_unit_vectors_and_scores_are_cosines():
    scorer = ClipScorer.load(preset="tiny")
    images = [draw_subject("man"), draw_subject("tiger"), draw_subject("man")]
    features = scorer.image_features(images)
    assert features.shape == (3, 16) and torch.allclose(features.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(features[0], features[2])  # the same picture, the same features
    scores = scorer.scores(images[:2], ["a man", "a tiger"])
    assert scores.shape == (2,) and ((-1 <= scores) & (scores <= 1)).all()
    assert torch.allclose(scores[0], (features[0] * scorer.text_features(["a man"])[0]).sum(), atol=1e-5)


def test_loads_a_saved_clip_directory(tmp_path):
    scorer = ClipScorer.load(preset="tiny")
    scorer.model.save_pretrained(tmp_path)
    scorer.image_processor.save_pretrained(tmp_path)
    scorer.tokenizer.save_pretrained(tmp_path)
    loaded = ClipScorer.load(uri=str(tmp_path))
    image = [draw_subject("dog")]
    assert torch.allclose(loaded.image_features(image), scorer.image_features(image), atol=1e-5)
    assert torch.allclose(loaded.scores(image, ["a dog"]), scorer.scores(image, ["a dog"]), atol=1e-5)
