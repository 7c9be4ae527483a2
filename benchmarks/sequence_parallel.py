"""A serving request whole and split over 2 ranks (sequence parallelism), under torchrun with gloo on CPU:
the `serve` benchmark's correctness figure and tests/serve/test_sequence_parallel.py's check.

Every rank loads the tiny preset, runs the request whole (serve/sequence_parallel.run_request), then with
its transformer split over the group (the Ulysses attention of context-parallel training), at each step
cache threshold given. Rank 0 prints one JSON line: per threshold and rank, the largest latent difference
and the latents' scale, the steps each run skipped, the frames' mean absolute difference (0-255) and the
share of pixels that changed, and seconds per request both ways.

  torchrun --nproc-per-node 2 -m benchmarks.sequence_parallel REQUEST_JSON THRESHOLD[,THRESHOLD...]

REQUEST_JSON: run_request's inputs, each subject as [word, PNG bytes as hex].
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.distributed as dist


def measure(inputs: dict, thresholds: tuple[float, ...], env: dict | None = None) -> list[dict]:
    """Each rank's figures (main's JSON) for `inputs` (subjects as (word, PNG bytes)), from a torchrun of 2."""
    from tests.conftest import free_port

    request = dict(inputs, subjects=[(word, data.hex()) for word, data in inputs["subjects"]])
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                          "127.0.0.1", "--master-port", str(free_port()), "-m", "benchmarks.sequence_parallel",
                          json.dumps(request), ",".join(map(str, thresholds))],
                         capture_output=True, text=True, timeout=900,
                         env={**(env or os.environ), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    if run.returncode:
        raise RuntimeError(f"benchmarks.sequence_parallel failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

    from polyvivid.model.pipeline import load_pipeline
    from polyvivid.serve.sequence_parallel import run_request
    from polyvivid.train.context_parallel import apply_context_parallel

    dist.init_process_group("gloo")
    inputs = json.loads(sys.argv[1])
    inputs["subjects"] = [(word, bytes.fromhex(data)) for word, data in inputs["subjects"]]
    thresholds = [float(t) for t in sys.argv[2].split(",")]
    pipe = load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    transformer = pipe.transformer

    def timed(request: dict):
        dist.barrier()
        start = time.perf_counter()
        latents = run_request(pipe, request, output_type="latent")
        seconds = time.perf_counter() - start
        skipped = pipe.last_step_cache.skipped if request["step_cache_threshold"] else 0
        with torch.no_grad():
            frames = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample[0]
        return latents, ((frames.clamp(-1, 1) + 1) * 127.5).round().byte().numpy(), skipped, seconds

    out = {}
    for threshold in thresholds:
        request = dict(inputs, step_cache_threshold=threshold)
        whole, whole_frames, whole_skipped, whole_s = timed(request)
        apply_context_parallel(transformer, dist.group.WORLD)
        split, split_frames, split_skipped, split_s = timed(request)
        transformer.sequence_sharding = None  # whole again for the next threshold
        for block in (*transformer.transformer_blocks, *transformer.single_transformer_blocks):
            block.attn.set_processor(HunyuanVideoAttnProcessor2_0())
        changed = whole_frames != split_frames
        out[str(threshold)] = {
            "max_latent_diff": (split - whole).abs().max().item(), "latent_scale": whole.abs().max().item(),
            "skipped": [whole_skipped, split_skipped],
            "mean_abs_pixel_diff": float(np.abs(whole_frames.astype(np.float32) - split_frames).mean()),
            "pixels_changed": float(changed.mean()), "seconds": {"whole": whole_s, "split_2": split_s}}
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, out)
    if dist.get_rank() == 0:
        print(json.dumps(ranks))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
