"""`make learn-check`: proof on CPU, at toy scale, that subject conditioning learns (the direction of
the paper's Table 2).

The recipe, all from scratch in one process (23 minutes on 2 cores with the defaults), mirrors how
PolyVivid is made: a text-to-video base (HunyuanVideo), then PolyVivid's own parameters trained on it.
1. Data: `polyvivid synth-data` clips (textured shapes on a plain background), captioned by shape only
   ("A circle bounces around on a gray background."; a described caption, "A red striped circle ...",
   is kept for the base option below): the colour is in the subject image alone, so a model can only get
   it right by using the image.
2. The tiny preset's VAE, with 4 latent channels instead of 16 (a 2x2 patch of 16 channels is 64 numbers,
   as wide as the toy transformer, which then cannot carry the noise through: its samples were tinted
   fields, not clips), is trained to reconstruct the clips and the subject images (a random VAE decodes
   nothing recognisable); its latent scale is measured, not assumed. It trains on the clips'
   first 5 frames (one causal latent step): 3000 such steps cost 1.4x 1500 of 9 frames and keep the
   colours (held-out round trip, 16 channels: nearest palette hue right for 0.77-0.85 of clips, vs
   0.46-0.52; 4 channels: 0.54-0.85 by data seed).
3. Base pretraining (the base weights are trainable in this stage only): the tiny HunyuanVideo
   transformer learns text-to-video from the shape-only captions and is saved in the diffusers layout.
   Like HunyuanVideo and a person's identity, it can draw every colour but cannot be told which one:
   identity is what the subject image adds (`--base-captions described` teaches it the colour words).
4. PolyVivid training: each variant is assembled from that base exactly as from HunyuanVideo
   (`PolyVividTransformer.from_hunyuanvideo`: inherited interaction block, fresh LoRA and zero-initialised
   injection) and trains what `polyvivid train` trains by default (spec.trainable: the injection modules,
   the interaction LoRA, the blocks' Q/K/V LoRA; the base frozen) on the shape-only captions with the
   subject images: full PolyVivid (cross-attention identity injection) twice, with two seeds, to see how
   much a training run's seed moves the numbers; the no-injection ablation; token_concat. The text and
   image encoders stay at their random initialisation (frozen feature maps).
   Both stages train on batches of clips (captions padded, `pipeline.batch_conditions`).
5. Held-out cases (96 clips drawn with another seed: other motion, other shape-colour-texture pairings; one
   subject each) are generated once by every model, plus the full model given the
   wrong subject image (one of another colour) and the base given the caption alone (what the text gives).
6. Subject similarity needs no pretrained weights: the subject region of each frame is the pixels far
   from the (known) background colour; its mean chromaticity (r, g, b) / (r + g + b), which the
   synthetic textures' darker half shares with the lit half, is compared with the reference subject's:
   similarity = 1 - L1 / 2 (1: the same hue mix; two palette colours differ by 0.2-0.6). Colour accuracy
   is how often the nearest palette colour is the right one (chance 1/6). The identity score is the
   similarity to the subject's palette colour minus the mean similarity to the 5 other palette colours:
   chance-corrected, so a video that does not depend on the subject scores 0 on average over a balanced
   set of colours however saturated it is (a gray blur scores higher similarity than a confidently drawn
   wrong colour; the identity score does not reward it for that).

The check passes when full PolyVivid beats the wrong-subject control and the no-injection ablation in
identity score by more than the noise: the margin is max(3 x the standard error of the per-case paired
difference, 2 x the difference between the two full-model training seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..data.synthetic import BACKGROUNDS, COLORS, make_sample, reference_image
from ..train.training_utils import scheduled_lr, velocity_loss

REGION_DISTANCE = 60.0  # a pixel this far (RGB, 0-255) from the background belongs to the subject
MIN_REGION = 0.01  # below this share of the frame, the subject is absent: similarity 0


@dataclass(frozen=True)
class LearnCheckConfig:
    size: int = 32
    frames: int = 9
    train_clips: int = 512
    vae_steps: int = 3000
    vae_frames: int = 5  # the VAE trains on clips' first 1 + 4 frames: twice the steps in 1.4x the time of 9
    vae_batch: int = 4
    base_steps: int = 3000  # text-to-video base pretraining steps
    base_captions: str = "shape"  # "shape": the base never learns colour from text; "described": it does
    base_lr: float = 1e-3
    steps: int = 4000  # PolyVivid training steps per model
    lr: float = 1e-3
    batch: int = 8  # clips per step: on 2 cores 8 cost about 2x one (tiny tensors: overhead-bound)
    cases: int = 96
    generation_steps: int = 20
    # the full model sampled with the first-block step cache (model/step_cache.py) at this threshold too: what
    # caching does to identity (reported, not a check); 0 leaves the condition out
    step_cache_threshold: float = 0.1  # skipped 29% of the steps at seed 0 (0.05: none)
    # one video per case: 96 cases x 1 seed cost what 48 x 2 did, and independent cases narrow both the
    # paired SE and the evaluation noise inside the training-seed gap more than a second draw of the same case
    generation_seeds: tuple[int, ...] = (0,)
    training_seeds: tuple[int, ...] = (0, 1)  # the full model is trained with each: run-to-run noise
    seed: int = 0
    threads: int = 2
    radius: float = 0.24  # shapes' radius as a share of the frame (synth-data's 0.14 is a few pixels at 32 px)
    vae_lr: float = 2e-3
    subject_weight: float = 5.0  # VAE loss weight of subject pixels over background ones: colour is the point
    shift: float = 1.0  # flow-matching time shift; HunyuanVideo's 7.0 suits long high-resolution token grids
    background: str | None = "gray"  # one background: the subject is all that varies in appearance
    max_subjects: int = 1  # subjects per training clip
    latent_channels: int = 4  # the tiny VAE's 16 fill a 2x2 patch as wide as the toy transformer (64)


VARIANTS = {"full": "cross_attention", "no_injection": "none", "token_concat": "token_concat"}


@dataclass
class Clip:
    video: torch.Tensor  # [3, F, H, W] in -1..1
    caption: str  # names the shapes only (PolyVivid's training and the held-out cases)
    described: str  # names colour and texture too (the base's captions with --base-captions described)
    subjects: list[dict]
    background: str
    references: list = field(default_factory=list)  # (word, PIL image) per subject


def make_clips(count: int, seed: int, cfg: LearnCheckConfig, max_subjects: int) -> list[Clip]:
    clips = []
    for i in range(count):
        samples = [make_sample(i, seed, cfg.size, cfg.frames, max_subjects=max_subjects, appearance=appearance,
                               radius=cfg.radius, background=cfg.background) for appearance in (False, True)]
        (subjects, caption, frames), (_, described, _) = samples  # the same seed: the same clip, two captions
        background = caption.rstrip(".").split(" on a ")[-1].split()[0]
        video = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1
        clips.append(Clip(video, caption, described, subjects, background,
                          [(s["shape"], reference_image(s)[0]) for s in subjects]))
    return clips


# ---------------------------------------------------------------------------------------------- training

def train_vae(vae, clips: list[Clip], cfg: LearnCheckConfig, log) -> float:
    """Reconstruction (+ a light KL) on clips and on the subject images as one-frame videos, as an
    autoencoder; then the latent scaling factor is set so that scaled latents have unit variance."""
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    references = [img for c in clips for _, img in c.references]
    white = torch.ones(3)
    loss = torch.tensor(0.0)
    started = time.time()
    for step in range(cfg.vae_steps):
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(step, cfg.vae_lr, cfg.vae_steps, schedule="cosine", cosine_from_start=True)
        if step % 4 == 3:  # subject images at the size the pipeline encodes them
            picks = torch.randint(len(references), (cfg.vae_batch,), generator=generator).tolist()
            batch = torch.stack([_image_tensor(references[i], 64) for i in picks]).unsqueeze(2)
            backgrounds = white.expand(len(picks), 3)
        else:
            picks = torch.randint(len(clips), (cfg.vae_batch,), generator=generator).tolist()
            batch = torch.stack([clips[i].video[:, :cfg.vae_frames] for i in picks])
            backgrounds = torch.stack([torch.tensor(BACKGROUNDS[clips[i].background]) / 127.5 - 1 for i in picks])
        # subject pixels weigh more than the plain background, which would otherwise dominate the loss
        subject = (batch - backgrounds[:, :, None, None, None]).abs().amax(1, keepdim=True) > 0.2
        weight = 1 + (cfg.subject_weight - 1) * subject.float()
        # the posterior's mean, not a sample: at initialisation its noise (std ~1) drowns the latents and the
        # decoder learns to ignore them; the flow model is trained on these same means
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.mode()).sample
        loss = (weight * (reconstruction - batch) ** 2).mean() / weight.mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if step % 200 == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step + 1}/{cfg.vae_steps} loss {loss.item():.4f} ({time.time() - started:.0f} s)")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(c.video[None]).latent_dist.mode().flatten() for c in clips[:64]])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return float(loss.detach())


def _image_tensor(image, size: int) -> torch.Tensor:
    array = np.asarray(image.convert("RGB").resize((size, size)), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1


def base_transformer_kwargs(latent_channels: int | None = None) -> dict:
    """The tiny preset's HunyuanVideo shape, without PolyVivid's options; latent_channels: other in/out
    channels than the preset's (for a VAE with other latent channels)."""
    from diffusers import HunyuanVideoTransformer3DModel

    from ..model.presets import get_preset

    keys = set(HunyuanVideoTransformer3DModel._get_init_keys(HunyuanVideoTransformer3DModel))
    kwargs = {k: v for k, v in get_preset("tiny").transformer.items() if k in keys}
    if latent_channels is not None:
        kwargs.update(in_channels=latent_channels, out_channels=latent_channels)
    return kwargs


