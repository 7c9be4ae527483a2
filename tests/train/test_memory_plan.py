"""The memory planner (issue 21, item 4): its closed-form counts against the model built on the meta device,
its activation model against the measured peak of a real training step on CPU, its verdicts at the real
shapes, `polyvivid plan`, and the operator's refusal."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from benchmarks.step_memory import measure
from polyvivid.api import PolyVividTraining, load_resource
from polyvivid.memory_plan import ENCODER_PARAMS, Setup, estimate, parameter_counts, plan, refusal
from polyvivid.model.presets import get_preset
from polyvivid.model.transformer import PolyVividTransformer
from tests.openapi import ROOT

OPTIONS = [{}, {"injection": "adapter"}, {"injection": "token_concat"}, {"injection": "none"},
           {"interaction_weights": "shared"}, {"use_interaction": False}, {"lora_rank": 8, "num_layers": 3}]


@pytest.mark.parametrize("preset", ["tiny", "hunyuan-13b"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_parameter_counts_are_the_models(preset, options):
    config = dict(get_preset(preset).transformer, **options)
    with torch.device("meta"):
        model = PolyVividTransformer(**config)
    own = set(model.polyvivid_parameter_names())
    groups: dict[str, int] = {}
    for name, param in model.named_parameters():
        if name in own:
            groups[model.parameter_group(name)] = groups.get(model.parameter_group(name), 0) + param.numel()
    counts = parameter_counts(config)
    assert {k: v for k, v in counts.own.items() if v} == groups
    frozen = sum(p.numel() for n, p in model.named_parameters() if n not in own)
    assert counts.base + counts.interaction_copy == frozen
    copy = sum(p.numel() for n, p in model.named_parameters() if n.startswith("interaction.") and n not in own)
    assert counts.interaction_copy == copy


@pytest.mark.parametrize("preset", ["tiny", "hunyuan-13b"])
def test_encoder_counts_are_the_presets(preset):
    from diffusers import AutoencoderKLHunyuanVideo
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, LlamaConfig, LlavaConfig, \
        LlavaForConditionalGeneration

    p = get_preset(preset)
    with torch.device("meta"):
        models = {"vae": AutoencoderKLHunyuanVideo(**p.vae), "clip_text": CLIPTextModel(CLIPTextConfig(**p.clip_text)),
                  "llava": LlavaForConditionalGeneration(LlavaConfig(
                      vision_config=CLIPVisionConfig(**p.llava_vision).to_dict(),
                      text_config=LlamaConfig(**p.llava_text).to_dict(), **p.llava))}
    assert {k: sum(x.numel() for x in m.parameters()) for k, m in models.items()} == ENCODER_PARAMS[preset]


CPU_CONFIG = dict(in_channels=16, out_channels=16, num_attention_heads=4, attention_head_dim=64, num_layers=2,
                  num_single_layers=4, num_refiner_layers=1, mlp_ratio=4.0, text_embed_dim=256,
                  pooled_projection_dim=64, rope_axes_dim=(16, 24, 24), lora_rank=16, lora_alpha=16.0)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_estimate_is_within_a_quarter_of_a_measured_training_step(checkpointing):
    """A real step (forward, backward, AdamW) on CPU at 33x512x256 (4608 video tokens, hidden 256), its peak
    live memory measured (benchmarks/step_memory.py); fp32, one process, nothing reserved."""
    measured = measure(CPU_CONFIG, 33, 512, 256, checkpointing)
    setup = Setup(config=CPU_CONFIG, trainable=("identity_injection", "lora_blocks", "lora_interaction"),
                  data_parallel=1, parallelism="ddp", activation_checkpointing=checkpointing, compute_bytes=4,
                  reserved_gib=0)
    estimated = estimate(setup, measured["video_tokens"], measured["text_tokens"])
    assert measured["video_tokens"] == 4608
    assert estimated.activations > 0.7 * estimated.peak  # the activation model is what is checked
    assert 0.75 <= estimated.peak / measured["peak_bytes"] <= 1.25, (estimated, measured)


def full_size(parallelism="fsdp", height=544, width=960, gpu_memory=80.0, gpus=8, nodes=1, precompute=True):
    manifest = yaml.safe_load((ROOT / "manifests" / "examples" / "training.yaml").read_text())
    manifest["spec"].update(parallelism=parallelism, resources={"nodes": nodes, "gpusPerNode": gpus,
                                                                "gpuMemoryGib": gpu_memory})
    if not precompute:
        del manifest["spec"]["precompute"]
    for stage in manifest["spec"]["stages"]:
        stage["resolution"] = {"height": height, "width": width, "frames": 129}
    return load_resource(manifest, PolyVividTraining).spec


def test_at_the_real_shapes_544p_fits_720p_does_not_and_ddp_is_refused():
    rows = plan(full_size())
    assert [(r.stage, r.resolution) for r in rows] == [("identity", "low"), ("identity", "full"),
                                                       ("interaction", "low"), ("interaction", "full")]
    full = rows[-1]
    assert full.video_tokens == 33 * 34 * 60 and full.fits and 40 < full.per_gpu_gib < 60 and full.encoders_gib == 0
    assert refusal(full_size()) is None
    raw = plan(full_size(precompute=False))[-1]  # reading raw clips, LLaVA, CLIP and the VAE sit on every GPU
    assert 15 < raw.encoders_gib < 17 and raw.per_gpu_gib == pytest.approx(full.per_gpu_gib + raw.encoders_gib, abs=0.02)
    big = plan(full_size(height=720, width=1280))[-1]
    assert big.video_tokens == 118_800 and not big.fits and big.activations_gib > 60  # needs context parallelism
    assert plan(full_size(height=720, width=1280, gpu_memory=141))[-1].fits
    why = refusal(full_size(parallelism="ddp", precompute=False))
    assert why.startswith("stage identity (full 129x544x960) needs an estimated ") and "of 80 GiB" in why
    ddp = plan(full_size(parallelism="ddp", height=720, width=1280))[-1]
    assert ddp.params_gib > 25 and not ddp.fits  # every GPU holds the whole 13B base


def polyvivid(*args):
    return subprocess.run([sys.executable, "-m", "polyvivid.cli", *args], capture_output=True, text=True, timeout=120)


def test_polyvivid_plan_prints_the_table_or_json_and_exits_1_when_a_row_does_not_fit(tmp_path):
    example = str(ROOT / "manifests" / "examples" / "training.yaml")
    table = polyvivid("plan", example)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0] == "fsdp over 32 GPUs, 80 GiB each; GiB per GPU:"
    assert "activations" in table.stdout.splitlines()[1] and len(table.stdout.splitlines()) == 6
    rows = [json.loads(line) for line in polyvivid("plan", example, "--json", "--gpu-memory", "141GiB").stdout.splitlines()]
    assert len(rows) == 4 and all(r["gpu_memory_gib"] == 141 and r["fits"] for r in rows)
    manifest = yaml.safe_load(open(example))
    manifest["spec"]["parallelism"] = "ddp"
    del manifest["spec"]["precompute"]  # (with precompute, DDP at 544p is estimated at 74.4 GiB: it fits)
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(manifest))
    refused = polyvivid("plan", str(tmp_path / "ddp.yaml"), "--json")
    assert refused.returncode == 1 and not all(json.loads(line)["fits"] for line in refused.stdout.splitlines())
    bad = polyvivid("plan", example, "--gpu-memory", "lots")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith("not a memory size: 'lots' (e.g. 80GiB)")


def test_the_operator_refuses_a_training_that_cannot_fit():
    from polyvivid_operator.config import OperatorConfig
    from polyvivid_operator.validation import InvalidSpec, check_training

    check_training(full_size(), OperatorConfig())
    with pytest.raises(InvalidSpec, match=r"^spec.resources.gpuMemoryGib: stage identity \(full 129x544x960\) needs an "
                                          r"estimated \d+\.\d GiB per GPU \(params 25\.48, .* of 80 GiB"):
        check_training(full_size(parallelism="ddp", precompute=False), OperatorConfig())
    with pytest.raises(InvalidSpec, match=r"^spec.contextParallel: contextParallel 16 does not divide the model's 24 "):
        check_training(full_size(nodes=4).model_copy(update={"context_parallel": 16}), OperatorConfig())
    with pytest.raises(InvalidSpec, match=r"\(contextParallel 2 would fit\); see `polyvivid plan`$"):
        check_training(full_size(height=720, width=1280), OperatorConfig())


def test_context_parallel_splits_the_activations_and_the_examples_use_the_degree_that_fits(tmp_path):
    from polyvivid.memory_plan import parallelism_refusal, smallest_context_parallel

    whole = plan(full_size(height=720, width=1280))[-1]
    split = plan(full_size(height=720, width=1280).model_copy(update={"context_parallel": 2}))[-1]
    assert not whole.fits and split.fits and split.context_parallel == 2
    assert split.activations_gib < 0.6 * whole.activations_gib  # half the tokens, plus the all-to-all buffers
    assert split.params_gib == whole.params_gib  # FSDP2 shards over every rank either way
    for name in ("training.yaml", "training-720p.yaml"):  # the full-size examples: the smallest degree that fits
        spec = load_resource(yaml.safe_load((ROOT / "manifests" / "examples" / name).read_text()), PolyVividTraining).spec
        assert spec.context_parallel == smallest_context_parallel(spec), name
        assert all(row.fits for row in plan(spec)) and parallelism_refusal(spec) is None
    assert smallest_context_parallel(full_size(height=720, width=1280)) == 2

    assert parallelism_refusal(full_size().model_copy(update={"context_parallel": 5})) == \
        "spec.contextParallel: contextParallel 5 does not divide the 8 GPUs (nodes x gpusPerNode)"
    assert parallelism_refusal(full_size(nodes=4).model_copy(update={"context_parallel": 16})) == \
        "spec.contextParallel: contextParallel 16 does not divide the model's 24 attention heads"
    assert parallelism_refusal(full_size().model_copy(update={"global_batch_size": 10, "context_parallel": 2})) == \
        "spec.globalBatchSize: 10 is not a multiple of the 4 data-parallel groups (8 GPUs / contextParallel 2)"
    advice = polyvivid("plan", _write(tmp_path, full_size(height=720, width=1280)))
    assert advice.returncode == 1 and advice.stdout.splitlines()[-1] == "does not fit; with contextParallel 2 it would"


def _write(tmp_path, spec) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "polyvivid.io/v1alpha1", "kind": "PolyVividTraining",
                                    "metadata": {"name": "p"}, "spec": spec.model_dump(by_alias=True, exclude_none=True)}))
    return str(path)
