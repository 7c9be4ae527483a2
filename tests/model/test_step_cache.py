"""First-block step caching (model/step_cache.py) on the tiny preset: off it changes nothing, on it skips
steps and keys on the subject-conditioned stream, and it never outlives a generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polyvivid.model.pipeline import PolyVividPipeline
from polyvivid.model.presets import get_preset
from polyvivid.model.rope import interaction_positions
from polyvivid.model.step_cache import StepCache
from polyvivid.model.transformer import PolyVividTransformer
from tests.model.test_pipeline import generate


@pytest.fixture(scope="module")
def pipe():
    pipe = PolyVividPipeline.from_preset("tiny")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_a_threshold_skips_steps_and_stays_close_and_zero_changes_nothing(pipe):
    reference = generate(pipe, num_inference_steps=20)
    assert np.array_equal(generate(pipe, num_inference_steps=20, step_cache_threshold=0.0), reference)
    assert pipe.last_step_cache is None
    cached = generate(pipe, num_inference_steps=20, step_cache_threshold=0.3)
    assert pipe.last_step_cache.steps == 20 and 0 < pipe.last_step_cache.skipped < 20  # the first step always runs
    assert 0 < np.abs(cached.astype(int) - reference.astype(int)).mean() < 2
    assert pipe.transformer.step_cache is None  # taken off when the generation ends

    def stop(step, total):
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError):
        generate(pipe, num_inference_steps=3, step_cache_threshold=0.3, callback=stop)
    assert pipe.transformer.step_cache is None  # and when it fails


def inputs(subject_seed: int) -> dict:
    g = torch.Generator().manual_seed(0)
    cfg = get_preset("tiny").transformer
    text_pos, subject_pos = interaction_positions([5, 4], [(2, 2)])
    return dict(hidden_states=torch.randn(1, 16, 2, 4, 4, generator=g), timestep=torch.tensor([500.0]),
                encoder_hidden_states=torch.randn(1, len(text_pos), cfg["text_embed_dim"], generator=g),
                encoder_attention_mask=torch.ones(1, len(text_pos), dtype=torch.long),
                pooled_projections=torch.randn(1, cfg["pooled_projection_dim"], generator=g),
                guidance=torch.tensor([6000.0]), text_positions=text_pos[None], subject_positions=subject_pos[None],
                subject_latents=torch.randn(1, 1, 16, 4, 4, generator=torch.Generator().manual_seed(subject_seed)))


def test_the_cache_keys_on_the_subject_conditioned_stream():
    torch.manual_seed(0)
    model = PolyVividTransformer(**get_preset("tiny").transformer).eval()
    with torch.no_grad():  # a trained injection: its zero-initialised output layers made nonzero
        for name, p in model.named_parameters():
            if name.startswith("identity_injection.") or "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.1)
        whole = model(**inputs(1)).sample
        model.step_cache = cache = StepCache(1e-6)
        first = model(**inputs(1)).sample
        again = model(**inputs(1)).sample  # the same step again: skipped, and the cached residual holds every
        assert cache.skipped == 1 and torch.allclose(again, whole, atol=1e-5)  # later injection's work
        other = model(**inputs(2)).sample  # other subjects change the first block's residual: not skipped
        assert cache.skipped == 1 and not torch.allclose(other, whole, atol=1e-3)
    assert torch.allclose(first, whole, atol=1e-6)
    loss = model(**inputs(1)).sample.square().mean()  # with gradients the cache is neither read nor written
    assert cache.steps == 3
    loss.backward()
