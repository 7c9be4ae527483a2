"""How subject tokens reach the video stream: the injection strategies (paper 4.3 and Table 2).

`INJECTION_STRATEGIES` (at the end) is the registry, name -> strategy class; the names are listed
torch-free in options.INJECTION_STRATEGIES for the API and CLI (a test ties the two). A new strategy is
one class here: a module built once per double-stream block and run before it, and what of the block
it adapts with PolyVivid's LoRA.

Attention-inherited identity injection (paper 4.3, Eq. 7-8):
In every double-stream block, before the block's own MM-attention, the video tokens attend to the
identity-enhanced subject tokens: queries come from the block's video Q projection, keys and values
from the block's video K/V projections (Eq. 7: the pretrained weights, reparameterised with LoRA).
The result goes through the block's own pretrained FFN with LoRA (Eq. 8's FFN^) and a
zero-initialised FC, and is added to the video stream, so a fresh module leaves the base model's
output unchanged.

The LoRA is the injection's own (`InheritedLoRA`: the low-rank update lives in the injection module,
the pretrained weight is borrowed from the block at call time). So it acts only inside the injection:
the block's MM-attention and FFN keep running on the pretrained weights, for requests without subjects
and for the unconditional branch too.

`AdapterInjection` is the IP-Adapter-style ablation: the pretrained Q, but new K/V projections trained
from scratch, no FFN; the same zero-initialised output FC.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


def pretrained(linear: nn.Module) -> nn.Module:
    """The pretrained Linear under a peft LoRA wrapper, if any (the interaction's LoRA in
    interaction_weights="shared" mode must not leak into the injection either)."""
    return getattr(linear, "base_layer", linear)


class InheritedLoRA(nn.Module):
    """W x + (alpha / r) B A x, where W is a block's pretrained Linear passed in at call time (never
    stored here: it stays the block's parameter, loaded, sharded and frozen with the block)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__()
        self.lora_A = nn.Linear(in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, out_features, bias=False)
        self.scaling = alpha / rank
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as peft: A random, B zero
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        return pretrained(base)(x) + self.lora_B(self.lora_A(x)) * self.scaling


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


class _SubjectInjection(InjectionStrategy):
    """What both module strategies share: pre-norms, the block's video Q, the zero-initialised FC.

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
        for module in self.children():  # a LoRA resets its own factors (B = 0)
            if isinstance(module, (nn.Linear, InheritedLoRA)):
                module.reset_parameters()
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def keys_values(self, subjects: torch.Tensor, attn: nn.Module):
        raise NotImplementedError

    def transform(self, out: torch.Tensor, block: nn.Module) -> torch.Tensor:
        return out

    def query(self, video: torch.Tensor, attn: nn.Module) -> torch.Tensor:
        return pretrained(attn.to_q)(video)

    def forward(self, video: torch.Tensor, subjects: torch.Tensor, subject_mask: torch.Tensor | None,
                block: nn.Module) -> torch.Tensor:
        """`block` is the double-stream block this module runs before: its pretrained weights are inherited."""
        attn = block.attn
        key, value, norm_k = self.keys_values(self.norm_subject(subjects), attn)
        out = subject_cross_attention(self.query(self.norm_video(video), attn), key, value, attn.heads, attn.norm_q,
                                      norm_k, subject_mask)
        return video + self.proj_out(self.transform(out, block))


class IdentityInjection(_SubjectInjection):
    """Cross-attention (pretrained video Q/K/V + LoRA) -> the block's pretrained FFN + LoRA ->
    zero-initialised FC, added to the video stream (Eq. 7-8)."""

    def __init__(self, dim: int, ffn_dim: int, rank: int, alpha: float):
        super().__init__(dim)
        self.lora_q, self.lora_k, self.lora_v = (InheritedLoRA(dim, dim, rank, alpha) for _ in range(3))
        self.lora_ff_in = InheritedLoRA(dim, ffn_dim, rank, alpha)
        self.lora_ff_out = InheritedLoRA(ffn_dim, dim, rank, alpha)
        self.reset_parameters()

    @classmethod
    def build(cls, block, config):
        dim = config.num_attention_heads * config.attention_head_dim
        return cls(dim, pretrained(block.ff.net[0].proj).out_features, config.lora_rank, config.lora_alpha)

    def query(self, video, attn):
        return self.lora_q(video, attn.to_q)

    def keys_values(self, subjects, attn):
        return self.lora_k(subjects, attn.to_k), self.lora_v(subjects, attn.to_v), attn.norm_k

    def transform(self, out, block):
        # diffusers' FeedForward: net[0] is GELU (a Linear, then gelu), net[1] dropout, net[2] the Linear out
        gelu = block.ff.net[0]
        hidden = F.gelu(self.lora_ff_in(out, gelu.proj), approximate=gelu.approximate)
        return self.lora_ff_out(hidden, block.ff.net[2])


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
