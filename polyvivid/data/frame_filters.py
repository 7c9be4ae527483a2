"""Model hooks among the curation filters: subtitle and watermark detectors, and a quality scorer.

Each is an image classifier in transformers' layout (`AutoModelForImageClassification`), read on a
few frames of a clip:
  detectors  a clip is dropped when the mean probability of the model's positive class (the label
             named "subtitle" / "watermark" if the model has one, else class 1) reaches the threshold;
  scorer     a one-output model (num_labels=1) whose mean logit is the quality; a clip is dropped
             under `minQuality`.
Unset hooks are skipped. `preset: tiny` builds a random ViT of the right kind (tests only).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def tiny_classifier(num_labels: int, seed: int = 0):
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.models.vit import ViTImageProcessorPil

    torch.manual_seed(seed)
    model = ViTForImageClassification(ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                num_attention_heads=2, image_size=32, patch_size=8,
                                                num_labels=num_labels))
    return model.eval(), ViTImageProcessorPil(size={"height": 32, "width": 32})


class FrameClassifier:
    def __init__(self, model, image_processor, positive: str | None = None):
        self.model, self.image_processor = model, image_processor
        labels = {v.lower(): int(k) for k, v in model.config.id2label.items()}
        self.index = labels.get(positive, 1) if positive else 0

    @classmethod
    def load(cls, uri: str | None, preset: str | None, positive: str | None = None) -> "FrameClassifier":
        if preset == "tiny":
            return cls(*tiny_classifier(2 if positive else 1), positive)
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        from ..storage import materialize_dir

        local = materialize_dir(uri)
        return cls(AutoModelForImageClassification.from_pretrained(local).eval(),
                   AutoImageProcessor.from_pretrained(local), positive)

    @torch.no_grad()
    def mean_output(self, frames: np.ndarray) -> float:
        """Mean probability of the positive class (detectors) or mean logit (scorer) over frames."""
        pixels = self.image_processor([Image.fromarray(f) for f in frames], return_tensors="pt").pixel_values
        logits = self.model(pixel_values=pixels.to(self.model.device, self.model.dtype)).logits.float()
        if logits.shape[-1] == 1:
            return float(logits[:, 0].mean())
        return float(logits.softmax(-1)[:, self.index].mean())


class ClipFilters:
    """The hooks the spec sets, applied to a clip: returns the reason to drop it, or None."""

    def __init__(self, filters):
        self.filters = filters
        self.hooks = []
        for name, label in (("subtitle_detector", "subtitle"), ("watermark_detector", "watermark")):
            ref = getattr(filters, name)
            if ref is not None:
                self.hooks.append((label, FrameClassifier.load(ref.uri, ref.preset, positive=label)))
        ref = filters.quality_scorer
        self.scorer = FrameClassifier.load(ref.uri, ref.preset) if ref is not None else None

    def reason_to_drop(self, frames: np.ndarray) -> str | None:
        sample = frames[np.linspace(0, len(frames) - 1, min(4, len(frames))).round().astype(int)]
        for label, detector in self.hooks:
            p = detector.mean_output(sample)
            if p >= self.filters.detector_threshold:
                return f"{label} detected (p={p:.2f} >= {self.filters.detector_threshold})"
        if self.scorer is not None:
            quality = self.scorer.mean_output(sample)
            if quality < self.filters.min_quality:
                return f"quality {quality:.3f} < {self.filters.min_quality}"
        return None
