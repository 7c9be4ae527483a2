"""The `train_build` benchmark's worker: builds the training transformer as one rank does and prints that
rank's peak host RSS and the bf16 bytes of the parameters it holds (one JSON line per rank).

  python -m benchmarks.build_memory write DIR --preset hunyuan-13b --layers 4,4   # a random bf16 base
  torchrun --nproc-per-node 2 -m benchmarks.build_memory build DIR --mode streamed  # per rank, FSDP2
  python -m benchmarks.build_memory build DIR --mode whole_fp32                       # the old way

Modes: `streamed` is `train.trainer.build_transformer` (meta device, bf16 frozen, FSDP2 on meta, each
rank reads its rows); `whole_fp32` is what every rank did before it: the whole model in fp32 on the
host (then sharded), so its per-rank figure is for the share it would hold at --world ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
from pathlib import Path

import torch

SHARD_BYTES = 1 << 30


def write_base(directory: Path, preset: str, layers: tuple[int, int]) -> int:
    """A random HunyuanVideo transformer in bf16, diffusers layout (files of about 1 GiB and an index),
    written a file at a time; returns its parameter count."""
    from diffusers import HunyuanVideoTransformer3DModel
    from safetensors.torch import save_file

    from polyvivid.model.presets import get_preset

    keys = set(HunyuanVideoTransformer3DModel._get_init_keys(HunyuanVideoTransformer3DModel))
    config = {k: v for k, v in get_preset(preset).transformer.items() if k in keys}
    config.update(num_layers=layers[0], num_single_layers=layers[1])
    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModel(**config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_config(directory)
    groups, current, size = [], {}, 0
    for name, param in model.named_parameters():
        if current and size + param.numel() * 2 > SHARD_BYTES:
            groups.append(current)
            current, size = {}, 0
        current[name] = param.shape
        size += param.numel() * 2
    groups.append(current)
    weight_map = {}
    generator = torch.Generator().manual_seed(0)
    for i, group in enumerate(groups):
        file = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({name: (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
                   for name, shape in group.items()}, directory / file)
        weight_map.update({name: file for name in group})
    (directory / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    return sum(p.numel() for p in model.parameters())


def build(base: Path, mode: str, world: int) -> dict:
    from torch.distributed.tensor import DTensor

    from polyvivid.api import PolyVividTraining, load_resource
    from polyvivid.model.transformer import PolyVividTransformer
    from polyvivid.train.parallel import init_distributed
    from polyvivid.train.trainer import build_transformer

    env = init_distributed()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.manual_seed(0)
    if mode == "streamed":
        spec = load_resource({"apiVersion": "polyvivid.io/v1alpha1", "kind": "PolyVividTraining", "metadata": {"name": "b"},
                              "spec": {"model": {"hunyuanvideo": str(base.parent), "llava": str(base.parent)},
                                       "dataset": {"uri": "unused"}, "output": "unused", "lora": {"rank": 64, "alpha": 64},
                                       "parallelism": "fsdp", "activationCheckpointing": False}}, PolyVividTraining).spec
        transformer, _ = build_transformer(spec, env, torch.bfloat16)
        held = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in transformer.parameters())
    else:
        transformer = PolyVividTransformer.from_hunyuanvideo(base, torch.float32, lora_rank=64, lora_alpha=64.0)
        held = sum(p.numel() for p in transformer.parameters()) // world  # the share FSDP would leave it
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if env.distributed:
        torch.distributed.destroy_process_group()
    return {"mode": mode, "rank": env.rank, "world": world if mode != "streamed" else env.world_size,
            "peak_rss_bytes": peak, "rss_before_build_bytes": before, "held_params": held,
            "held_bf16_bytes": held * 2}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.build_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("write", "build"))
    parser.add_argument("directory", type=Path, help="the base's transformer/ directory")
    parser.add_argument("--preset", default="hunyuan-13b", help="the widths (write)")
    parser.add_argument("--layers", default="4,4", help="double,single blocks (write)")
    parser.add_argument("--mode", choices=("streamed", "whole_fp32"), default="streamed")
    parser.add_argument("--world", type=int, default=2, help="ranks the whole_fp32 figure is for")
    args = parser.parse_args(argv)
    if args.action == "write":
        double, single = (int(x) for x in args.layers.split(","))
        print(json.dumps({"params": write_base(args.directory, args.preset, (double, single))}))
    else:
        # one write(2) of a line under PIPE_BUF: the ranks share stdout, and print() may split a line in two
        # writes, which interleaved once (two JSON objects on one line)
        os.write(1, (json.dumps(build(args.directory, args.mode, args.world)) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
