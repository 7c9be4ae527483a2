"""Clip splitting and the video filters of curation (paper section 3), on decoded frames.

Shot changes: the colour-histogram distance between consecutive frames (a documented histogram
method; PySceneDetect needs OpenCV, which this project does not ship). A shot longer than the
maximum clip length is cut into maximum-length clips; pieces shorter than the minimum are dropped.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np


@dataclass
class DecodedVideo:
    frames: np.ndarray  # [F, H, W, 3] uint8
    fps: float


def decode_video(data: bytes) -> DecodedVideo:
    """All frames of a video (PyAV). Raises ValueError with a reason for a file that is not one."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 24)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except (av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"undecodable video ({type(e).__name__})") from None
    if not frames:
        raise ValueError("video has no frames")
    return DecodedVideo(np.stack(frames), fps)


def color_histograms(frames: np.ndarray, bins: int = 16) -> np.ndarray:
    """[F, 3 * bins] per-channel histograms, each channel summing to 1."""
    quantized = (frames.astype(np.int32) * bins) // 256  # [F, H, W, 3]
    count = frames.shape[1] * frames.shape[2]
    hist = np.stack([
        np.stack([np.bincount(quantized[f, ..., c].ravel(), minlength=bins) for c in range(3)])
        for f in range(len(frames))
    ]).astype(np.float64) / count
    return hist.reshape(len(frames), -1)


def histogram_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Total-variation distance per channel, averaged: 0 (same colours) to 1 (disjoint)."""
    return np.abs(a - b).sum(axis=-1) / 6.0  # 3 channels, each summing to 1 -> max 2 per channel


def detect_shots(frames: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """[(start, end), ...] frame ranges (end exclusive) split where consecutive frames differ."""
    if len(frames) < 2:
        return [(0, len(frames))]
    hist = color_histograms(frames)
    cuts = np.nonzero(histogram_distance(hist[1:], hist[:-1]) > threshold)[0] + 1
    bounds = [0, *cuts.tolist(), len(frames)]
    return [(s, e) for s, e in zip(bounds[:-1], bounds[1:]) if e > s]


def clip_ranges(shots: list[tuple[int, int]], fps: float, min_seconds: float, max_seconds: float):
    """Clips from shots: long shots cut into max-length clips; (kept ranges, dropped count)."""
    longest = max(int(round(max_seconds * fps)), 1)
    shortest = int(np.ceil(min_seconds * fps))
    kept, dropped = [], 0
    for start, end in shots:
        for s in range(start, end, longest):
            e = min(s + longest, end)
            if e - s >= shortest:
                kept.append((s, e))
            else:
                dropped += 1
    return kept, dropped


def black_border_box(frames: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the picture inside black borders (letterbox / pillarbox)."""
    luma = frames.astype(np.float32).mean(axis=(0, 3))  # [H, W], averaged over time
    rows = np.nonzero(luma.mean(axis=1) >= threshold)[0]
    cols = np.nonzero(luma.mean(axis=0) >= threshold)[0]
    if len(rows) == 0 or len(cols) == 0:
        return 0, 0, 0, 0  # all black
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def motion_score(frames: np.ndarray) -> float:
    """Mean absolute difference of consecutive frames, 0-255: near 0 for a static clip."""
    if len(frames) < 2:
        return 0.0
    return float(np.abs(np.diff(frames.astype(np.int16), axis=0)).mean())


def has_transition(frames: np.ndarray, threshold: float, window: int = 8) -> bool:
    """A fade or dissolve: colours drift far over `window` frames although no single cut was found."""
    if len(frames) < 2:
        return False
    hist = color_histograms(frames)
    w = min(window, len(frames) - 1)
    return bool((histogram_distance(hist[w:], hist[:-w]) > threshold).any())


def subsample(frames: np.ndarray, fps: float, target_fps: float) -> np.ndarray:
    """Keep frames at about target_fps (never more than the source has)."""
    step = max(fps / target_fps, 1.0)
    return frames[np.floor(np.arange(0, len(frames), step)).astype(int)]
