"""Face-sim: how much the faces in a video look like the reference person. A face detector finds the
faces in each frame; a face-recognition embedder (ArcFace-style) embeds each crop; a frame scores the
best cosine similarity of its faces to the reference face (in a video of several people, the face that
is this person). The metric is the mean over frames with a face; frames without one are counted.

Both models are TorchScript or torch.export (.pt2) files (path or s3:// URI; eval/loading.py), with
these contracts:
  detector(image)  image: float [3, H, W] in 0..1  ->  [k, 5] boxes (x1, y1, x2, y2, score) in pixels
  embedder(faces)  faces: float [n, 3, 112, 112] in -1..1 (RGB)  ->  [n, d] embeddings
Wrap a face detector (RetinaFace, SCRFD) or an ArcFace network in a module of that shape and save it
with `torch.jit.script(module).save(path)` or `torch.export.save(torch.export.export(module, args), path)`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

FACE_SIZE = 112
MIN_SCORE = 0.5


@dataclass
class FaceScore:
    similarity: float | None  # mean over frames with a face; None if no frame has one
    frames_with_face: int
    frames: int


class FaceModels:
    def __init__(self, detector: torch.nn.Module, embedder: torch.nn.Module):
        self.detector, self.embedder = detector.eval(), embedder.eval()

    @classmethod
    def load(cls, detector_uri: str, embedder_uri: str) -> "FaceModels":
        from .loading import load_module

        return cls(load_module(detector_uri), load_module(embedder_uri))

    @torch.no_grad()
    def boxes(self, image: np.ndarray) -> torch.Tensor:
        """Face boxes with a score of at least MIN_SCORE, best first: [k, 5]."""
        pixels = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1) / 255.0
        found = self.detector(pixels).reshape(-1, 5)
        found = found[found[:, 4] >= MIN_SCORE]
        return found[found[:, 4].argsort(descending=True)]

    @torch.no_grad()
    def embed(self, image: np.ndarray, boxes: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings of the crops: [k, d]."""
        h, w = image.shape[:2]
        crops = []
        for x1, y1, x2, y2 in boxes[:, :4].round().long().tolist():
            x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
            if x2 <= x1 or y2 <= y1:
                continue
            crop = Image.fromarray(image[y1:y2, x1:x2]).resize((FACE_SIZE, FACE_SIZE), Image.BILINEAR)
            crops.append(torch.from_numpy(np.asarray(crop, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1)
        if not crops:
            return torch.zeros(0, 1)
        return F.normalize(self.embedder(torch.stack(crops)).float(), dim=-1)

    def reference(self, image: Image.Image) -> torch.Tensor:
        """The reference face's embedding: its best detected face, else the whole image (a face crop)."""
        pixels = np.asarray(image.convert("RGB"))
        boxes = self.boxes(pixels)
        if len(boxes) == 0:
            boxes = torch.tensor([[0, 0, pixels.shape[1], pixels.shape[0], 1.0]])
        return self.embed(pixels, boxes[:1])[0]


def face_similarity(models: FaceModels, frames: np.ndarray, reference: Image.Image) -> FaceScore:
    target = models.reference(reference)
    scores = []
    for frame in frames:
        embeddings = models.embed(frame, models.boxes(frame))
        if len(embeddings):
            scores.append(float((embeddings @ target).max()))
    return FaceScore(float(np.mean(scores)) if scores else None, len(scores), len(frames))


class SkinToneDetector(torch.nn.Module):
    """The tiny preset's detector: one box around the skin-toned pixels (the drawn sample people's
    faces), none when they cover under 0.5 % of the image. Scripted like a real detector."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        r, g, b = image[0], image[1], image[2]
        mask = (r > 0.6) & (r > g) & (g > b) & (r - b > 0.15) & (g > 0.7 * r) & (b > 0.45 * r)
        if int(mask.sum()) < max(4, int(0.005 * mask.numel())):
            return torch.zeros(0, 5)
        points = torch.nonzero(mask).float()  # (y, x)
        low, high = points.min(0).values, points.max(0).values + 1
        return torch.stack([low[1], low[0], high[1], high[0], torch.ones(())]).unsqueeze(0)


class TinyFaceEmbedder(torch.nn.Module):
    """The tiny preset's embedder: a small random CNN, [n, 3, 112, 112] -> [n, 32]."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(256, 32))

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.net(faces)


def tiny_face_models(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(detector, embedder) of the tiny preset, scripted (what FaceModels.load gets from files)."""
    torch.manual_seed(seed)
    return torch.jit.script(SkinToneDetector()), torch.jit.script(TinyFaceEmbedder())
