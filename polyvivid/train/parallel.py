"""Parallelism, applied to an unmodified model (torchtitan style): DDP, or FSDP2 per block, and context
parallelism (context_parallel.py) on a (dp, cp) DeviceMesh.

FSDP2 units: every double-stream block together with its identity-injection module (the injection
calls the block's own Q/K/V projections, so their parameters must be gathered together), every
single-stream block, the interaction module, then the root for what is left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    context_parallel: int = 1  # ranks that share one sample (its sequence split between them)
    cp_group: object = None  # their process group (the mesh's "cp" dimension), when context_parallel > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_rank(self) -> int:
        """Which data-parallel replica this rank is: the ranks of one cp group read the same samples."""
        return self.rank // self.context_parallel

    @property
    def dp_size(self) -> int:
        return self.world_size // self.context_parallel

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(context_parallel: int = 1) -> DistEnv:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...); gloo on CPU, nccl on GPU.
    With context_parallel N > 1 the ranks form a (world / N, N) DeviceMesh named ("dp", "cp"): consecutive
    ranks (one node's GPUs, on NVLink) share a sample."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if world % context_parallel:
        raise ValueError(f"contextParallel {context_parallel} does not divide the world size {world}")
    cp_group = None
    if context_parallel > 1:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, (world // context_parallel, context_parallel), mesh_dim_names=("dp", "cp"))
        cp_group = mesh.get_group("cp")
    return DistEnv(rank, world, local_rank, device, context_parallel, cp_group)


def parallelize(transformer: nn.Module, mode: str, env: DistEnv, param_dtype: torch.dtype) -> nn.Module:
    """Returns the module to call in the training step (the transformer itself under FSDP2). Context
    parallelism first (it changes no parameter); then FSDP2 shards over every rank, data-parallel and
    context-parallel alike (torchtitan's dp_shard_cp), or DDP replicates on every rank."""
    if env.context_parallel > 1:
        from .context_parallel import apply_context_parallel

        apply_context_parallel(transformer, env.cp_group)
    if not env.distributed:
        return transformer
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(transformer, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
    if mode != "fsdp":
        raise ValueError(f"parallelism must be fsdp or ddp, got {mode!r}")
    import warnings

    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # diffusers' blocks return slices of a concatenation (views); nothing applies in-place ops to them.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    injection = transformer.identity_injection
    for i, block in enumerate(transformer.transformer_blocks):
        fully_shard([block, injection[i]] if injection is not None else block, mp_policy=policy)
    for block in transformer.single_transformer_blocks:
        fully_shard(block, mp_policy=policy)
    if transformer.interaction is not None and transformer.interaction.block is not None:
        fully_shard(transformer.interaction, mp_policy=policy)
    fully_shard(transformer, mp_policy=policy)
    return transformer


def set_gradient_sync(model: nn.Module, enabled: bool):
    """A context for one micro-step: skip the gradient all-reduce on all but the last one."""
    import contextlib

    if hasattr(model, "no_sync") and not enabled:  # DDP
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def all_reduce_mean(value: float, env: DistEnv) -> float:
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return float(t) / env.world_size


def any_rank(flag: bool, env: DistEnv) -> bool:
    if not env.distributed:
        return flag
    t = torch.tensor([int(flag)], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t)
