"""Context parallelism (DeepSpeed-Ulysses) for PolyVividTransformer: one sample's sequence split over the N
ranks of a DeviceMesh's `cp` dimension (spec.contextParallel), applied to an unmodified model
(apply_context_parallel sets its `sequence_sharding` and swaps its blocks' attention processors).

A sample's way through, with N ranks in a cp group (they all read the same sample):
- Everything before the blocks runs whole on every rank: the embedders, the text refiner, the subjects'
  tokens and the interaction module. Its sequence holds no video token (z_T and the subjects', a few
  thousand tokens against 67,000-119,000), so computing it N times costs less than exchanging it.
- SequenceSharding.shard pads the video tokens (with token_concat, the subjects appended) and the text
  tokens each to a multiple of N and keeps chunk r of both, and of the video RoPE, on rank r.
- Per-token layers (norms, modulation, FFNs, projections) run on the chunks.
- Attention in every double-stream block (joint video + text) and single-stream block runs in
  UlyssesAttnProcessor: Q, K and V of the local tokens (RoPE applied locally) go through one
  all-to-all that trades the sequence split for a head split, so each rank attends exactly over the
  whole sequence with H/N heads; a second all-to-all trades back. The tokens arrive rank-major
  ([video_0, text_0, video_1, text_1, ...]); attention does not mind the order once the padding mask
  follows it (shard builds it so).
- The identity injection's cross-attention needs no exchange: the local video queries attend to the
  whole subject sequence, which every rank holds.
- SequenceSharding.gather all-gathers the output after the final projection (64 numbers a token) and
  drops the padding: every rank computes the single-process loss.

Gradients: the all-gather's backward sums over the group, so a rank's gradients are N times its share,
and the data-parallel gradient average over all world ranks (FSDP2 shards over every rank, like
torchtitan's dp_shard_cp; or DDP) gives exactly the single-process gradient of the mean loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.distributed import ProcessGroup


def _collectives():
    import torch.distributed._functional_collectives as fc  # autograd-aware all-to-all and all-gather

    return fc


def _pad_to(tokens: torch.Tensor, mask: torch.Tensor, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, S, D] tokens and their [B, S] mask, padded at the end to a multiple of `multiple` (masked out)."""
    pad = -tokens.shape[1] % multiple
    return F.pad(tokens, (0, 0, 0, pad)), F.pad(mask, (0, pad), value=False)


@dataclass
class SequenceSharding:
    """This rank's place in its cp group, and the cuts and exchanges that place implies."""
    group: ProcessGroup
    rank: int  # within the group
    size: int

    def shard(self, video: torch.Tensor, video_rope: tuple[torch.Tensor, torch.Tensor], text: torch.Tensor,
              video_mask: torch.Tensor, text_mask: torch.Tensor):
        """(video chunk, its RoPE (cos, sin), text chunk, the [B, 1, 1, S] attention mask in exchange order)."""
        n, r = self.size, self.rank
        video, video_mask = _pad_to(video, video_mask, n)
        text, text_mask = _pad_to(text, text_mask, n)
        v, t = video.shape[1] // n, text.shape[1] // n
        cos, sin = video_rope
        pad = video.shape[1] - cos.shape[0]  # padding tokens rotate by nothing
        cos, sin = F.pad(cos, (0, 0, 0, pad), value=1.0), F.pad(sin, (0, 0, 0, pad))
        mask = torch.cat([torch.cat([video_mask[:, k * v:(k + 1) * v], text_mask[:, k * t:(k + 1) * t]], 1)
                          for k in range(n)], 1)
        return (video[:, r * v:(r + 1) * v], (cos[r * v:(r + 1) * v], sin[r * v:(r + 1) * v]),
                text[:, r * t:(r + 1) * t], mask[:, None, None, :])

    def gather(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every rank's chunk of [B, S/N, C] tokens, in order: [B, S, C] (padding included)."""
        return _collectives().all_gather_single_autograd(tokens.contiguous(), 1, self.group)

    def sequence_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S/N, H, D] (this rank's tokens, every head) -> [B, S, H/N, D] (every token, this rank's heads)."""
        n = self.size
        b, s, h, d = x.shape
        x = x.reshape(b, s, n, h // n, d).permute(2, 0, 1, 3, 4).contiguous()  # chunk k goes to rank k
        x = _collectives().all_to_all_single_autograd(x, None, None, self.group)
        return x.permute(1, 0, 2, 3, 4).reshape(b, n * s, h // n, d)  # rank k's tokens k-th

    def heads_to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """sequence_to_heads' inverse: [B, S, H/N, D] -> [B, S/N, H, D]."""
        n = self.size
        b, s, hn, d = x.shape
        x = x.reshape(b, n, s // n, hn, d).permute(1, 0, 2, 3, 4).contiguous()  # rank k's tokens back to it
        x = _collectives().all_to_all_single_autograd(x, None, None, self.group)
        return x.permute(1, 2, 0, 3, 4).reshape(b, s // n, n * hn, d)  # heads in their order


class UlyssesAttnProcessor:
    """diffusers' HunyuanVideoAttnProcessor2_0 on sequence chunks, with the two all-to-alls around the
    attention itself. Double-stream blocks project text with their add_*_proj, single-stream blocks with
    the same projections as video; RoPE is on the video tokens only (both as the original)."""

    def __init__(self, sharding: SequenceSharding):
        self.sharding = sharding

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None):
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb

        def project(x, projections, norms):
            q, k, v = (proj(x).unflatten(2, (attn.heads, -1)) for proj in projections)
            norm_q, norm_k = norms
            return (norm_q(q) if norm_q is not None else q), (norm_k(k) if norm_k is not None else k), v

        q, k, v = project(hidden_states, (attn.to_q, attn.to_k, attn.to_v), (attn.norm_q, attn.norm_k))
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        double = attn.add_q_proj is not None
        tq, tk, tv = project(encoder_hidden_states,
                             (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj) if double else (attn.to_q, attn.to_k, attn.to_v),
                             (attn.norm_added_q, attn.norm_added_k) if double else (attn.norm_q, attn.norm_k))
        exchange = self.sharding.sequence_to_heads
        q, k, v = (exchange(torch.cat(pair, 1)) for pair in ((q, tq), (k, tk), (v, tv)))
        out = dispatch_attention_fn(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        out = self.sharding.heads_to_sequence(out).flatten(2, 3).to(q.dtype)
        n_video = hidden_states.shape[1]
        video, text = out[:, :n_video], out[:, n_video:]
        if getattr(attn, "to_out", None) is not None:
            video = attn.to_out[1](attn.to_out[0](video))
        if getattr(attn, "to_add_out", None) is not None:
            text = attn.to_add_out(text)
        return video, text


def apply_context_parallel(transformer, group: ProcessGroup) -> None:
    """Split every sample's sequence over `group`'s ranks (see the module's docstring)."""
    import torch.distributed as dist

    n, heads = group.size(), transformer.config.num_attention_heads
    if heads % n:
        raise ValueError(f"contextParallel {n} does not divide the model's {heads} attention heads")
    if transformer.config.interaction_weights != "copy":
        raise ValueError("context parallelism needs interaction_weights='copy' (the shared block's processor "
                         "serves the interaction module too)")
    sharding = SequenceSharding(group, dist.get_rank(group), n)
    for block in (*transformer.transformer_blocks, *transformer.single_transformer_blocks):
        block.attn.set_processor(UlyssesAttnProcessor(sharding))
    transformer.sequence_sharding = sharding
