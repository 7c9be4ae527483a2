"""Training maths shared by `polyvivid train` (trainer.py) and the learn-check (polyvivid/experiments):
rectified flow's noise levels and velocity loss, and the learning-rate schedule. No I/O, no process group.

The random draws happen in a fixed order from the generator passed in (the noise, then the noise
levels), so a step's draws are a function of its generator alone: resume and the learn-check's recorded
numbers depend on that order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def shift_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """HunyuanVideo's time shift: noise levels u in [0, 1) moved towards noise, s' = shift u / (1 + (shift - 1) u)
    (shift 1: unchanged)."""
    return shift * u / (1 + (shift - 1) * u)


def sample_sigmas(batch: int, generator: torch.Generator, shift: float) -> torch.Tensor:
    """One noise level per sample: uniform, then shifted (on the CPU, where the generator draws)."""
    return shift_sigmas(torch.rand((batch,), generator=generator), shift)


def velocity_loss(model, x0: torch.Tensor, cond: dict, generator: torch.Generator, device: torch.device,
                  autocast_dtype: torch.dtype | None, shift: float, guidance_embeds: bool) -> torch.Tensor:
    """Rectified flow as HunyuanVideo: x_t = (1 - s) x0 + s noise, predict the velocity noise - x0. x0 [B, ...]
    are scaled latents and `cond` the transformer's conditioning inputs; each sample draws its own level s."""
    batch = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator).to(device)
    sigma = sample_sigmas(batch, generator, shift).to(device)
    s = sigma.view(batch, *([1] * (x0.dim() - 1)))
    x_t = (1 - s) * x0 + s * noise
    guidance = torch.full((batch,), 1000.0, device=device) if guidance_embeds else None
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        pred = model(hidden_states=x_t, timestep=sigma * 1000.0, guidance=guidance, **cond).sample
    return F.mse_loss(pred.float(), (noise - x0).float())


def scheduled_lr(step: int, peak: float, total_steps: int, warmup_steps: int = 0, schedule: str = "constant",
                 cosine_from_start: bool = False) -> float:
    """The learning rate of 0-based `step`: a linear warm-up to `peak` over `warmup_steps`, then `peak`
    ("constant") or half a cosine down to 0 at `total_steps` ("cosine").

    By default the cosine starts where the warm-up ends (`polyvivid train`). cosine_from_start: it spans
    every step and the warm-up scales its start (the learn-check's recipe). The two are written as they
    always were, operation for operation, so both give the same floats as before.
    """
    if cosine_from_start:
        warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        decay = 0.5 * (1 + math.cos(math.pi * step / total_steps)) if schedule == "cosine" else 1.0
        return peak * warmup * decay
    if warmup_steps and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return peak * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return peak