def pretrain_base(base, clips: list[Clip], cfg: LearnCheckConfig, directory: Path, log) -> float:
    """Text-to-video pretraining of a tiny HunyuanVideo transformer on the described captions; saved to
    `directory` in the diffusers layout (what `from_hunyuanvideo` reads)."""
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(cfg.seed)
    transformer = HunyuanVideoTransformer3DModel(**base_transformer_kwargs(cfg.latent_channels))
    caption = "described" if cfg.base_captions == "described" else "caption"
    inputs = cache_inputs(base, clips, lambda clip: base.encode_conditions(getattr(clip, caption), []))
    loss = train_transformer(transformer, list(transformer.parameters()), inputs, cfg.base_steps, cfg.base_lr,
                             cfg, cfg.seed, log, "base")
    transformer.save_pretrained(directory)
    return loss


def build_variant_pipeline(base, base_dir: Path, injection: str, seed: int, shift: float = 1.0):
    """PolyVivid with `injection`, assembled from the pretrained base as from HunyuanVideo, on the shared
    (trained) VAE and random encoders; seed draws PolyVivid's fresh LoRA and injection weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ..model.pipeline import PolyVividPipeline
    from ..model.presets import get_preset
    from ..model.transformer import PolyVividTransformer

    polyvivid_options = {k: v for k, v in get_preset("tiny").transformer.items() if k not in base_transformer_kwargs()}
    torch.manual_seed(seed)
    transformer = PolyVividTransformer.from_hunyuanvideo(base_dir, injection=injection, **polyvivid_options).eval()
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(base.scheduler.config, shift=shift)
    return PolyVividPipeline(transformer, base.vae, scheduler, base.text_encoder, base.tokenizer,
                             base.image_processor, base.text_encoder_2, base.tokenizer_2)


@torch.no_grad()
def cache_inputs(pipe, clips: list[Clip], conditions) -> list[tuple[torch.Tensor, dict]]:
    """Scaled latents and conditioning (`conditions(clip)`) of each clip: the VAE and encoders are frozen,
    so once suffices."""
    vae = pipe.vae
    return [((vae.encode(clip.video[None]).latent_dist.mode() * vae.config.scaling_factor).float(), conditions(clip))
            for clip in clips]


def train_transformer(transformer, params: list[torch.nn.Parameter], inputs: list[tuple[torch.Tensor, dict]],
                      steps: int, lr: float, cfg: LearnCheckConfig, seed: int, log, name: str) -> float:
    """Flow matching on `params` (the rest frozen), cfg.batch clips a step (captions padded), warm-up then
    cosine; returns the last 100 steps' mean loss."""
    from ..model.pipeline import batch_conditions

    transformer.train().requires_grad_(False)
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed * 7919 + 1)
    recent: list[float] = []
    started = time.time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(step, lr, steps, warmup_steps=100, schedule="cosine", cosine_from_start=True)
        picks = torch.randint(len(inputs), (cfg.batch,), generator=generator).tolist()
        x0 = torch.cat([inputs[i][0] for i in picks])
        cond = batch_conditions([inputs[i][1] for i in picks])
        loss = velocity_loss(transformer, x0, cond, generator, torch.device("cpu"), None, cfg.shift,
                             transformer.config.guidance_embeds)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        recent = (recent + [loss.item()])[-100:]
        if (step + 1) % 500 == 0 or step == steps - 1:
            log(f"{name}: step {step + 1}/{steps} loss (last 100) {np.mean(recent):.4f} ({time.time() - started:.0f} s)")
    transformer.eval().requires_grad_(False)
    return float(np.mean(recent))


