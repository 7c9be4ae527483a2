"""How subject tokens reach the video stream: the injection strategies (paper 4.3 and Table 2).

`INJECTION_STRATEGIES` (at the end) is the registry, name -> strategy class; the names are listed
torch-free in options.INJECTION_STRATEGIES for the API and CLI (a test ties the two). A new strategy is
one class here: a module built once per double-stream block and run before it, and what of the block
it adapts with PolyVivid's LoRA.

Attention-inherited identity injection (paper 4.3):
In every double-stream block, before the block's own MM-attention, the video tokens attend to the
identity-enhanced subject tokens: queries come from the block's video Q projection, keys and values
from the block's video K/V projections (the weights are inherited, i.e. the very same modules,
adapted with LoRA). The result goes through an FFN and a zero-initialised FC and is added to the
video stream, so a fresh module leaves the base model's output unchanged.

`AdapterInjection` is the IP-Adapter-style ablation: inherited Q, but new K/V projections trained
from scratch, no FFN; the same zero-initialised output FC.
"""

from __future__ import annotations

from typing import ClassVar

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


# The double blocks' video Q/K/V projections (a regex within a block, as peft fullmatches names).
VIDEO_QKV = r"attn\.(to_q|to_k|to_v)"


class InjectionStrategy(nn.Module):
    """A strategy's contract with PolyVividTransformer, read from the class (the registry's values).

    Subclasses that inject through a module set `per_block = True` and implement `build` and `forward`.
    """

    per_block: ClassVar[bool] = False  # one module per double-stream block, run before the block
    lora_targets: ClassVar[str | None] = None  # the double blocks' modules PolyVivid's LoRA adapts
    appends_subject_tokens: ClassVar[bool] = False  # subject tokens join the video sequence

    @classmethod
    def build(cls, block: nn.Module, config) -> "InjectionStrategy":
        """The module for one double-stream `block` of a transformer with `config`."""
        raise NotImplementedError(f"{cls.__name__} has no per-block module")

    def reset_parameters(self) -> None:
        pass


class _SubjectInjection(InjectionStrategy):
    """What both module strategies share: pre-norms, inherited (LoRA'd) video Q, the zero-initialised FC.

    Subclasses say where keys and values come from (`keys_values`) and what follows the attention
    (`transform`).
    """

    per_block = True

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

    lora_targets = VIDEO_QKV

    def __init__(self, dim: int, ffn_mult: float = 1.0):
        super().__init__(dim)
        self.ff = FeedForward(dim, mult=ffn_mult, activation_fn="gelu-approximate")
        self.reset_parameters()

    @classmethod
    def build(cls, block, config):
        return cls(config.num_attention_heads * config.attention_head_dim, config.injection_ffn_mult)

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

    @classmethod
    def build(cls, block, config):
        return cls(config.num_attention_heads * config.attention_head_dim)

    def keys_values(self, subjects, attn):
        return self.to_k(subjects), self.to_v(subjects), None


class TokenConcat(InjectionStrategy):
    """HunyuanCustom / OmniControl: the subject tokens are appended to the video tokens, each subject at
    frame -(k+1) on the video's (y, x) grid, and the blocks' LoRA'd video Q/K/V attend over both."""

    lora_targets = VIDEO_QKV
    appends_subject_tokens = True


class NoInjection(InjectionStrategy):
    """The subjects reach the video only through the identity-enhanced text."""


INJECTION_STRATEGIES: dict[str, type[InjectionStrategy]] = {
    "cross_attention": IdentityInjection,
    "adapter": AdapterInjection,
    "token_concat": TokenConcat,
    "none": NoInjection,
}
