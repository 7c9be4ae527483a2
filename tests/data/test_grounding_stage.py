"""The curation GroundingStage's contract: phrases are grounded within the row's caption; found ones
become `detections` (the only ones segmented), the rest `absent` with their scores."""

from __future__ import annotations

import numpy as np
import pytest

from polyvivid.api.curation import CurationSpec
from polyvivid.data.curation import GroundingStage
from polyvivid.data.grounding import MIN_GROUNDING_SCORE, Grounding

from ..specs import with_random_models


def stage(frames_per_clip: int = 3, **grounding) -> GroundingStage:
    spec = CurationSpec.model_validate(with_random_models(
        {"input": "file:///in", "output": "file:///out", "grounding": {"framesPerClip": frames_per_clip, **grounding}}))
    return GroundingStage(spec)


def clip_row(frames: int = 5) -> dict:
    rng = np.random.default_rng(0)
    return {"video": "v.mp4", "clip": "v-000", "frames": rng.integers(0, 255, (frames, 32, 48, 3), dtype=np.uint8),
            "caption": "a man in red plays a guitar", "phrases": ["a man in red", "a guitar"]}


class ScriptedGrounder:
    """Finds "a man in red" in even frames only, never "a guitar"; records the captions it was given."""

    def __init__(self):
        self.captions, self.calls = [], 0

    def ground(self, image, phrases, caption=None):
        self.captions.append(caption)
        even, self.calls = self.calls % 2 == 0, self.calls + 1
        return [Grounding(p, 0.9, True, [1.0, 2.0, 30.0, 20.0], -1.5) if p == "a man in red" and even
                else Grounding(p, 0.1, False) for p in phrases]


def test_found_phrases_are_detections_and_the_others_are_absent():
    s = stage()
    s.grounder = grounder = ScriptedGrounder()
    row = s(clip_row())
    assert grounder.captions == ["a man in red plays a guitar"] * 3  # the caption reaches the grounder
    assert row["sampled_frames"] == 3
    assert row["detections"] == [
        {"phrase": "a man in red", "frame": f, "box": [1.0, 2.0, 30.0, 20.0], "score": 0.9, "box_logprob": -1.5}
        for f in (0, 4)]
    absent = [(a["phrase"], a["frame"]) for a in row["absent"]]
    assert absent == [("a guitar", 0), ("a man in red", 2), ("a guitar", 2), ("a guitar", 4)]
    assert all(a["score"] == 0.1 and "box" not in a for a in row["absent"])


@pytest.mark.parametrize("min_score, found", [(0.0, True), (1.0, False)])
def test_the_threshold_splits_the_tiny_models_groundings(min_score, found):
    assert stage().grounder.min_score == MIN_GROUNDING_SCORE  # spec.grounding.minScore's default
    s = stage(frames_per_clip=2, minScore=min_score)  # random weights: every score is strictly between 0 and 1
    row = s(clip_row())
    kept, other = (row["detections"], row["absent"]) if found else (row["absent"], row["detections"])
    assert len(kept) == 4 and other == []
    assert all(0 < d["score"] < 1 for d in kept)
    assert all(("box" in d) == found for d in kept)
