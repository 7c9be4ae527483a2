"""`polyvivid synth-data`: a synthetic multi-subject dataset in the training format.

Each clip shows 1-3 distinct textured shapes (a striped red circle, a dotted blue square, ...; 1, 2 and 3 in turn)
moving towards each other and bouncing off the walls on a plain background; the caption names them
and how they interact, and each shape's word ("circle", "square") is a subject whose reference
image is the shape alone on white. The shapes are what identity means here: colour, texture and
outline must survive into the video. Everything is a pure function of the seed.
"""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from ..storage import ArtifactStore
from ..video import encode_mp4, png_bytes
from .dataset import SampleRecord, SubjectRecord, write_manifest

SHAPES = ["circle", "square", "triangle", "diamond"]
COLORS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 70), "yellow": (235, 200, 30),
          "purple": (140, 60, 180), "orange": (245, 130, 30)}
TEXTURES = ["plain", "striped", "dotted", "checkered"]
BACKGROUNDS = {"gray": (128, 128, 128), "white": (245, 245, 245), "dark": (30, 30, 40), "beige": (225, 210, 180)}
VERBS = ["moves toward", "chases", "bumps into", "circles around"]


def shape_mask(kind: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Pixels inside a shape of radius r, given offsets from its centre."""
    if kind == "circle":
        return dx ** 2 + dy ** 2 <= r ** 2
    if kind == "square":
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if kind == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    raise ValueError(kind)


def texture(kind: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """1 where the texture shows the colour, 0 where it darkens (moves with the shape)."""
    period = max(r / 2.5, 2.0)
    if kind == "plain":
        return np.ones_like(dx, dtype=bool)
    if kind == "striped":
        return ((dx + dy) // period) % 2 == 0
    if kind == "dotted":
        return ((dx % period) - period / 2) ** 2 + ((dy % period) - period / 2) ** 2 > (period / 3.5) ** 2
    if kind == "checkered":
        return ((dx // period) + (dy // period)) % 2 == 0
    raise ValueError(kind)


def paint(canvas: np.ndarray, shape: dict, cx: float, cy: float, r: float) -> np.ndarray:
    """Draw one textured shape onto canvas [H, W, 3] in place; returns its mask."""
    h, w, _ = canvas.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xs - cx, ys - cy
    mask = shape_mask(shape["shape"], dx, dy, r)
    lit = texture(shape["texture"], dx, dy, r)
    color = np.array(COLORS[shape["color"]], dtype=np.float32)
    canvas[mask & lit] = color
    canvas[mask & ~lit] = color * 0.35
    return mask


def render_clip(subjects: list[dict], background: str, size: int, frames: int, rng: np.random.Generator,
                radius: float = 0.14):
    """Frames [F, size, size, 3] uint8 of the subjects (radius: a share of the size) moving and interacting."""
    r = size * radius
    pos = rng.uniform(r, size - r, size=(len(subjects), 2))
    centre = pos.mean(0)
    vel = (centre - pos) / max(frames, 1) * 1.5 + rng.normal(0, size * 0.01, size=pos.shape)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for f in range(frames):
        canvas = np.empty((size, size, 3), dtype=np.float32)
        canvas[:] = BACKGROUNDS[background]
        for k, subject in enumerate(subjects):
            paint(canvas, subject, pos[k, 0], pos[k, 1], r)
        out[f] = canvas.clip(0, 255).astype(np.uint8)
        pos += vel
        bounce = (pos < r) | (pos > size - r)
        vel[bounce] *= -1
        pos = pos.clip(r, size - r)
    return out


def reference_image(subject: dict, size: int = 128) -> tuple[Image.Image, Image.Image]:
    """The subject alone on white, and its mask."""
    canvas = np.full((size, size, 3), 255, dtype=np.float32)
    mask = paint(canvas, subject, size / 2, size / 2, size * 0.38)
    return Image.fromarray(canvas.astype(np.uint8)), Image.fromarray((mask * 255).astype(np.uint8))


def describe(subject: dict, appearance: bool = True) -> str:
    """"striped red circle", or just "circle" (appearance=False: then only the subject image tells)."""
    if not appearance:
        return subject["shape"]
    texture_word = "" if subject["texture"] == "plain" else subject["texture"] + " "
    return f"{texture_word}{subject['color']} {subject['shape']}"


def caption_for(subjects: list[dict], background: str, verb: str, appearance: bool = True) -> str:
    names = [describe(s, appearance) for s in subjects]
    if len(names) == 1:
        return f"A {names[0]} bounces around on a {background} background."
    if len(names) == 2:
        return f"A {names[0]} {verb} a {names[1]} on a {background} background."
    return f"A {names[0]} {verb} a {names[1]} while a {names[2]} watches, on a {background} background."


def make_sample(index: int, seed: int, size: int, frames: int, max_subjects: int = 3, appearance: bool = True,
                min_subjects: int = 1, radius: float = 0.14, background: str | None = None, count: int | None = None):
    """(subjects, caption, clip); appearance=False leaves colour and texture out of the caption;
    background: always this one (else drawn at random); count: this many subjects (else drawn between
    min_subjects and max_subjects; drawn either way, so a call without count gives the clip it always gave)."""
    rng = np.random.default_rng([seed, index])
    drawn_count = int(rng.integers(min_subjects, max_subjects + 1))
    count = count or drawn_count
    shapes = rng.choice(SHAPES, size=count, replace=False)
    subjects = [{"shape": str(s), "color": str(rng.choice(list(COLORS))), "texture": str(rng.choice(TEXTURES))}
                for s in shapes]
    drawn = str(rng.choice(list(BACKGROUNDS)))  # drawn either way: the same seed gives the same subjects
    background = background or drawn
    clip = render_clip(subjects, background, size, frames, rng, radius)
    return subjects, caption_for(subjects, background, str(rng.choice(VERBS)), appearance), clip


def write_synthetic_dataset(store: ArtifactStore, videos: int, seed: int = 0, size: int = 96, frames: int = 17,
                            fps: int = 8, progress=None) -> list[SampleRecord]:
    records = []
    for i in range(videos):
        # 1, 2, 3 subjects in turn: every training stage (one subject; two or more) finds its clips
        subjects, caption, clip = make_sample(i, seed, size, frames, count=1 + i % 3)
        sample_id = f"{i:06d}"
        store.write_bytes(f"clips/{sample_id}.mp4", encode_mp4(clip, fps=fps))
        subject_records = []
        for k, subject in enumerate(subjects):
            image, mask = reference_image(subject)
            for folder, picture in (("subjects", image), ("masks", mask)):
                store.write_bytes(f"{folder}/{sample_id}_{k}.png", png_bytes(picture))
            subject_records.append(SubjectRecord(word=subject["shape"], image=f"subjects/{sample_id}_{k}.png",
                                                 mask=f"masks/{sample_id}_{k}.png"))
        records.append(SampleRecord(id=sample_id, video=f"clips/{sample_id}.mp4", caption=caption,
                                    subjects=subject_records, fps=fps, num_frames=frames, width=size, height=size))
        if progress is not None:
            progress.update()
    write_manifest(store, records)
    return records


def write_raw_videos(store: ArtifactStore, videos: int, seed: int = 0, size: int = 96, frames: int = 48,
                     fps: int = 24, progress=None) -> list[str]:
    """Sample input for `polyvivid curate`: VIDEO.mp4 files with a structured caption file (VIDEO.json, the
    captioner's fields) beside each. Returns the video keys."""
    keys = []
    for i in range(videos):
        subjects, caption, clip = make_sample(i, seed, size, frames, min_subjects=1, max_subjects=2)
        background = caption.rstrip(".").split(" on a ")[-1]
        key = f"video-{i:04d}.mp4"
        store.write_bytes(key, encode_mp4(clip, fps=fps))
        store.write_text(key.replace(".mp4", ".json"), json.dumps({
            "caption": caption, "short_caption": caption.split(" on a ")[0] + ".", "background": f"a {background}",
            "style": "flat synthetic shapes", "camera": "static camera", "subjects": [s["shape"] for s in subjects]}))
        keys.append(key)
        if progress is not None:
            progress.update()
    return keys
