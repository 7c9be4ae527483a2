"""LLaVA text-image fusion: the structured prompt, the cropped z_T and where each subject's tokens are."""

from __future__ import annotations

import pytest
import torch

from polyvivid.model.fusion import END_OF_TURN, TextImageFusion, fusion_text
from polyvivid.model.pipeline import PolyVividPipeline
from polyvivid.samples import draw_subject


@pytest.fixture(scope="module")
def pipe():
    return PolyVividPipeline.from_preset("tiny")


def test_structured_prompt():
    assert fusion_text("A man plays the guitar", ["man", "guitar"]) == (
        "A man plays the guitar<|eot_id|>The man looks like <image>. The guitar looks like <image>.")
    assert fusion_text("A man", ["man"], with_images=False) == "A man"


def test_the_separator_is_the_tokenizers_end_of_turn_token(pipe):
    ids = pipe.tokenizer(fusion_text("A man waves", ["man"]), add_special_tokens=False)["input_ids"]
    eot = pipe.tokenizer.convert_tokens_to_ids(END_OF_TURN)
    assert ids.count(eot) == 1  # one token, not the five characters of "<SEP>"
    assert "SEP" not in pipe.tokenizer.decode(ids)
    with pytest.raises(ValueError, match="not one token"):
        TextImageFusion(pipe.text_encoder, pipe.tokenizer, pipe.image_processor, separator="<SEP>")


def test_z_t_holds_text_then_each_subjects_image_run(pipe):
    fusion = TextImageFusion(pipe.text_encoder, pipe.tokenizer, pipe.image_processor)
    subjects = [("man", draw_subject("man")), ("guitar", draw_subject("guitar"))]
    fused = fusion.encode("A man plays the guitar", subjects)
    user_text = fusion_text("A man plays the guitar", ["man", "guitar"])
    n_text = len(pipe.tokenizer(user_text, add_special_tokens=False)["input_ids"]) - 2  # minus the <image>s
    grid = fusion.grid
    assert grid == 4 and fused.grids == [(4, 4), (4, 4)]
    # The chat prefix and the assistant suffix are cropped: only the user turn is left.
    assert fused.embeds.shape == (1, n_text + 2 * grid * grid, 32)
    assert sum(fused.text_lengths) == n_text and len(fused.text_lengths) == 3
    # " The man looks like " ends the first text run; "." ends the last.
    first = len(pipe.tokenizer(f"A man plays the guitar{END_OF_TURN}The man looks like ",
                               add_special_tokens=False)["input_ids"])
    assert fused.text_lengths[0] == first and fused.text_lengths[2] == 1
    assert fused.text_positions.shape == (fused.embeds.shape[1], 3)
    assert fused.subject_positions.shape == (2 * grid * grid, 3)
    image_1 = fused.text_positions[first:first + grid * grid]
    assert image_1[:, 0].unique().tolist() == [first]
    assert torch.equal(fused.subject_positions[:grid * grid, 1:], image_1[:, 1:])


def test_each_image_run_carries_its_own_subject(pipe):
    fusion = TextImageFusion(pipe.text_encoder, pipe.tokenizer, pipe.image_processor)
    man, tiger = draw_subject("man"), draw_subject("tiger")
    a = fusion.encode("A man and a tiger", [("man", man), ("tiger", tiger)])
    b = fusion.encode("A man and a tiger", [("man", man), ("tiger", man)])
    g2 = fusion.grid ** 2
    start_2 = a.text_lengths[0] + g2 + a.text_lengths[1]
    first_run = slice(a.text_lengths[0], a.text_lengths[0] + g2)
    assert torch.allclose(a.embeds[:, :a.text_lengths[0]], b.embeds[:, :a.text_lengths[0]])
    assert torch.allclose(a.embeds[:, first_run], b.embeds[:, first_run], atol=1e-6)
    assert not torch.allclose(a.embeds[:, start_2:start_2 + g2], b.embeds[:, start_2:start_2 + g2], atol=1e-4)


def test_without_fusion_llava_sees_the_prompt_alone(pipe):
    fusion = TextImageFusion(pipe.text_encoder, pipe.tokenizer, pipe.image_processor)
    fused = fusion.encode("A man", [("man", draw_subject("man"))], with_images=False)
    n = len(pipe.tokenizer("A man", add_special_tokens=False)["input_ids"])
    assert fused.embeds.shape[1] == n and fused.grids == []
    assert fused.text_positions[:, 0].tolist() == list(range(n))
    assert fused.subject_positions.shape == (16, 3) and fused.subject_positions[0, 0] == n + 1


def test_subject_images_reach_the_vae_on_the_llava_grid(pipe):
    latents = pipe.encode_subjects([draw_subject("man"), draw_subject("dog")])
    assert pipe.subject_image_size == 64
    assert latents.shape == (1, 2, 16, 8, 8)  # 8x8 latents = a 4x4 token grid after 2x2 patches
