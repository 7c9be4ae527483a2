"""CLIP text-video alignment (the paper's CLIP-B and CLIP-L, with ViT-B and ViT-L CLIP models) and
temporal consistency (as VBench measures it: CLIP similarity of each frame to the one before and to
the first frame). Frames are uint8 arrays [T, H, W, 3]; the CLIP model is data/clip_score.ClipScorer
(a transformers CLIPModel directory, or the random `tiny` preset in tests)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..data.clip_score import ClipScorer

BATCH = 16


def frame_features(scorer: ClipScorer, frames: np.ndarray) -> torch.Tensor:
    """Unit-length CLIP image features of each frame: [T, d]."""
    images = [Image.fromarray(f) for f in frames]
    return torch.cat([scorer.image_features(images[i:i + BATCH]) for i in range(0, len(images), BATCH)])


def text_alignment(scorer: ClipScorer, frames: np.ndarray, prompt: str) -> float:
    """Mean cosine similarity of each frame with the prompt (the paper's CLIP-B / CLIP-L)."""
    text = scorer.text_features([prompt])[0]
    return float((frame_features(scorer, frames) @ text).mean())


def temporal_consistency(scorer: ClipScorer, frames: np.ndarray) -> float:
    """Mean over frames 1..T-1 of the average of cos(frame t, frame t-1) and cos(frame t, frame 0);
    1 for a still video. A one-frame video has nothing to compare: 1."""
    if len(frames) < 2:
        return 1.0
    features = frame_features(scorer, frames)
    previous = (features[1:] * features[:-1]).sum(-1)
    first = features[1:] @ features[0]
    return float(((previous + first) / 2).mean())
