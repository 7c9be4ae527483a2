"""PolyVividPipeline end to end on the tiny preset: sampling, determinism, every way to load it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from polyvivid.model.pipeline import InvalidRequest, PolyVividPipeline, batch_conditions, load_pipeline
from polyvivid.model.presets import get_preset
from polyvivid.model.tokenizer import byte_tokenizer
from polyvivid.samples import draw_subject
from polyvivid.storage import open_store

PROMPT = "A man plays the guitar"


@pytest.fixture(scope="module")
def pipe():
    return PolyVividPipeline.from_preset("tiny")


def subjects():
    return [("man", draw_subject("man")), ("guitar", draw_subject("guitar"))]


def generate(pipe, seed=0, **kwargs):
    args = dict(num_frames=9, height=64, width=64, num_inference_steps=3, generator=torch.Generator().manual_seed(seed))
    args.update(kwargs)
    return pipe(PROMPT, subjects(), **args)


def test_generates_frames_of_the_requested_shape(pipe):
    steps = []
    frames = generate(pipe, num_frames=5, height=48, width=80, callback=lambda i, n: steps.append((i, n)))
    assert frames.shape == (5, 48, 80, 3) and frames.dtype == np.uint8
    assert steps == [(1, 3), (2, 3), (3, 3)]


def test_same_seed_same_video_other_seed_other_video(pipe):
    a, b, c = generate(pipe, seed=1), generate(pipe, seed=1), generate(pipe, seed=2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_subjects_condition_the_result(pipe):
    base = pipe(PROMPT, [], num_inference_steps=2, output_type="latent", generator=torch.Generator().manual_seed(0))
    cond = pipe(PROMPT, subjects(), num_inference_steps=2, output_type="latent", generator=torch.Generator().manual_seed(0))
    assert base.shape == cond.shape and not torch.allclose(base, cond, atol=1e-5)


def test_the_pooled_prompt_tells_captions_apart(pipe):
    # CLIP pools at the end-of-text token: the tiny tokenizer must add one, or every "A ..." caption
    # pools its first token and gets the same vector
    ids = pipe.tokenizer_2("A man").input_ids
    assert ids[0] == pipe.text_encoder_2.config.bos_token_id and ids[-1] == pipe.text_encoder_2.config.eos_token_id
    man, tiger = pipe.pooled_prompt("A man plays the guitar"), pipe.pooled_prompt("A tiger plays the guitar")
    assert (man - tiger).norm() > 0.05 * man.norm()


def test_true_cfg_and_vae_tiling_run(pipe):
    frames = generate(pipe, true_cfg_scale=4.0, negative_prompt="blurry", num_inference_steps=2)
    assert frames.shape == (9, 64, 64, 3)
    tiled = PolyVividPipeline.from_preset("tiny")
    tiled.enable_vae_tiling()
    assert tiled.vae.use_tiling
    assert generate(tiled, num_inference_steps=1).shape == (9, 64, 64, 3)


@pytest.mark.parametrize("bad, message", [
    (dict(num_frames=8), r"num_frames: must be of the form 4k\+1"),
    (dict(height=60), "height: must be a positive multiple of 16"),
    (dict(subjects=[("cat", None)]), "does not appear"),
    (dict(subjects=[("man", None)] * 5), "at most 4"),
])
def test_bad_requests_are_refused_with_the_field_named(pipe, bad, message):
    args = dict(prompt="a man", subjects=[], num_frames=9, height=64, width=64, num_inference_steps=1)
    args.update(bad)
    with pytest.raises(InvalidRequest, match=message):
        pipe(**args)


def latents_of(pipe):
    return pipe(PROMPT, subjects(), num_inference_steps=2, output_type="latent",
                generator=torch.Generator().manual_seed(0))


def test_checkpoint_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "ckpt")
    loaded = PolyVividPipeline.from_pretrained(tmp_path / "ckpt")
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert torch.allclose(latents_of(pipe), latents_of(loaded), atol=1e-4)
    assert load_pipeline(str(tmp_path / "ckpt")).transformer.config.injection == "cross_attention"


def trained_like(seed=0):
    """A tiny pipeline whose PolyVivid weights are no longer at their init."""
    pipe = PolyVividPipeline.from_preset("tiny")
    g = torch.Generator().manual_seed(seed)
    own = set(pipe.transformer.polyvivid_parameter_names())
    with torch.no_grad():
        for name, p in pipe.transformer.named_parameters():
            if name in own:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return pipe


def test_polyvivid_weights_alone_are_small_and_load_on_their_base(tmp_path, s3_bucket):
    pipe = trained_like()
    out = pipe.save_polyvivid(tmp_path / "final", base={"preset": "tiny", "seed": 0})
    card = json.loads((out / "polyvivid_pipeline.json").read_text())
    assert card["base"] == {"preset": "tiny", "seed": 0} and card["transformer_options"]["lora_rank"] == 4
    weights = (out / "polyvivid_weights.safetensors").stat().st_size
    total = sum(p.numel() for p in pipe.transformer.parameters()) * 4
    assert weights < total / 4
    local = load_pipeline(str(out))
    assert torch.allclose(latents_of(local), latents_of(pipe), atol=1e-4)
    assert not torch.allclose(latents_of(PolyVividPipeline.from_preset("tiny")), latents_of(pipe), atol=1e-4)
    # The same directory from S3.
    open_store(f"{s3_bucket}/runs/1/final").upload_dir(out, "")
    remote = load_pipeline(f"{s3_bucket}/runs/1/final")
    assert torch.allclose(latents_of(remote), latents_of(pipe), atol=1e-4)


def test_load_pipeline_explains_what_it_expected(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(FileNotFoundError, match="neither"):
        load_pipeline(str(tmp_path / "junk"))


def save_tiny_hunyuanvideo_and_llava(root):
    """Tiny copies of the published layouts: a diffusers HunyuanVideo directory and a LLaVA one."""
    preset = get_preset("tiny")
    keys = set(HunyuanVideoTransformer3DModel._get_init_keys(HunyuanVideoTransformer3DModel))
    torch.manual_seed(7)
    hv = root / "HunyuanVideo"
    transformer = HunyuanVideoTransformer3DModel(**{k: v for k, v in preset.transformer.items() if k in keys})
    transformer.save_pretrained(hv / "transformer")
    AutoencoderKLHunyuanVideo(**preset.vae).save_pretrained(hv / "vae")
    FlowMatchEulerDiscreteScheduler(shift=7.0).save_pretrained(hv / "scheduler")
    CLIPTextModel(CLIPTextConfig(**preset.clip_text)).save_pretrained(hv / "text_encoder_2")
    byte_tokenizer(clip=True).save_pretrained(hv / "tokenizer_2")
    llava_dir = root / "llava"
    LlavaForConditionalGeneration(LlavaConfig(
        vision_config=CLIPVisionConfig(**preset.llava_vision).to_dict(),
        text_config=LlamaConfig(**preset.llava_text).to_dict(), **preset.llava)).save_pretrained(llava_dir)
    byte_tokenizer().save_pretrained(llava_dir)
    size = preset.llava_vision["image_size"]
    CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(llava_dir)
    return hv, llava_dir, transformer


def test_from_hunyuanvideo_assembles_a_working_pipeline(tmp_path):
    hv, llava, base = save_tiny_hunyuanvideo_and_llava(tmp_path)
    pipe = PolyVividPipeline.from_hunyuanvideo(hv, llava, lora_rank=4)
    for name, tensor in base.state_dict().items():
        ours = pipe.transformer.state_dict()
        wrapped = name.rsplit(".", 1)[0] + ".base_layer." + name.rsplit(".", 1)[1]
        assert torch.equal(ours.get(name, ours.get(wrapped)), tensor), name
    assert generate(pipe, num_inference_steps=2).shape == (9, 64, 64, 3)
    # A trained run's weights on top of the real base, then loaded through the card.
    trained = trained_like(seed=3)
    trained.transformer.save_polyvivid_weights(tmp_path / "final")
    with_weights = PolyVividPipeline.from_hunyuanvideo(hv, llava, polyvivid_weights=tmp_path / "final", lora_rank=4)
    pipe.save_polyvivid(tmp_path / "final2", base={"hunyuanvideo": str(hv), "llava": str(llava)})
    assert torch.equal(with_weights.transformer.polyvivid_state_dict()["identity_injection.0.proj_out.weight"],
                       trained.transformer.polyvivid_state_dict()["identity_injection.0.proj_out.weight"])
    via_card = load_pipeline(str(tmp_path / "final2"))
    assert torch.allclose(latents_of(via_card), latents_of(pipe), atol=1e-4)


def test_subject_words_must_be_whole_words_of_the_prompt():
    from polyvivid.model.pipeline import validate_request

    validate_request("A Man plays the red guitar.", ["man", "red guitar"], 9, 64, 64, 4)
    with pytest.raises(InvalidRequest, match="'man' does not appear"):
        validate_request("A woman plays", ["man"], 9, 64, 64, 4)


@pytest.mark.parametrize("options", [
    dict(use_llava_fusion=False), dict(injection="adapter"), dict(injection="token_concat"),
    dict(injection="none", use_interaction=False), dict(use_interaction_rope=False),
])
def test_every_ablation_generates_through_the_pipeline(options):
    pipe = PolyVividPipeline.from_preset("tiny", **options)
    assert all(pipe.transformer.config[k] == v for k, v in options.items())
    assert generate(pipe, num_inference_steps=2).shape == (9, 64, 64, 3)


def test_a_padded_batch_gives_each_sample_what_it_gets_alone():
    """batch_conditions pads captions and subject lists; padding must change nothing a sample computes."""
    pipe = PolyVividPipeline.from_preset("tiny", seed=3)
    with torch.no_grad():  # a trained injection, so that the subjects matter
        for module in pipe.transformer.identity_injection:
            module.proj_out.weight.normal_(std=0.2)
    conditions = [pipe.encode_conditions("A man plays the guitar on a long sandy beach at dusk", subjects()),
                  pipe.encode_conditions("A man waves", subjects()[:1])]
    batch = batch_conditions(conditions)
    longest = conditions[0]["encoder_hidden_states"].shape[1]
    assert batch["encoder_hidden_states"].shape[:2] == (2, longest)
    assert conditions[1]["encoder_hidden_states"].shape[1] < longest
    assert batch["subject_mask"].tolist() == [[True, True], [True, False]]
    latents = torch.randn(2, 16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    step = dict(timestep=torch.tensor([500.0, 900.0]), guidance=torch.tensor([1000.0, 1000.0]))
    with torch.no_grad():
        together = pipe.transformer(hidden_states=latents, **step, **batch).sample
        alone = [pipe.transformer(hidden_states=latents[i:i + 1], timestep=step["timestep"][i:i + 1],
                                  guidance=step["guidance"][i:i + 1], **c).sample for i, c in enumerate(conditions)]
    assert torch.allclose(together, torch.cat(alone), atol=1e-5)


@pytest.mark.parametrize("injection", ["cross_attention", "token_concat", "adapter"])
def test_true_cfg_batches_the_unconditional_pass_as_the_base_model_computes_it(injection):
    """A condition without subjects batched with one that has them: its row is exactly the subject-free base
    forward (no interaction, no injection), and true CFG's one batch equals its two passes."""
    pipe = PolyVividPipeline.from_preset("tiny", seed=3, injection=injection)
    with torch.no_grad():  # PolyVivid's zero-initialised weights made nonzero, so that the subjects matter
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name or name.startswith("identity_injection."):
                p.normal_(std=0.2)
    cond = pipe.encode_conditions("A man plays the guitar on a long sandy beach at dusk", subjects())
    uncond = pipe.encode_conditions("blurry", [])
    batch = batch_conditions([cond, uncond])
    assert batch["subject_mask"].tolist() == [[True, True], [False, False]]
    latents = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    step = dict(timestep=torch.tensor([700.0]), guidance=torch.tensor([1000.0]))
    with torch.no_grad():
        together = pipe.transformer(hidden_states=latents.expand(2, -1, -1, -1, -1), timestep=step["timestep"].expand(2),
                                    guidance=step["guidance"].expand(2), **batch).sample
        conditioned = pipe.transformer(hidden_states=latents, **step, **cond).sample
        base = pipe.transformer(hidden_states=latents, **step, **uncond).sample  # HunyuanVideo's own forward
    assert torch.allclose(together[:1], conditioned, atol=1e-5) and torch.allclose(together[1:], base, atol=1e-5)
    assert (conditioned - base).abs().max() > 1e-2  # the subjects do change the conditioned row


