"""The `context_parallel` benchmark's worker, under torchrun with 2 ranks (gloo, CPU, one thread each):
one training step (forward, backward) of PolyVividTransformer at the CPU bench shape, first whole on every
rank (each rank alone: the 1-rank baseline), then split over the 2 ranks (contextParallel 2). Prints, from
rank 0, one JSON line: seconds per step both ways, the seconds inside the forward's all-to-alls and the
output all-gather, and the largest gradient difference (split, averaged over the ranks, vs whole).

  torchrun --nproc-per-node 2 -m benchmarks.context_parallel
"""

from __future__ import annotations

import json
import statistics
import time

import torch
import torch.distributed as dist

from polyvivid.model.rope import interaction_positions
from polyvivid.model.transformer import PolyVividTransformer
from polyvivid.train.context_parallel import apply_context_parallel
from polyvivid.train.parallel import init_distributed

REPEATS = 3


def main() -> None:
    from benchmarks.run import CPU_SHAPE

    torch.set_num_threads(1)
    env = init_distributed(2)
    torch.manual_seed(0)
    model = PolyVividTransformer(**CPU_SHAPE, lora_rank=16, lora_alpha=16.0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # PolyVivid's zero-initialised weights made nonzero, so every path has gradient
        for name, p in model.named_parameters():
            if "lora_B" in name or name.startswith("identity_injection."):
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    model.freeze_base()
    text_pos, subject_pos = interaction_positions([13, 13, 14], [(8, 8), (8, 8)])
    inputs = dict(hidden_states=torch.randn(1, 16, 3, 32, 32, generator=g), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, len(text_pos), 256, generator=g),
                  encoder_attention_mask=torch.ones(1, len(text_pos), dtype=torch.long),
                  pooled_projections=torch.randn(1, 64, generator=g), guidance=torch.tensor([1000.0]),
                  subject_latents=torch.randn(1, 2, 16, 16, 16, generator=g), text_positions=text_pos[None],
                  subject_positions=subject_pos[None])
    target = torch.randn_like(inputs["hidden_states"])

    def step() -> tuple[float, dict]:
        model.zero_grad(set_to_none=True)
        dist.barrier()
        start = time.perf_counter()
        torch.nn.functional.mse_loss(model(**inputs).sample, target).backward()
        seconds = time.perf_counter() - start
        return seconds, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    whole = [step() for _ in range(REPEATS + 1)]
    apply_context_parallel(model, env.cp_group)
    sharding, exchange = model.sequence_sharding, {"seconds": 0.0}
    for name in ("sequence_to_heads", "heads_to_sequence", "gather"):  # timed where they are called
        original = getattr(sharding, name)

        def timed(x, _original=original):
            start = time.perf_counter()
            out = _original(x)
            out = out.clone()  # functional collectives return lazily: a use waits (clone keeps the autograd graph)
            exchange["seconds"] += time.perf_counter() - start
            return out

        setattr(sharding, name, timed)
    split = [step() for _ in range(REPEATS + 1)]
    exchanged = exchange["seconds"] / (REPEATS + 1)
    grads = split[-1][1]
    for grad in grads.values():
        dist.all_reduce(grad, group=env.cp_group)
        grad /= env.context_parallel
    worst = max((grads[n] - g).abs().max().item() for n, g in whole[-1][1].items())
    whole_s = statistics.median(s for s, _ in whole[1:])
    split_s = statistics.median(s for s, _ in split[1:])
    if env.is_main:
        video_tokens = 3 * 16 * 16
        print(json.dumps({"whole_s": whole_s, "split_s": split_s, "exchange_s": exchanged, "max_grad_diff": worst,
                          "video_tokens": video_tokens, "text_tokens": len(text_pos)}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
