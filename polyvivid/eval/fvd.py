"""FVD: the Fréchet distance between the feature distributions of two sets of videos (generated vs
real). Features come from a pluggable model: I3D as a TorchScript file, as the common FVD
implementations use it (StyleGAN-V's i3d_torchscript.pt: input float [N, 3, T, 224, 224] in -1..1,
called with rescale=False, resize=False, return_features=True -> [N, 400]), or mean CLIP frame features
(`ClipVideoFeatures`: needs no extra model, but its numbers are not comparable with published FVD)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

I3D_SIZE = 224
I3D_KWARGS = {"rescale": False, "resize": False, "return_features": True}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of two feature sets [n, d] (n >= 2 each).
    The trace of the matrix square root is taken from the eigenvalues of S_a^1/2 S_b S_a^1/2 (symmetric,
    so no complex parts to drop)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"FVD needs at least 2 videos in each set (got {len(a)} and {len(b)})")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    values, vectors = np.linalg.eigh(s_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    trace_root = np.sqrt(np.clip(middle, 0, None)).sum()
    distance = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_root
    return float(max(distance, 0.0))  # a distance: rounding can leave -1e-12 for identical sets


def center_square(frames: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to `size` and crop the centre: [T, size, size, 3] uint8."""
    out = []
    for frame in frames:
        image = Image.fromarray(frame)
        scale = size / min(image.size)
        w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((w, h), Image.BILINEAR)
        left, top = (w - size) // 2, (h - size) // 2
        out.append(np.asarray(image.crop((left, top, left + size, top + size))))
    return np.stack(out)


class I3DFeatures:
    """Video features from a TorchScript I3D (path or s3:// URI)."""

    name = "i3d"

    def __init__(self, model: torch.nn.Module, call_kwargs: dict | None = None):
        self.model = model.eval()
        self.call_kwargs = I3D_KWARGS if call_kwargs is None else call_kwargs

    @classmethod
    def load(cls, uri: str) -> "I3DFeatures":
        from .loading import load_module

        return cls(load_module(uri))

    @torch.no_grad()
    def __call__(self, videos: list[np.ndarray]) -> np.ndarray:
        rows = []
        for frames in videos:
            x = torch.from_numpy(center_square(frames, I3D_SIZE)).float().div(127.5).sub(1)  # T, H, W, C
            rows.append(self.model(x.permute(3, 0, 1, 2)[None], **self.call_kwargs).reshape(-1).float().numpy())
        return np.stack(rows)


class ClipVideoFeatures:
    """Mean unit CLIP image feature over a video's frames."""

    name = "clip"

    def __init__(self, scorer):
        self.scorer = scorer

    def __call__(self, videos: list[np.ndarray]) -> np.ndarray:
        from .clip_metrics import frame_features

        return np.stack([frame_features(self.scorer, frames).mean(0).numpy() for frames in videos])


def fvd(features, generated: list[np.ndarray], real: list[np.ndarray]) -> float:
    return frechet_distance(features(generated), features(real))
