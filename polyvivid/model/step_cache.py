"""First-block step caching for PolyVividTransformer's sampling (the idea of ParaAttention's and diffusers'
FirstBlockCache, written into our forward because PolyVivid runs its own blocks and injection modules).

At each denoising step the first double-stream block runs (with its identity injection, on the subject-
conditioned video tokens). If its residual (what it and the injection added to the video tokens) changed
by less than `threshold`, relatively (mean absolute difference over mean absolute value), since the last
step that ran every block, the rest of the blocks are skipped and the video tokens get the residual the
rest added at that step. The decision is made on the conditioned stream: the first block has seen this
step's subject tokens through the injection, and the cached residual holds every later injection's work.

One StepCache serves one generation (the pipeline makes a fresh one per call). With true CFG the
conditioned and unconditional rows run in one batch, so they skip together, decided on both rows.
Inference only: a forward that builds a graph for gradients never reads or writes the cache.
"""

from __future__ import annotations

import torch


class StepCache:
    def __init__(self, threshold: float):
        if threshold <= 0:
            raise ValueError(f"a step cache needs a threshold > 0, got {threshold}")
        self.threshold = threshold
        self.first_residual: torch.Tensor | None = None  # the first block's, at the last full step
        self.rest_residual: torch.Tensor | None = None  # what every later block added then
        self.steps = self.skipped = 0

    def can_skip(self, first_residual: torch.Tensor, group=None) -> bool:
        """Whether this step may reuse the cached residual (and count it). With the sequence split over a
        process group, the change is summed over every rank's tokens, so that all of them decide alike."""
        self.steps += 1
        previous = self.first_residual
        if previous is None or previous.shape != first_residual.shape:
            return False
        sums = torch.stack([(first_residual - previous).abs().sum(), previous.abs().sum()]).float()
        if group is not None:
            import torch.distributed as dist

            dist.all_reduce(sums, group=group)
        change = sums[0] / sums[1].clamp_min(1e-12)
        skip = bool(change < self.threshold)
        self.skipped += skip
        return skip

    def store(self, first_residual: torch.Tensor, rest_residual: torch.Tensor) -> None:
        self.first_residual, self.rest_residual = first_residual, rest_residual
