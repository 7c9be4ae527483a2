"""Tiny model fixtures: the `tiny` preset's shapes, random weights, seeded."""

from __future__ import annotations

import pytest
import torch

from polyvivid.model.presets import get_preset
from polyvivid.model.rope import interaction_positions

TINY = {k: v for k, v in get_preset("tiny").transformer.items()}


def tiny_transformer(**overrides):
    from polyvivid.model.transformer import PolyVividTransformer

    torch.manual_seed(0)
    return PolyVividTransformer(**{**TINY, **overrides}).eval()


def tiny_inputs(batch: int = 1, n_subjects: int = 2, seed: int = 1):
    """Inputs of a consistent shape: z_T = 3 + 2 + 1 text tokens and two 2x2 LLaVA grids."""
    g = torch.Generator().manual_seed(seed)
    text_lengths = [3] + [2] * (n_subjects - 1) + [1] if n_subjects else [6]
    grids = [(2, 2)] * n_subjects
    text_pos, subj_pos = interaction_positions(text_lengths, grids)
    length = text_pos.shape[0]
    return dict(
        hidden_states=torch.randn(batch, 16, 3, 8, 8, generator=g),
        timestep=torch.full((batch,), 500.0),
        encoder_hidden_states=torch.randn(batch, length, TINY["text_embed_dim"], generator=g),
        encoder_attention_mask=torch.ones(batch, length, dtype=torch.long),
        pooled_projections=torch.randn(batch, TINY["pooled_projection_dim"], generator=g),
        guidance=torch.full((batch,), 6000.0),
        subject_latents=torch.randn(batch, n_subjects, 16, 4, 4, generator=g),
        text_positions=text_pos[None].expand(batch, -1, -1),
        subject_positions=subj_pos[None].expand(batch, -1, -1),
    )


def without_subjects(inputs):
    keys = ("subject_latents", "text_positions", "subject_positions", "subject_mask")
    return {k: v for k, v in inputs.items() if k not in keys}


@pytest.fixture
def inputs():
    return tiny_inputs()
