"""Identity-interaction enhancement (paper 4.2).

A pretrained double-stream MM-attention block of HunyuanVideo attends over the LLaVA hidden states
z_T (text stream) and the subjects' VAE tokens z_I (video stream) together. Identity flows from the
images into the text tokens and interaction cues from the text into the image tokens. The block's
weights are inherited (copied, or shared with the base block) and adapted with LoRA on Q/K/V and
the FFN of both streams. Its attention applies the interaction 3D-RoPE (rope.py) to both streams,
which HunyuanVideo's own processor does only for video tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_hunyuan_video import (
    HunyuanVideoAttnProcessor2_0,
    HunyuanVideoTransformerBlock,
)

from .rope import apply_rope


@dataclass
class JointRope:
    """cos/sin for both streams of a double-stream block: [B, N, D] each."""

    video_cos: torch.Tensor
    video_sin: torch.Tensor
    text_cos: torch.Tensor
    text_sin: torch.Tensor


class InteractionAttnProcessor:
    """HunyuanVideo's joint attention, with RoPE on the text stream too when given a JointRope.

    Given anything else it is exactly HunyuanVideoAttnProcessor2_0, so it can sit on a block that is
    shared with the base model without changing the base model's behaviour.
    """

    def __init__(self):
        self.base = HunyuanVideoAttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None):
        if not isinstance(image_rotary_emb, JointRope):
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        rope = image_rotary_emb

        def project(x, to_q, to_k, to_v, norm_q, norm_k, cos, sin):
            q, k, v = (proj(x).unflatten(2, (attn.heads, -1)) for proj in (to_q, to_k, to_v))
            if norm_q is not None:
                q = norm_q(q)
            if norm_k is not None:
                k = norm_k(k)
            return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

        vq, vk, vv = project(hidden_states, attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k,
                             rope.video_cos, rope.video_sin)
        tq, tk, tv = project(encoder_hidden_states, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj,
                             attn.norm_added_q, attn.norm_added_k, rope.text_cos, rope.text_sin)
        out = dispatch_attention_fn(
            torch.cat([vq, tq], 1), torch.cat([vk, tk], 1), torch.cat([vv, tv], 1),
            attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
        ).flatten(2, 3).to(vq.dtype)
        n_video = hidden_states.shape[1]
        video_out = attn.to_out[1](attn.to_out[0](out[:, :n_video]))
        text_out = attn.to_add_out(out[:, n_video:])
        return video_out, text_out


class InteractionModule(nn.Module):
    """Runs one inherited double-stream block over (z_I, z_T) with interaction RoPE.

    weights="copy": the module owns a copy of the block (filled from the base block by
    `PolyVividTransformer.inherit_interaction_weights`); "shared": it borrows the base block itself,
    passed to forward, and owns no weights.
    """

    def __init__(self, num_attention_heads: int, attention_head_dim: int, mlp_ratio: float,
                 qk_norm: str, weights: str = "copy"):
        super().__init__()
        if weights not in ("copy", "shared"):
            raise ValueError(f"interaction_weights must be 'copy' or 'shared', got {weights!r}")
        self.block = None
        if weights == "copy":
            self.block = HunyuanVideoTransformerBlock(num_attention_heads, attention_head_dim,
                                                      mlp_ratio=mlp_ratio, qk_norm=qk_norm)
            self.block.attn.set_processor(InteractionAttnProcessor())

    def forward(self, text: torch.Tensor, subjects: torch.Tensor, temb: torch.Tensor,
                text_mask: torch.Tensor, subject_mask: torch.Tensor, rope: JointRope | None,
                shared_block: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (identity-enhanced text tokens, interaction-enhanced subject tokens)."""
        block = self.block if self.block is not None else shared_block
        mask = torch.cat([subject_mask, text_mask], dim=1)[:, None, None, :]
        subjects, text = block(subjects, text, temb, mask, rope)
        return text, subjects
