"""PolyVividTransformer: shapes, zero-init no-op, LoRA placement, gradients, ablations, weights I/O."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel

from polyvivid.model.options import INJECTION_STRATEGIES
from polyvivid.model.transformer import PolyVividTransformer
from tests.model.conftest import TINY, tiny_inputs, tiny_transformer, without_subjects

BASE_KEYS = set(HunyuanVideoTransformer3DModel._get_init_keys(HunyuanVideoTransformer3DModel))


def base_twin(model: PolyVividTransformer) -> HunyuanVideoTransformer3DModel:
    """The plain diffusers model with the same base weights (LoRA wrappers unwrapped)."""
    base = HunyuanVideoTransformer3DModel(**{k: v for k, v in TINY.items() if k in BASE_KEYS}).eval()
    state = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items()
             if "lora_" not in k and not k.startswith(("interaction.", "identity_injection."))}
    base.load_state_dict(state, strict=True)
    return base


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs).sample


def test_output_shape_and_batching(inputs):
    model = tiny_transformer()
    out = run(model, inputs)
    assert out.shape == inputs["hidden_states"].shape
    batch = tiny_inputs(batch=2)
    assert run(model, batch).shape == (2, 16, 3, 8, 8)


def test_without_subjects_it_is_the_base_model(inputs):
    model = tiny_transformer()
    assert torch.equal(run(model, without_subjects(inputs)), run(base_twin(model), without_subjects(inputs)))


def test_fresh_injection_leaves_base_output_unchanged(inputs):
    # Interaction off: the subjects can reach the video only through the injection, which is a no-op.
    model = tiny_transformer(use_interaction=False)
    expected = run(base_twin(model), without_subjects(inputs))
    assert torch.allclose(run(model, inputs), expected, atol=1e-6)
    # Interaction on: it enhances the text, but the injection still adds nothing.
    with_injection = tiny_transformer(injection="cross_attention")
    no_injection = tiny_transformer(injection="none")
    assert torch.allclose(run(with_injection, inputs), run(no_injection, inputs), atol=1e-6)
    assert not torch.allclose(run(with_injection, inputs), expected, atol=1e-4)


def test_trained_injection_changes_the_output_and_depends_on_the_subject(inputs):
    model = tiny_transformer(use_interaction=False)
    with torch.no_grad():
        for block in model.identity_injection:
            block.proj_out.weight.normal_(std=0.2)
    out = run(model, inputs)
    other = dict(inputs, subject_latents=torch.randn_like(inputs["subject_latents"]))
    assert not torch.allclose(out, run(model, without_subjects(inputs)), atol=1e-4)
    assert not torch.allclose(out, run(model, other), atol=1e-4)


def test_lora_sits_exactly_on_the_intended_modules():
    model = tiny_transformer()
    lora = {n for n, m in model.named_modules() if hasattr(m, "lora_A")}
    interaction = {f"interaction.block.{p}" for p in (
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
        "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")}
    # The injection's LoRA is its own (Eq. 7-8): on the inherited video Q/K/V and FFN, inside the
    # injection modules; nothing of the base blocks is wrapped.
    injection = {f"identity_injection.{i}.lora_{x}" for i in range(TINY["num_layers"])
                 for x in ("q", "k", "v", "ff_in", "ff_out")}
    assert lora == interaction | injection
    assert not any(re.search(r"transformer_blocks|token_refiner|context_embedder", n) for n in lora)

    adapter = tiny_transformer(injection="adapter")
    assert {n for n, m in adapter.named_modules() if hasattr(m, "lora_A")} == interaction
    concat = tiny_transformer(injection="token_concat")
    assert {n for n, m in concat.named_modules() if hasattr(m, "lora_A")} == interaction | {
        f"transformer_blocks.{i}.attn.to_{x}" for i in range(TINY["num_layers"]) for x in "qkv"}
    shared = tiny_transformer(interaction_weights="shared", injection="none")
    assert {n for n, m in shared.named_modules() if hasattr(m, "lora_A")} == {
        n.replace("interaction.block", "transformer_blocks.0") for n in interaction}
    assert shared.interaction.block is None


@pytest.mark.parametrize("injection", ["cross_attention", "adapter", "none"])
def test_without_subjects_it_is_the_base_model_whatever_polyvivids_weights(inputs, injection):
    """The invariant of Eq. 7-8: PolyVivid's LoRA acts only inside the injection (and the interaction's
    own block copy), so the subject-free forward (a request without subjects, CFG's unconditional
    branch) runs the pretrained weights however far training moved PolyVivid's parameters."""
    model = tiny_transformer(injection=injection)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in set(model.polyvivid_parameter_names()):
                param.normal_(std=0.3)
    assert torch.equal(run(model, without_subjects(inputs)), run(base_twin(model), without_subjects(inputs)))
    assert not torch.allclose(run(model, inputs), run(base_twin(model), without_subjects(inputs)), atol=1e-3)


