"""Where a pipeline keeps what while it generates (PolyVividPipeline.place, api.service.InferenceMemory), on
the tiny preset on CPU. Moving LLaVA and CLIP between host and GPU needs a GPU: on CPU both places are the
CPU, so here the option is checked to leave the video unchanged, and the GPU path is exercised only where
a GPU is lent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polyvivid.api.service import InferenceMemory
from polyvivid.model.pipeline import PolyVividPipeline
from polyvivid.model.rope import interaction_positions
from polyvivid.model.transformer import PolyVividTransformer
from tests.model.test_pipeline import generate


def placed(**options) -> PolyVividPipeline:
    pipe = PolyVividPipeline.from_preset("tiny")
    pipe.place("cpu", **options)
    return pipe


def test_the_defaults_tile_the_vae_and_change_nothing_else():
    assert InferenceMemory().model_dump() == {"vae_tiling": True, "offload_encoders": True, "fp8_weights": False,
                                              "group_offload": False, "attention_backend": None,
                                              "encoding_cache_entries": 32}
    pipe = placed(**InferenceMemory().model_dump())
    assert pipe.vae.use_tiling and pipe.text_encoder.device.type == "cpu"
    assert np.array_equal(generate(pipe), generate(placed(vae_tiling=False, offload_encoders=False)))
    # at 272x272 (more than the VAE's 256-pixel tile) the tiled decode runs and stays close to the whole one
    tiled, whole = (generate(p, num_frames=5, height=272, width=272, num_inference_steps=1)
                    for p in (pipe, placed(vae_tiling=False)))
    assert tiled.shape == whole.shape == (5, 272, 272, 3)
    assert 0 < np.abs(tiled.astype(int) - whole.astype(int)).mean() < 5  # 2.6 measured: the tiles blend


def test_fp8_weights_store_a_quarter_of_the_bytes_and_generate_nearly_the_same():
    reference = generate(placed())
    pipe = placed(fp8_weights=True)
    linear = pipe.transformer.transformer_blocks[0].attn.to_out[0]
    assert linear.weight.dtype == torch.float8_e4m3fn  # stored in float8, computed in the model's dtype
    frames = generate(pipe)
    assert frames.shape == reference.shape
    assert 0 < np.abs(frames.astype(int) - reference.astype(int)).mean() < 2  # 0.18 measured: rounding, not a new video


def test_group_offload_and_an_attention_backend_generate_the_same_video():
    reference = generate(placed())
    assert np.array_equal(generate(placed(group_offload=True)), reference)
    math = generate(placed(attention_backend="_native_math"))
    assert np.abs(math.astype(int) - reference.astype(int)).max() <= 1
    with pytest.raises(ValueError):
        InferenceMemory(attention_backend="flash_hub")  # downloads kernels from the Hub: not offered


def test_no_attention_mask_reaches_the_blocks_when_nothing_is_padded():
    """An all-true mask would rule out flash attention kernels; a padded prompt keeps its mask."""
    torch.manual_seed(0)
    from polyvivid.model.presets import get_preset

    model = PolyVividTransformer(**get_preset("tiny").transformer).eval()
    seen = []
    model.transformer_blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[3]))
    text_pos, subject_pos = interaction_positions([5, 4], [(2, 2)])
    cfg = model.config

    def forward(mask):
        with torch.no_grad():
            model(hidden_states=torch.randn(1, 16, 2, 4, 4), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, len(text_pos), cfg.text_embed_dim),
                  encoder_attention_mask=mask, pooled_projections=torch.randn(1, cfg.pooled_projection_dim),
                  guidance=torch.tensor([6000.0]), subject_latents=torch.randn(1, 1, 16, 4, 4),
                  text_positions=text_pos[None], subject_positions=subject_pos[None])

    forward(torch.ones(1, len(text_pos), dtype=torch.long))
    forward(torch.tensor([[1] * (len(text_pos) - 2) + [0, 0]]))
    assert seen[0] is None and seen[1] is not None and not bool(seen[1].all())


def test_the_encoding_cache_skips_the_encoders_for_a_request_seen_before_and_stays_bounded():
    pipe = placed(encoding_cache_entries=2)
    reference = generate(placed())
    calls = []
    pipe.text_encoder.register_forward_pre_hook(lambda module, args: calls.append(1))
    assert np.array_equal(generate(pipe), reference)  # a miss: encoded, and kept
    encoded = len(calls)
    assert encoded > 0 and (pipe.encoding_cache.hits, pipe.encoding_cache.misses) == (0, 1)
    assert np.array_equal(generate(pipe, seed=0), reference)  # a hit: the same video, LLaVA not run
    assert len(calls) == encoded and pipe.encoding_cache.hits == 1
    from polyvivid.samples import draw_subject

    other = pipe("A man plays the guitar", [("man", draw_subject("woman")), ("guitar", draw_subject("guitar"))],
                 num_frames=9, height=64, width=64, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert len(calls) > encoded and not np.array_equal(other, reference)  # another image is another key
    pipe("A man plays", [("man", draw_subject("man"))], num_frames=9, height=64, width=64, num_inference_steps=1)
    assert len(pipe.encoding_cache.entries) == 2  # the oldest left
