"""Context parallelism (issue 21, item 3): a sample's sequence split over ranks, Ulysses all-to-all in every
attention. Real torchrun process groups (gloo) on CPU: 2 ranks (contextParallel 2) and 4 (2 x 2)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import free_port
from tests.train.conftest import polyvivid, progress, training_manifest, worker_env, write_spec

# One forward and backward of the tiny model, whole and then split over the cp group, for every injection
# strategy. 27 video tokens and 15 text tokens (two of them padding): both need padding to split in two.
ONE_STEP = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist
    from polyvivid.model.presets import get_preset
    from polyvivid.model.rope import interaction_positions
    from polyvivid.model.transformer import PolyVividTransformer
    from polyvivid.train.context_parallel import apply_context_parallel
    from polyvivid.train.parallel import init_distributed

    env = init_distributed(int(sys.argv[1]))
    out = {}
    for injection in ("cross_attention", "token_concat", "adapter", "none"):
        torch.manual_seed(0)
        model = PolyVividTransformer(**{**get_preset("tiny").transformer, "lora_rank": 4, "lora_alpha": 4.0,
                                        "injection": injection})
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # PolyVivid's zero-initialised weights made nonzero: every path carries gradient
            for name, p in model.named_parameters():
                if "lora_B" in name or name.startswith("identity_injection."):
                    p.add_(torch.randn(p.shape, generator=g) * 0.05)
        model.freeze_base()
        text_pos, subject_pos = interaction_positions([5, 4, 4], [(2, 2), (2, 2)])
        cfg = model.config
        inputs = dict(hidden_states=torch.randn(1, 16, 3, 6, 6, generator=g), timestep=torch.tensor([400.0]),
                      encoder_hidden_states=torch.randn(1, len(text_pos), cfg.text_embed_dim, generator=g),
                      encoder_attention_mask=torch.tensor([[1] * (len(text_pos) - 2) + [0, 0]]),
                      pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g),
                      guidance=torch.tensor([3000.0]), subject_latents=torch.randn(1, 2, 16, 4, 4, generator=g),
                      text_positions=text_pos[None], subject_positions=subject_pos[None])
        target = torch.randn(1, 16, 3, 6, 6, generator=g)

        def step():
            model.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(model(**inputs).sample, target)
            loss.backward()
            return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

        whole_loss, whole = step()
        apply_context_parallel(model, env.cp_group)
        split_loss, split = step()
        for grad in split.values():  # each rank holds N times its share (see context_parallel.py): the mean
            dist.all_reduce(grad, group=env.cp_group)
            grad /= env.context_parallel
        out[injection] = {"losses": [whole_loss, split_loss], "params": len(whole), "same_names": set(split) == set(whole),
                          "worst": max((split[n] - g).abs().max().item() for n, g in whole.items()),
                          "scale": max(g.abs().max().item() for g in whole.values())}
    json.dump(out, open(f"{sys.argv[2]}/rank{env.rank}.json", "w"))
    dist.destroy_process_group()
""")


@pytest.mark.parametrize("ranks", [2, 4])
def test_ulysses_attention_gives_the_whole_sequence_loss_and_gradients(ranks, tmp_path):
    (tmp_path / "step.py").write_text(ONE_STEP)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
                             "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                             str(tmp_path / "step.py"), "2", str(tmp_path)],
                            capture_output=True, text=True, env=worker_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in range(ranks):  # with 4 ranks, two cp groups of 2
        for injection, r in json.loads((tmp_path / f"rank{rank}.json").read_text()).items():
            assert r["same_names"] and r["params"] > 0, injection
            assert abs(r["losses"][0] - r["losses"][1]) < 1e-5, (injection, r)
            # within 1e-4, and within a thousandth of the largest gradient (which is not zero)
            assert r["scale"] > 1e-5 and r["worst"] < min(1e-4, 1e-3 * r["scale"]), (injection, r)


def test_training_with_context_parallel_trains_as_one_process(synth_dataset, tmp_path):
    runs = {"1": (1, 1), "cp2": (2, 2), "dp2xcp2": (4, 2)}
    losses, weights = {}, {}
    for name, (nproc, cp) in runs.items():
        output = tmp_path / name
        spec = write_spec(tmp_path / f"{name}.yaml", training_manifest(
            synth_dataset, str(output), steps=(1, 1), low_res=0, parallelism="fsdp", contextParallel=cp,
            globalBatchSize=2))
        result = polyvivid("train", str(spec), "--local", "--nproc", str(nproc), timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        state = progress(str(output))
        assert state["status"] == "succeeded"
        losses[name] = [row[1] for row in state["history"]]
        weights[name] = load_file(output / "final" / "polyvivid_weights.safetensors")
    for name in ("cp2", "dp2xcp2"):
        assert np.allclose(losses[name], losses["1"], atol=1e-4, rtol=0), losses
        for key, tensor in weights["1"].items():  # the same updates: the same gradients
            assert torch.allclose(weights[name][key], tensor, atol=1e-4, rtol=0), (name, key)
    assert any(not torch.equal(t, 0 * t) for t in weights["1"].values())


def test_context_parallel_must_divide_the_heads_and_the_ranks(synth_dataset, tmp_path):
    manifest = training_manifest(synth_dataset, str(tmp_path / "out"), contextParallel=3, globalBatchSize=1)
    heads = polyvivid("train", str(write_spec(tmp_path / "heads.yaml", manifest)), "--local", "--nproc", "3")
    assert heads.returncode == 2 and "contextParallel 3 does not divide the model's 2 attention heads" in heads.stderr
    manifest["spec"]["contextParallel"] = 2
    ranks = polyvivid("train", str(write_spec(tmp_path / "ranks.yaml", manifest)), "--local", "--nproc", "3")
    assert ranks.returncode == 2 and "contextParallel 2 does not divide the world size 3" in ranks.stderr
    assert "Traceback" not in heads.stderr + ranks.stderr