def test_token_concat_documents_its_own_rule(inputs):
    """token_concat adapts the blocks' shared video Q/K/V (OmniControl): once trained, its subject-free
    forward is no longer the base model's (the transformer's docstring says so)."""
    model = tiny_transformer(injection="token_concat")
    assert torch.equal(run(model, without_subjects(inputs)), run(base_twin(model), without_subjects(inputs)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("transformer_blocks.") and "lora_B" in name:
                param.normal_(std=0.3)
    assert not torch.allclose(run(model, without_subjects(inputs)), run(base_twin(model), without_subjects(inputs)),
                              atol=1e-4)


def test_the_injection_ffn_is_the_blocks_pretrained_ffn_until_its_lora_moves():
    model = tiny_transformer()
    block, injection = model.transformer_blocks[1], model.identity_injection[1]
    x = torch.randn(2, 7, TINY["num_attention_heads"] * TINY["attention_head_dim"])
    with torch.no_grad():
        assert torch.allclose(injection.transform(x, block), block.ff(x), atol=1e-6)
        injection.lora_ff_out.lora_B.weight.normal_(std=0.3)
        assert not torch.allclose(injection.transform(x, block), block.ff(x), atol=1e-4)
    assert all("lora_" in n or n.startswith("proj_out.") for n, _ in injection.named_parameters())


def test_gradients_reach_only_trainable_parameters(inputs):
    model = tiny_transformer().train()
    counts = model.freeze_base()
    assert set(counts) == {"identity_injection", "lora_interaction", "lora_blocks"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(model.polyvivid_parameter_names())
    assert all("lora_" in n or n.startswith("identity_injection.") for n in trainable)
    model(**inputs).sample.square().mean().backward()
    for name, param in model.named_parameters():
        if name in trainable:
            assert param.grad is not None, name
        else:
            assert param.grad is None, name
    # The zero-initialised output FCs are where learning starts.
    assert all(model.identity_injection[i].proj_out.weight.grad.abs().sum() > 0 for i in range(TINY["num_layers"]))


@pytest.mark.parametrize("injection", INJECTION_STRATEGIES)
@pytest.mark.parametrize("switches", [
    dict(),
    dict(use_interaction=False),
    dict(use_interaction_rope=False),
    dict(interaction_weights="shared", interaction_block=1),
])
def test_every_ablation_variant_runs_and_learns(injection, switches, inputs):
    model = tiny_transformer(injection=injection, **switches).train()
    counts = model.freeze_base()
    out = model(**inputs).sample
    assert out.shape == inputs["hidden_states"].shape and torch.isfinite(out).all()
    if injection == "none" and switches.get("use_interaction") is False:
        assert counts == {}  # nothing of PolyVivid left: the base-model baseline
        return
    out.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


def test_switches_change_what_the_model_computes(inputs):
    full = run(tiny_transformer(), inputs)
    assert not torch.allclose(full, run(tiny_transformer(use_interaction_rope=False), inputs), atol=1e-6)
    assert not torch.allclose(full, run(tiny_transformer(injection="token_concat"), inputs), atol=1e-6)


def test_padding_subjects_are_ignored():
    model = tiny_transformer()
    with torch.no_grad():
        for block in model.identity_injection:
            block.proj_out.weight.normal_(std=0.2)
    one = tiny_inputs(n_subjects=1)
    padded = dict(one, subject_latents=torch.cat([one["subject_latents"], torch.randn(1, 1, 16, 4, 4)], 1),
                  subject_mask=torch.tensor([[True, False]]),
                  subject_positions=torch.cat([one["subject_positions"], one["subject_positions"]], 1))
    assert torch.allclose(run(model, one), run(model, padded), atol=1e-5)


def test_too_many_subjects_is_an_error():
    model = tiny_transformer(max_subjects=1)
    with pytest.raises(ValueError, match="at most 1"):
        run(model, tiny_inputs(n_subjects=2))


def test_gradient_checkpointing_gives_the_same_gradients(inputs):
    grads = []
    for checkpointing in (False, True):
        model = tiny_transformer().train()
        with torch.no_grad():
            for block in model.identity_injection:
                block.proj_out.weight.normal_(std=0.1)
        model.freeze_base()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(**inputs).sample.square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


def test_polyvivid_weights_round_trip(tmp_path, inputs):
    model = tiny_transformer()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in set(model.polyvivid_parameter_names()):
                param.normal_(std=0.05)
    path = model.save_polyvivid_weights(tmp_path)
    assert path.stat().st_size < sum(p.numel() for p in model.parameters()) * 4 / 2  # only PolyVivid's own
    fresh = tiny_transformer()
    assert not torch.allclose(run(fresh, inputs), run(model, inputs), atol=1e-5)
    fresh.load_polyvivid_weights(tmp_path)
    assert torch.equal(run(fresh, inputs), run(model, inputs))
    with pytest.raises(ValueError, match="do not fit"):
        tiny_transformer(injection="adapter").load_polyvivid_weights(tmp_path)


def test_save_pretrained_round_trip(tmp_path, inputs):
    model = tiny_transformer()
    with torch.no_grad():
        model.identity_injection[0].proj_out.weight.normal_(std=0.1)
    model.save_pretrained(tmp_path)
    loaded = PolyVividTransformer.from_pretrained(tmp_path).eval()
    assert loaded.config.injection == "cross_attention"
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Bitwise equality of outputs is not promised across separately allocated models on CPU
    # (oneDNN picks kernels by alignment); the weights above are bitwise equal.
    assert torch.allclose(run(model, inputs), run(loaded, inputs), atol=1e-5)


def test_from_hunyuanvideo_inherits_base_weights(tmp_path, inputs):
    torch.manual_seed(3)
    base = HunyuanVideoTransformer3DModel(**{k: v for k, v in TINY.items() if k in BASE_KEYS}).eval()
    base.save_pretrained(tmp_path / "transformer")
    model = PolyVividTransformer.from_hunyuanvideo(tmp_path / "transformer", lora_rank=4, use_interaction=False)
    assert torch.allclose(run(model, without_subjects(inputs)), run(base, without_subjects(inputs)), atol=1e-6)
    assert torch.allclose(run(model, inputs), run(base, without_subjects(inputs)), atol=1e-6)  # zero-init no-op
    with_interaction = PolyVividTransformer.from_hunyuanvideo(tmp_path / "transformer", lora_rank=4,
                                                              interaction_block=1)
    copied = with_interaction.interaction.block.state_dict()
    source = base.transformer_blocks[1].state_dict()
    for name, tensor in source.items():
        wrapped = name.rsplit(".", 1)[0] + ".base_layer." + name.rsplit(".", 1)[1]
        assert torch.equal(copied.get(name, copied.get(wrapped)), tensor), name
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((tmp_path / "transformer" / "config.json").read_text())
    with pytest.raises(FileNotFoundError):
        PolyVividTransformer.from_hunyuanvideo(tmp_path / "empty")


def test_hunyuan_13b_parameter_counts():
    from polyvivid.model.presets import get_preset

    cfg = get_preset("hunyuan-13b").transformer
    with torch.device("meta"):
        base = HunyuanVideoTransformer3DModel(**{k: v for k, v in cfg.items() if k in BASE_KEYS})
        model = PolyVividTransformer(**cfg)
    count = lambda m, pred=lambda n: True: sum(p.numel() for n, p in m.named_parameters() if pred(n))
    base_params = count(base)
    assert 12.5e9 < base_params < 13.5e9, base_params  # "13B"
    d, r, layers = 3072, cfg["lora_rank"], cfg["num_layers"]
    lora = lambda i, o: r * (i + o)
    double_block = count(base.transformer_blocks[0])
    interaction_lora = 6 * lora(d, d) + 2 * (lora(d, 4 * d) + lora(4 * d, d))
    zero_fc = layers * (d * d + d)  # the injection's only full-size new weight (Eq. 8's FC)
    injection_lora = layers * (3 * lora(d, d) + lora(d, 4 * d) + lora(4 * d, d))  # Q/K/V and the block's FFN
    assert count(model, lambda n: "lora_" not in n and not n.startswith(("interaction.", "identity_injection."))) == base_params
    assert count(model.interaction, lambda n: "lora_" not in n) == double_block
    assert count(model, lambda n: n.startswith("identity_injection.") and "lora_" not in n) == zero_fc
    assert count(model, lambda n: "lora_" in n) == interaction_lora + injection_lora
    assert count(model) == base_params + double_block + zero_fc + interaction_lora + injection_lora
    # What training updates (README "Checkpoints"): 258,011,136 at rank 64. Before the injection
    # inherited the blocks' FFN (a new FFN of width multiplier 1 per block): 596,299,776.
    trainable = zero_fc + interaction_lora + injection_lora
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n in set(model.polyvivid_parameter_names()))
    assert r != 64 or trainable == 258_011_136, trainable


def test_trainable_groups_can_be_chosen():
    model = tiny_transformer()
    counts = model.freeze_base(["identity_injection"])
    assert set(counts) == {"identity_injection"}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n in model.polyvivid_parameter_names() if n.startswith("identity_injection.") and ".lora_" not in n}
    model.freeze_base(["lora_blocks"])  # the injection's LoRA on the inherited Q/K/V and FFN
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n in model.polyvivid_parameter_names() if n.startswith("identity_injection.") and ".lora_" in n}
    with pytest.raises(ValueError, match="unknown trainable groups"):
        model.freeze_base(["everything"])