def test_a_random_preset_starts_its_interaction_block_as_a_copy_of_the_base_block():
    pipe = PolyVividPipeline.from_preset("tiny", seed=3)
    transformer = pipe.transformer
    unwrap = lambda state: {k.replace(".base_layer.", "."): v for k, v in state.items() if "lora_" not in k}  # noqa: E731
    base = unwrap(transformer.transformer_blocks[transformer.config.interaction_block].state_dict())
    copied = unwrap(transformer.interaction.block.state_dict())
    assert copied.keys() == base.keys() and all(torch.equal(copied[k], base[k]) for k in base)


def test_the_timestep_reaches_the_transformer_in_fp32_in_a_bf16_pipeline():
    pipe = PolyVividPipeline.from_preset("tiny").to(torch.bfloat16)
    seen = []
    forward = pipe.transformer.forward

    def recording(*args, **kwargs):  # a spy around the real forward
        seen.append(kwargs["timestep"])
        return forward(*args, **kwargs)

    pipe.transformer.forward = recording
    generate(pipe, num_frames=5, height=32, width=32, num_inference_steps=5)
    assert seen and all(t.dtype == torch.float32 for t in seen)
    assert {t.item() for t in seen} == set(pipe.scheduler.timesteps.tolist())  # not rounded (995.1 is no 996)
    assert any(t.item() != round(t.item()) for t in seen)
