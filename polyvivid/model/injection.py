"""Attention-inherited identity injection (paper 4.3) and the adapter ablation (Table 2).

In every double-stream block, before the block's own MM-attention, the video tokens attend to the
identity-enhanced subject tokens: queries come from the block's video Q projection, keys and values
from the block's video K/V projections (the weights are inherited, i.e. the very same modules,
adapted with LoRA). The result goes through an FFN and a zero-initialised FC and is added to the
video stream, so a fresh module leaves the base model's output unchanged.

`AdapterInjection` is the IP-Adapter-style ablation: inherited Q, but new K/V projections trained
from scratch, no FFN; the same zero-initialised output FC.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from diffusers.models.attention import FeedForward


def subject_cross_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int,
                            norm_q: nn.Module | None, norm_k: nn.Module | None,
                            subject_mask: torch.Tensor | None) -> torch.Tensor:
    """Multi-head attention of video queries [B, Nv, D] over subject tokens [B, Ns, D] -> [B, Nv, D].

    No RoPE: video and subject tokens live in different position systems.
    """
    q, k, v = (t.unflatten(2, (heads, -1)) for t in (query, key, value))
    if norm_q is not None:
        q = norm_q(q)
    if norm_k is not None:
        k = norm_k(k)
    mask = None if subject_mask is None else subject_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2).flatten(2, 3)


class _SubjectInjection(nn.Module):
    """What both strategies share: pre-norms, inherited (LoRA'd) video Q, the zero-initialised FC.

    Subclasses say where keys and values come from (`keys_values`) and what follows the attention
    (`transform`).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm_video = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm_subject = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(dim, dim)

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def keys_values(self, subjects: torch.Tensor, attn: nn.Module):
        raise NotImplementedError

    def transform(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def forward(self, video: torch.Tensor, subjects: torch.Tensor, subject_mask: torch.Tensor | None,
                attn: nn.Module) -> torch.Tensor:
        """`attn` is the block's own Attention: its to_q (with its LoRA) is the inherited query projection."""
        key, value, norm_k = self.keys_values(self.norm_subject(subjects), attn)
        out = subject_cross_attention(attn.to_q(self.norm_video(video)), key, value, attn.heads, attn.norm_q,
                                      norm_k, subject_mask)
        return video + self.proj_out(self.transform(out))


class IdentityInjection(_SubjectInjection):
    """Cross-attention (inherited, LoRA'd video Q/K/V) -> FFN -> zero-initialised FC, added to video."""

    def __init__(self, dim: int, ffn_mult: float = 1.0):
        super().__init__(dim)
        self.ff = FeedForward(dim, mult=ffn_mult, activation_fn="gelu-approximate")
        self.reset_parameters()

    def keys_values(self, subjects, attn):
        return attn.to_k(subjects), attn.to_v(subjects), attn.norm_k

    def transform(self, out):
        return self.ff(out)


class AdapterInjection(_SubjectInjection):
    """IP-Adapter style: inherited video Q, new K/V for the subject tokens, no FFN."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.reset_parameters()

    def keys_values(self, subjects, attn):
        return self.to_k(subjects), self.to_v(subjects), None