# ---------------------------------------------------------------------------------------------- measuring

def chromaticity(pixels: np.ndarray) -> np.ndarray:
    """Mean (r, g, b) / (r + g + b) of pixels [N, 3]."""
    pixels = pixels.astype(np.float64)
    return (pixels / np.maximum(pixels.sum(-1, keepdims=True), 1.0)).mean(0)


def reference_chromaticity(subject: dict) -> np.ndarray:
    image, mask = reference_image(subject)
    return chromaticity(np.asarray(image)[np.asarray(mask) > 127])


class SubjectScore(NamedTuple):
    similarity: float  # 1 - L1/2 of the chromaticities, 0..1
    identity: float  # similarity to the subject's palette colour - mean similarity to the others; chance: 0
    right_colour: bool  # the nearest palette colour is the subject's


def _similarity(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 - 0.5 * float(np.abs(a - b).sum())


PALETTE = {name: chromaticity(np.array([rgb])) for name, rgb in COLORS.items()}


def _nearest_colour(chroma: np.ndarray) -> str:
    return max(PALETTE, key=lambda name: _similarity(chroma, PALETTE[name]))


def subject_similarity(frames: np.ndarray, background: str, target: np.ndarray) -> SubjectScore:
    """How well a video's subject region (the pixels far from the background) matches a target
    chromaticity; a video without one scores (0, 0, False)."""
    pixels = frames.reshape(-1, 3).astype(np.float64)
    region = np.linalg.norm(pixels - np.array(BACKGROUNDS[background], dtype=np.float64), axis=-1) > REGION_DISTANCE
    if region.mean() < MIN_REGION:
        return SubjectScore(0.0, 0.0, False)
    seen = chromaticity(pixels[region])
    truth = _nearest_colour(target)
    others = np.mean([_similarity(seen, c) for name, c in PALETTE.items() if name != truth])
    return SubjectScore(_similarity(seen, target), _similarity(seen, PALETTE[truth]) - float(others),
                        _nearest_colour(seen) == truth)


@torch.no_grad()
def round_trip(vae, clip: Clip) -> np.ndarray:
    decoded = vae.decode(vae.encode(clip.video[None]).latent_dist.mode()).sample[0].clamp(-1, 1)
    return ((decoded.permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()


def generate(pipe, clip: Clip, references, seed: int, cfg: LearnCheckConfig, step_cache: float = 0.0) -> np.ndarray:
    with torch.no_grad():
        return pipe(clip.caption, references, num_frames=cfg.frames, height=cfg.size, width=cfg.size,
                    num_inference_steps=cfg.generation_steps, guidance_scale=1.0,
                    generator=torch.Generator().manual_seed(seed), step_cache_threshold=step_cache)


def wrong_subject(cases: list[Clip], i: int) -> list:
    """The next case's subject image whose colour differs, under this case's word."""
    own = cases[i].subjects[0]["color"]
    for k in range(1, len(cases)):
        other = cases[(i + k) % len(cases)]
        if other.subjects[0]["color"] != own:
            return [(cases[i].subjects[0]["shape"], other.references[0][1])]
    raise ValueError("every case has the same colour")


# ---------------------------------------------------------------------------------------------- the run

def file_name(condition: str) -> str:
    """"full (seed 0)" -> "full_seed_0"."""
    return condition.replace("(", "").replace(")", "").replace(" ", "_")


def save_videos(directory: str | Path | None, condition: str, videos: np.ndarray) -> None:
    """[cases, generation seeds, F, H, W, 3] uint8 as DIR/full_seed_0.npy etc., to look at or re-score."""
    if directory is None:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    np.save(Path(directory) / f"{file_name(condition)}.npy", videos)


def contact_sheet(cases: list[Clip], videos: dict[str, np.ndarray], rows: int = 16, zoom: int = 3):
    """One PNG to look at: a row per case (the first `rows`), columns the reference image, the real clip
    and each condition's first generation, all at the middle frame; a header names the columns."""
    from PIL import Image, ImageDraw

    size = cases[0].video.shape[-1]
    middle = cases[0].video.shape[1] // 2
    cell = size * zoom + 2
    names = ["reference", "real clip"] + list(videos)
    sheet = Image.new("RGB", (cell * len(names), cell * (min(rows, len(cases)) + 1)), "black")
    draw = ImageDraw.Draw(sheet)
    for column, name in enumerate(names):
        draw.text((column * cell + 2, cell // 2 - 5), name[:cell // 6], fill="white")
    for row, case in enumerate(cases[:rows]):
        real = ((case.video[:, middle].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
        frames = [case.references[0][1].convert("RGB").resize((size, size)), Image.fromarray(real)]
        frames += [Image.fromarray(v[row, 0, middle]) for v in videos.values()]
        for column, frame in enumerate(frames):
            where = (column * cell + 1, (row + 1) * cell + 1)
            sheet.paste(frame.resize((size * zoom, size * zoom), Image.NEAREST), where)
    return sheet


def run(cfg: LearnCheckConfig, log=print, videos_dir: str | Path | None = None,
        keep_dir: str | Path | None = None) -> dict:
    """The whole recipe; keep_dir keeps what it trained (base/: the base transformer, diffusers layout;
    full_seed_0/ etc.: each PolyVivid model as a whole pipeline checkpoint, trained VAE included), so a
    later look at the generator needs no retraining."""
    from diffusers import AutoencoderKLHunyuanVideo

    from ..model.pipeline import PolyVividPipeline

    torch.set_num_threads(cfg.threads)
    started = time.time()
    train = make_clips(cfg.train_clips, cfg.seed, cfg, max_subjects=cfg.max_subjects)
    cases = make_clips(cfg.cases, cfg.seed + 1000, cfg, max_subjects=1)  # held out: another seed
    base = PolyVividPipeline.from_preset("tiny", seed=cfg.seed)
    if cfg.latent_channels != base.vae.config.latent_channels:
        base.register_modules(vae=AutoencoderKLHunyuanVideo.from_config(base.vae.config,
                                                                        latent_channels=cfg.latent_channels))
    base.set_progress_bar_config(disable=True)
    vae_loss = train_vae(base.vae, train, cfg, log)

    models, losses = {}, {}
    with tempfile.TemporaryDirectory(prefix="learn-check-base-") as scratch:
        base_dir = Path(keep_dir) / "base" if keep_dir is not None else Path(scratch)
        losses["base"] = pretrain_base(base, train, cfg, base_dir, log)
        inputs = cache_inputs(base, train, lambda clip: base.encode_conditions(clip.caption, clip.references))
        runs = [("full", s) for s in cfg.training_seeds] + [(v, cfg.training_seeds[0]) for v in VARIANTS if v != "full"]
        for variant, seed in runs:
            name = f"{variant} (seed {seed})" if variant == "full" else variant
            pipe = build_variant_pipeline(base, base_dir, VARIANTS[variant], seed, cfg.shift)
            pipe.set_progress_bar_config(disable=True)
            transformer = pipe.transformer
            transformer.freeze_base()  # what `polyvivid train` trains by default: PolyVivid's own parameters
            own = [p for p in transformer.parameters() if p.requires_grad]
            losses[name] = train_transformer(transformer, own, inputs, cfg.steps, cfg.lr, cfg, seed, log, name)
            models[name] = pipe
            if keep_dir is not None:
                pipe.save_pretrained(Path(keep_dir) / file_name(name))

    targets = [reference_chromaticity(c.subjects[0]) for c in cases]
    # the ceiling: the held-out clips themselves through the trained VAE (what a perfect generator could show)
    trips = [round_trip(base.vae, c) for c in cases]
    ceiling = [subject_similarity(v, c.background, t) for v, c, t in zip(trips, cases, targets)]
    made_videos: dict[str, np.ndarray] = {"real clips (VAE)": np.stack(trips)[:, None]}
    save_videos(videos_dir, "real clips vae", made_videos["real clips (VAE)"])
    log(f"measured VAE round trip of the real clips: similarity {np.mean([s.similarity for s in ceiling]):.4f}")
    full = models[f"full (seed {cfg.training_seeds[0]})"]
    conditions = {name: (pipe, "own", 0.0) for name, pipe in models.items()}
    conditions["wrong subject"] = (full, "wrong", 0.0)
    conditions["caption only"] = (full, "none", 0.0)  # no subject: exactly the pretrained base's forward
    if cfg.step_cache_threshold:
        conditions["step cache"] = (full, "own", cfg.step_cache_threshold)  # the full model, cached
    scores: dict[str, np.ndarray] = {}  # per condition: [cases, 3] (similarity, identity, right colour)
    skipped_steps = 0
    for name, (pipe, subject, step_cache) in conditions.items():
        per_case, videos = [], []
        for i, case in enumerate(cases):
            references = {"own": case.references, "wrong": wrong_subject(cases, i), "none": []}[subject]
            made = [generate(pipe, case, references, s, cfg, step_cache) for s in cfg.generation_seeds]
            if step_cache:
                skipped_steps += pipe.last_step_cache.skipped
            videos.append(np.stack(made))
            per_case.append(np.mean([subject_similarity(v, case.background, targets[i]) for v in made], axis=0))
        scores[name] = np.array(per_case)
        made_videos[name] = np.stack(videos)
        save_videos(videos_dir, name, made_videos[name])
        log(f"measured {name}: similarity {scores[name][:, 0].mean():.4f}, identity {scores[name][:, 1].mean():.4f}, "
            f"colour accuracy {scores[name][:, 2].mean():.3f}")
    if videos_dir is not None:
        contact_sheet(cases, made_videos).save(Path(videos_dir) / "contact_sheet.png")
    report = verdict(cfg, scores, losses, vae_loss, time.time() - started)
    if cfg.step_cache_threshold:
        generated = len(cases) * len(cfg.generation_seeds) * cfg.generation_steps
        report["step_cache"] = {"threshold": cfg.step_cache_threshold, "steps_skipped": skipped_steps,
                                "steps": generated}
    report["ceiling"] = dict(zip(("similarity", "identity", "colour_accuracy"), np.mean(ceiling, axis=0).tolist()))
    return report


def step_cache_sweep(model_dir: str | Path, cfg: LearnCheckConfig, thresholds: tuple[float, ...],
                     log=print) -> dict:
    """What the step cache does to identity, on a full model a learn-check run kept (`--keep DIR`:
    DIR/full_seed_0) with the same data seed: every held-out case generated without the cache and at each
    threshold. Per threshold: the share of steps skipped, seconds per video, the mean identity score and its
    paired change against no cache, with the change's standard error."""
    from ..model.pipeline import load_pipeline

    torch.set_num_threads(cfg.threads)
    cases = make_clips(cfg.cases, cfg.seed + 1000, cfg, max_subjects=1)  # the run's held-out cases
    targets = [reference_chromaticity(c.subjects[0]) for c in cases]
    pipe = load_pipeline(str(model_dir))
    pipe.set_progress_bar_config(disable=True)
    seed = cfg.generation_seeds[0]

    def identities(threshold: float) -> tuple[np.ndarray, float, float]:
        scores, skipped, started = [], 0, time.perf_counter()
        for case, target in zip(cases, targets):
            video = generate(pipe, case, case.references, seed, cfg, threshold)
            skipped += pipe.last_step_cache.skipped if threshold else 0
            scores.append(subject_similarity(video, case.background, target).identity)
        seconds = (time.perf_counter() - started) / len(cases)
        return np.array(scores), skipped / (len(cases) * cfg.generation_steps), seconds

    uncached, _, uncached_s = identities(0.0)
    log(f"no cache: identity {uncached.mean():.4f}, {uncached_s:.3f} s a video")
    rows = []
    for threshold in thresholds:
        scores, share, seconds = identities(threshold)
        change = scores - uncached
        rows.append({"threshold": threshold, "steps_skipped": round(share, 4), "seconds_per_video": round(seconds, 4),
                     "speedup": round(uncached_s / seconds, 3), "identity": round(float(scores.mean()), 4),
                     "identity_change": round(float(change.mean()), 4),
                     "identity_change_se": round(float(change.std(ddof=1) / math.sqrt(len(change))), 4)})
        log(f"threshold {threshold:g}: {rows[-1]}")
    return {"model": str(model_dir), "seed": cfg.seed, "cases": len(cases), "steps": cfg.generation_steps,
            "identity_no_cache": round(float(uncached.mean()), 4), "seconds_per_video_no_cache": round(uncached_s, 4),
            "thresholds": rows}


def verdict(cfg: LearnCheckConfig, scores: dict[str, np.ndarray], losses: dict, vae_loss: float,
            seconds: float) -> dict:
    """The table and the checks from per-case scores ([cases, 3]: similarity, identity, right colour);
    the checks compare identity scores."""
    full_names = [f"full (seed {s})" for s in cfg.training_seeds]
    scores = {name: np.asarray(values, dtype=np.float64) for name, values in scores.items()}
    full = scores[full_names[0]][:, 1]
    seed_gap = abs(float(scores[full_names[1]][:, 1].mean() - full.mean())) if len(full_names) > 1 else 0.0
    rows, checks = [], {}
    for name, values in scores.items():
        diff = full - values[:, 1]
        se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if name not in full_names[:1] else 0.0
        rows.append({"condition": name, "similarity": float(values[:, 0].mean()),
                     "identity": float(values[:, 1].mean()),
                     "identity_se": float(values[:, 1].std(ddof=1) / math.sqrt(len(values))),
                     "colour_accuracy": float(values[:, 2].mean()), "full_minus_this": float(diff.mean()),
                     "paired_se": se, "final_loss": losses.get(name)})
        if name in ("wrong subject", "no_injection"):
            margin = max(3 * se, 2 * seed_gap)
            checks[name] = {"difference": float(diff.mean()), "margin": margin, "passed": bool(diff.mean() > margin)}
    return {"config": asdict(cfg), "rows": rows, "checks": checks, "full_seed_gap": seed_gap,
            "vae_final_loss": vae_loss, "seconds": round(seconds, 1),
            "passed": all(c["passed"] for c in checks.values())}


def format_report(report: dict) -> str:
    lines = [f"{'condition':<16} {'similarity':>10} {'identity':>14} {'colour acc.':>11} "
             f"{'full - this':>12} {'paired SE':>10}"]
    for r in report["rows"]:
        lines.append(f"{r['condition']:<16} {r['similarity']:>10.4f} {r['identity']:>8.4f}±{r['identity_se']:.3f} "
                     f"{r['colour_accuracy']:>11.3f} {r['full_minus_this']:>12.4f} {r['paired_se']:>10.4f}")
    if "step_cache" in report:
        c = report["step_cache"]
        lines.append(f"step cache: the full model with threshold {c['threshold']:g} skipped {c['steps_skipped']} of "
                     f"{c['steps']} denoising steps")
    if "ceiling" in report:
        c = report["ceiling"]
        lines.append(f"{'real clips (VAE)':<16} {c['similarity']:>10.4f} {c['identity']:>8.4f}       "
                     f"{c['colour_accuracy']:>11.3f}   (the ceiling)")
    lines.append("identity score: similarity to the subject's colour - mean similarity to the other 5 (chance 0)")
    lines.append(f"run-to-run (two full-model training seeds): {report['full_seed_gap']:.4f}")
    for name, c in report["checks"].items():
        lines.append(f"full beats {name}: {c['difference']:.4f} > margin {c['margin']:.4f}: "
                     f"{'PASS' if c['passed'] else 'FAIL'}")
    lines.append(f"{'PASSED' if report['passed'] else 'FAILED'} in {report['seconds']:.0f} s")
    return "\n".join(lines)


def _at_least(lowest: int):
    """An argparse type: an integer >= lowest (bad values exit 2 with a one-line message)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest}, got {value}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polyvivid.experiments.learn_check",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="out/learn-check.json", help="the report (JSON)")
    parser.add_argument("--base-steps", type=_at_least(1), default=LearnCheckConfig.base_steps,
                        help="text-to-video base pretraining steps")
    parser.add_argument("--base-captions", choices=("shape", "described"), default=LearnCheckConfig.base_captions,
                        help="what the base's captions name: the shape only, or colour and texture too")
    parser.add_argument("--steps", type=_at_least(1), default=LearnCheckConfig.steps,
                        help="PolyVivid training steps per model")
    parser.add_argument("--vae-steps", type=_at_least(1), default=LearnCheckConfig.vae_steps, help="VAE training steps")
    parser.add_argument("--cases", type=_at_least(2), default=LearnCheckConfig.cases, help="held-out cases")
    parser.add_argument("--train-clips", type=_at_least(1), default=LearnCheckConfig.train_clips,
                        help="synthetic training clips")
    parser.add_argument("--seed", type=int, default=0,
                        help="data seed: the training clips, held-out cases and initialisations")
    parser.add_argument("--threads", type=_at_least(1), default=LearnCheckConfig.threads,
                        help="torch threads (1 when several checks share the cores: the toy model is overhead-bound)")
    parser.add_argument("--latent-channels", type=_at_least(1), default=LearnCheckConfig.latent_channels,
                        help="the VAE's latent channels; the transformer's in/out channels follow (the tiny "
                             "preset has 16)")
    parser.add_argument("--keep", default=None,
                        help="a directory to keep the trained base (base/) and every PolyVivid model in (full_seed_0/ "
                             "etc.: whole pipeline checkpoints, `polyvivid generate --model DIR` loads them)")
    parser.add_argument("--videos", default=None,
                        help="a directory to write every condition's generated videos to (.npy) and contact_sheet.png "
                             "(a row per case: reference, real clip, each condition's video, middle frames)")
    args = parser.parse_args(argv)
    cfg = LearnCheckConfig(base_steps=args.base_steps, base_captions=args.base_captions, steps=args.steps,
                           vae_steps=args.vae_steps, cases=args.cases, train_clips=args.train_clips, seed=args.seed,
                           latent_channels=args.latent_channels, threads=args.threads)
    report = run(cfg, log=lambda m: print(m, file=sys.stderr, flush=True), videos_dir=args.videos, keep_dir=args.keep)
    print(format_report(report))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
