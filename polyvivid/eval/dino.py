"""DINO-sim: how much a non-human subject (an animal, an object) in the video looks like its reference
image. In each frame the subject is grounded by its word within the prompt (Florence-2, as curation does:
data/grounding.py) and cut out (SAM2 in the box: data/segmentation.py; the paper uses a YOLO segmenter
for this step); DINOv2 (transformers Dinov2Model, CLS token) embeds the cut-out and the reference.

Absent frames: a frame where the grounder does not find the subject (score below its min_score) or SAM2
cuts out nothing is absent. It is not scored on a forced box, and it is not scored 0 either: the paper
(appendix A.2) scores the subject each frame's segmenter isolates, so a frame without one has no
score. DINO-sim is the mean cosine similarity over the frames where the subject was found; the absent
frames are counted beside it (SubjectScore.frames_absent, the report's frames_without_subject), as
Face-sim counts frames without a face."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.grounding import Grounder
from ..data.segmentation import Segmenter, cut_out


def tiny_dinov2(seed: int = 0):
    """Random DINOv2 in tiny shapes (no download), with its image processor."""
    from transformers import Dinov2Config, Dinov2Model
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    torch.manual_seed(seed)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, patch_size=8, image_size=32))
    processor = BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                     image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return model.eval(), processor


class DinoEmbedder:
    def __init__(self, model, image_processor):
        self.model, self.image_processor = model, image_processor

    @classmethod
    def load(cls, uri: str | None = None, preset: str | None = None) -> "DinoEmbedder":
        if preset == "tiny":
            return cls(*tiny_dinov2())
        from transformers import AutoImageProcessor, Dinov2Model

        from ..storage import materialize_dir

        local = materialize_dir(uri)
        return cls(Dinov2Model.from_pretrained(local).eval(), AutoImageProcessor.from_pretrained(local))

    @torch.no_grad()
    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        """Unit-length CLS features: [n, d]."""
        pixels = self.image_processor([i.convert("RGB") for i in images], return_tensors="pt").pixel_values
        out = self.model(pixel_values=pixels.to(self.model.device, self.model.dtype))
        return F.normalize(out.last_hidden_state[:, 0].float(), dim=-1)


@dataclass
class SubjectScore:
    similarity: float | None  # mean over frames where the subject was found; None when it never was
    frames_found: int
    frames: int

    @property
    def frames_absent(self) -> int:
        return self.frames - self.frames_found


def subject_similarity(embedder: DinoEmbedder, grounder: Grounder, segmenter: Segmenter, frames: np.ndarray,
                       reference: Image.Image, word: str, caption: str | None = None) -> SubjectScore:
    """`word` in each frame, grounded within `caption` (the case's prompt; the word alone without one)."""
    target = embedder.embed([reference])[0]
    cut_outs = []
    for frame in frames:
        image = Image.fromarray(frame)
        (subject,) = grounder.ground(image, [word], caption)
        if not subject.found:  # below the grounder's min_score: absent, never scored on a forced box
            continue
        try:
            cut_outs.append(cut_out(image, segmenter.segment(image, subject.box)))
        except ValueError:  # SAM2 cut out nothing in the box: absent as well
            continue
    if not cut_outs:
        return SubjectScore(None, 0, len(frames))
    return SubjectScore(float((embedder.embed(cut_outs) @ target).mean()), len(cut_outs), len(frames))
