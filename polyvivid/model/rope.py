"""Interaction 3D-RoPE (paper Eq. 4-6) and the rotary maths shared by every PolyVivid attention.

Positions are (t, y, x) triples. A running index t starts at 0: each <text> token takes (t, 0, 0)
and t += 1; subject k's LLaVA <image> tokens (an h x w grid, row-major) take
(t, y - h//2, x - w//2), its VAE tokens (t + 1, same y, x), then t += 2. So the two token sets of
one subject line up pixel by pixel, one step apart in time, and everything follows reading order.
"""

from __future__ import annotations

import torch


def centered_grid(h: int, w: int) -> torch.Tensor:
    """[h*w, 2] (y - h//2, x - w//2) in row-major order."""
    ys = torch.arange(h, dtype=torch.long) - h // 2
    xs = torch.arange(w, dtype=torch.long) - w // 2
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)
    return grid.reshape(-1, 2)


def interaction_positions(text_lengths: list[int], grids: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the text stream (z_T order) and of the subjects' VAE tokens.

    text_lengths: [m_1, ..., m_{n+1}], the <text> tokens before subject k's image; the last entry is
        the text after the last image (may be 0).
    grids: [(h_1, w_1), ..., (h_n, w_n)], each subject's token grid.
    Returns (text_stream_positions [sum(m) + sum(h*w), 3], vae_positions [sum(h*w), 3]), int64,
    columns (t, y, x); the text stream is text_1, image_1, text_2, ..., text_{n+1}.
    """
    if len(text_lengths) != len(grids) + 1:
        raise ValueError(f"need len(text_lengths) == len(grids) + 1, got {len(text_lengths)} and {len(grids)}")
    if any(m < 0 for m in text_lengths) or any(h <= 0 or w <= 0 for h, w in grids):
        raise ValueError("text lengths must be >= 0 and grids positive")
    stream, vae = [], []
    t = 0
    for k, m in enumerate(text_lengths):
        text = torch.zeros(m, 3, dtype=torch.long)
        text[:, 0] = torch.arange(t, t + m)
        stream.append(text)
        t += m
        if k == len(grids):
            break
        yx = centered_grid(*grids[k])
        image = torch.cat([torch.full((len(yx), 1), t, dtype=torch.long), yx], dim=1)
        stream.append(image)
        vae.append(image + torch.tensor([1, 0, 0]))
        t += 2
    empty = torch.zeros(0, 3, dtype=torch.long)
    return torch.cat(stream) if stream else empty, torch.cat(vae) if vae else empty


def video_positions(frames: int, height: int, width: int, device=None) -> torch.Tensor:
    """[F*H*W, 3] (t, y, x) from 0, as HunyuanVideo's own RoPE lays out the video tokens."""
    grid = torch.meshgrid(
        torch.arange(frames, device=device), torch.arange(height, device=device),
        torch.arange(width, device=device), indexing="ij",
    )
    return torch.stack(grid, dim=-1).reshape(-1, 3)


def rope_cos_sin(positions: torch.Tensor, axes_dim: tuple[int, ...], theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [..., N, sum(axes_dim)] for positions [..., N, 3].

    Same frequencies and interleaved layout as diffusers' HunyuanVideoRotaryPosEmbed
    (`get_1d_rotary_pos_embed(use_real=True)`), so video positions from `video_positions` give
    exactly the base model's RoPE.
    """
    cos_parts, sin_parts = [], []
    pos = positions.to(torch.float32)
    for axis, dim in enumerate(axes_dim):
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim))
        angles = pos[..., axis:axis + 1] * freqs  # [..., N, dim/2]
        cos_parts.append(angles.cos().repeat_interleave(2, dim=-1))
        sin_parts.append(angles.sin().repeat_interleave(2, dim=-1))
    return torch.cat(cos_parts, dim=-1), torch.cat(sin_parts, dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, N, H, D] by cos/sin [N, D] or [B, N, D] (pairs interleaved, as HunyuanVideo)."""
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :].to(x.device), sin[:, :, None, :].to(x.device)
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)
