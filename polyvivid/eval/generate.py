"""Generating the test set's videos with a pipeline: CASE_ID.mp4 for every case, with each case's seed,
skipping cases whose video is already stored (a resumed evaluation redoes nothing)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..storage import open_store
from ..video import encode_mp4
from .cases import EvalCase


@dataclass(frozen=True)
class GenerationSettings:
    num_frames: int = 33
    height: int = 256
    width: int = 256
    steps: int = 30
    guidance: float = 6.0
    fps: int = 24


def load_generator(model: str, base: str | None = None, device: torch.device | None = None):
    """The pipeline at `model` (weights, checkpoint or preset) on `device` (default: a GPU if there is
    one), bf16 on a GPU, placed as a service places it by default (VAE tiling on, LLaVA and CLIP off the GPU
    between prompts), its per-step progress bar off (generate_case_videos shows one per video)."""
    from ..model.pipeline import load_pipeline

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(model, torch_dtype=torch.bfloat16 if device.type == "cuda" else torch.float32, base=base)
    pipe.place(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_case_videos(pipe, cases: list[EvalCase], videos_uri: str, settings: GenerationSettings,
                         progress: bool = True) -> list[str]:
    """Writes VIDEOS/CASE_ID.mp4 for each case that has none yet; returns the ids generated now."""
    from tqdm.auto import tqdm

    store = open_store(videos_uri, create_bucket=True)
    made = []
    for case in tqdm(cases, desc="generate", unit="video", disable=not progress):
        name = f"{case.id}.mp4"
        if store.exists(name):
            continue
        subjects = [(s.name, case.image(s)) for s in case.subjects]
        with torch.no_grad():
            frames = pipe(case.prompt, subjects, num_frames=settings.num_frames, height=settings.height,
                          width=settings.width, num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                          generator=torch.Generator().manual_seed(case.seed))
        store.write_bytes(name, encode_mp4(frames, fps=settings.fps))
        made.append(case.id)
    return made
