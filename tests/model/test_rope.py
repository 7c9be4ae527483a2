"""Interaction 3D-RoPE: the contract of Eq. 4-6 as DESIGN.md states it."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoRotaryPosEmbed

from polyvivid.model.rope import apply_rope, interaction_positions, rope_cos_sin, video_positions


def test_issue_example():
    stream, vae = interaction_positions([2, 1, 0], [(2, 2), (2, 2)])
    assert stream.dtype == vae.dtype == torch.int64
    assert stream.shape == (2 + 4 + 1 + 4, 3) and vae.shape == (8, 3)
    # text tokens at t = 0, 1, then image 1 at t = 2, text at t = 4, image 2 at t = 5
    assert stream[:2].tolist() == [[0, 0, 0], [1, 0, 0]]
    assert stream[2:6].tolist() == [[2, -1, -1], [2, -1, 0], [2, 0, -1], [2, 0, 0]]
    assert stream[6].tolist() == [4, 0, 0]
    assert stream[7:].tolist() == [[5, -1, -1], [5, -1, 0], [5, 0, -1], [5, 0, 0]]
    # VAE tokens one step after their image, on the same grid
    assert vae[:4].tolist() == [[3, -1, -1], [3, -1, 0], [3, 0, -1], [3, 0, 0]]
    assert vae[4:].tolist() == [[6, -1, -1], [6, -1, 0], [6, 0, -1], [6, 0, 0]]


def test_grid_is_row_major_and_centred_and_trailing_text_continues():
    stream, vae = interaction_positions([1, 3], [(3, 4)])
    image = stream[1:13]
    assert image[:, 0].unique().tolist() == [1]
    assert image[:4, 1:].tolist() == [[-1, -2], [-1, -1], [-1, 0], [-1, 1]]  # first row, x varies fastest
    assert image[-1, 1:].tolist() == [1, 1]
    assert torch.equal(vae[:, 1:], image[:, 1:]) and vae[:, 0].unique().tolist() == [2]
    assert stream[13:, 0].tolist() == [3, 4, 5] and stream[13:, 1:].abs().sum() == 0


def test_no_subjects_is_plain_text_positions():
    stream, vae = interaction_positions([5], [])
    assert stream[:, 0].tolist() == [0, 1, 2, 3, 4] and vae.shape == (0, 3)


def test_bad_arguments():
    with pytest.raises(ValueError):
        interaction_positions([1, 2], [(2, 2), (2, 2)])
    with pytest.raises(ValueError):
        interaction_positions([1, -1], [(2, 2)])


def test_rope_tables_match_hunyuanvideo_for_video_positions():
    base = HunyuanVideoRotaryPosEmbed(patch_size=2, patch_size_t=1, rope_dim=[8, 12, 12], theta=256.0)
    latents = torch.zeros(1, 16, 3, 8, 10)
    cos_ref, sin_ref = base(latents)
    cos, sin = rope_cos_sin(video_positions(3, 4, 5), (8, 12, 12), 256.0)
    assert torch.allclose(cos, cos_ref, atol=1e-6) and torch.allclose(sin, sin_ref, atol=1e-6)


def test_apply_rope_is_a_rotation_that_depends_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 2, 32), torch.randn(1, 1, 2, 32)

    def score(pq, pk):
        cq, sq = rope_cos_sin(torch.tensor([pq]), (8, 12, 12), 256.0)
        ck, sk = rope_cos_sin(torch.tensor([pk]), (8, 12, 12), 256.0)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    rotated = apply_rope(q, *rope_cos_sin(torch.tensor([[3, -1, 2]]), (8, 12, 12), 256.0))
    assert torch.allclose(rotated.norm(), q.norm(), atol=1e-5)
    assert torch.allclose(score([3, 1, -2], [1, 0, 0]), score([5, 2, -1], [3, 1, 1]), atol=1e-4)
    assert not torch.allclose(score([3, 1, -2], [1, 0, 0]), score([3, 1, -2], [2, 0, 0]), atol=1e-3)
