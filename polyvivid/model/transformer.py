"""PolyVividTransformer: HunyuanVideo's transformer with PolyVivid's subject conditioning.

It subclasses diffusers' `HunyuanVideoTransformer3DModel` and overrides `forward` only, so weight
names, `from_pretrained`, LoRA and gradient checkpointing work as for the base model. PolyVivid's
own parameters are the LoRA adapter "polyvivid" and the modules under `identity_injection`; they
are what training updates and what `polyvivid_state_dict()` saves. Without subject latents the
forward is exactly the base model's, whatever PolyVivid's weights: the injection's LoRA lives in the
injection modules and the interaction's in its own copy of a block. The exceptions are the ablations
that adapt the base blocks themselves: `token_concat` (its LoRA is on the blocks' video Q/K/V, which
video and subject tokens share, as in OmniControl) and `interaction_weights="shared"` (the interaction
LoRA sits on the shared block); both change the subject-free forward once trained.

Injection strategies (paper Table 2):
  cross_attention  attention-inherited identity injection (4.3), the default
  adapter          IP-Adapter-style decoupled cross-attention with new K/V
  token_concat     subject tokens appended to the video tokens (HunyuanCustom / OmniControl)
  none             no injection (the subjects reach the video only through the enhanced text)

`use_llava_fusion` is stored here with the other ablation switches but read by the pipeline: with
it off, LLaVA sees the prompt alone and z_T holds no <image> tokens.

Context parallelism is applied from outside (train/context_parallel.py): it sets `sequence_sharding`,
which the forward asks to cut the video and text tokens into this rank's chunks before the blocks and
to gather the output after them, and it swaps the blocks' attention processors. Unset, nothing changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoTransformer3DModel

from .injection import INJECTION_STRATEGIES
from .interaction import InteractionAttnProcessor, InteractionModule, JointRope
from .options import DEFAULT_INJECTION, TRAINABLE_GROUPS
from .rope import rope_cos_sin

ADAPTER_NAME = "polyvivid"
POLYVIVID_WEIGHTS = "polyvivid_weights.safetensors"


class PolyVividTransformer(HunyuanVideoTransformer3DModel):
    @register_to_config
    def __init__(
        self,
        in_channels: int = 16,
        out_channels: int = 16,
        num_attention_heads: int = 24,
        attention_head_dim: int = 128,
        num_layers: int = 20,
        num_single_layers: int = 40,
        num_refiner_layers: int = 2,
        mlp_ratio: float = 4.0,
        patch_size: int = 2,
        patch_size_t: int = 1,
        qk_norm: str = "rms_norm",
        guidance_embeds: bool = True,
        text_embed_dim: int = 4096,
        pooled_projection_dim: int = 768,
        rope_theta: float = 256.0,
        rope_axes_dim: tuple[int, ...] = (16, 56, 56),
        image_condition_type: str | None = None,
        # PolyVivid
        injection: str = DEFAULT_INJECTION,
        use_interaction: bool = True,
        use_interaction_rope: bool = True,
        use_llava_fusion: bool = True,
        interaction_block: int = 0,
        interaction_weights: str = "copy",
        lora_rank: int = 16,
        lora_alpha: float = 16.0,
        max_subjects: int = 4,
    ) -> None:
        super().__init__(
            in_channels=in_channels, out_channels=out_channels, num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim, num_layers=num_layers, num_single_layers=num_single_layers,
            num_refiner_layers=num_refiner_layers, mlp_ratio=mlp_ratio, patch_size=patch_size,
            patch_size_t=patch_size_t, qk_norm=qk_norm, guidance_embeds=guidance_embeds,
            text_embed_dim=text_embed_dim, pooled_projection_dim=pooled_projection_dim, rope_theta=rope_theta,
            rope_axes_dim=rope_axes_dim, image_condition_type=image_condition_type,
        )
        if image_condition_type is not None:
            raise ValueError("PolyVivid conditions on subjects, not on a first frame: image_condition_type must be None")
        if injection not in INJECTION_STRATEGIES:
            raise ValueError(f"injection must be one of {tuple(INJECTION_STRATEGIES)}, got {injection!r}")
        if not 0 <= interaction_block < num_layers:
            raise ValueError(f"interaction_block must be in [0, {num_layers}), got {interaction_block}")
        self.interaction = None
        if use_interaction:
            self.interaction = InteractionModule(num_attention_heads, attention_head_dim, mlp_ratio, qk_norm,
                                                 weights=interaction_weights)
            if interaction_weights == "shared":
                self.transformer_blocks[interaction_block].attn.set_processor(InteractionAttnProcessor())

        self.sequence_sharding = None  # context parallelism's (train/context_parallel.py): None runs whole
        self.step_cache = None  # a generation's StepCache (model/step_cache.py): None runs every block
        self.identity_injection = None
        if self.injection_strategy.per_block:
            self.identity_injection = nn.ModuleList(self.injection_strategy.build(block, self.config)
                                                    for block in self.transformer_blocks)

        if lora_rank > 0 and self.lora_target_modules():
            from peft import LoraConfig

            self.add_adapter(
                LoraConfig(r=lora_rank, lora_alpha=lora_alpha, target_modules=self.lora_target_modules(),
                           init_lora_weights=True),
                adapter_name=ADAPTER_NAME,
            )

    @property
    def injection_strategy(self):
        """The registry's class for config.injection (injection.INJECTION_STRATEGIES)."""
        return INJECTION_STRATEGIES[self.config.injection]

    # ----------------------------------------------------------------------------- parameters
    def lora_target_modules(self) -> str:
        """A regex on full module names (peft fullmatches it): exactly the modules PolyVivid adapts."""
        cfg = self.config
        parts = []
        if cfg.use_interaction:
            block = r"interaction\.block" if cfg.interaction_weights == "copy" else rf"transformer_blocks\.{cfg.interaction_block}"
            parts.append(block + r"\.(attn\.(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj)"
                                 r"|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2))")
        if self.injection_strategy.lora_targets:
            parts.append(r"transformer_blocks\.\d+\." + self.injection_strategy.lora_targets)
        return "|".join(f"({p})" for p in parts)

    def polyvivid_parameter_names(self) -> list[str]:
        """PolyVivid's own (trainable) parameters: LoRA and the new injection modules."""
        return [n for n, _ in self.named_parameters()
                if f".{ADAPTER_NAME}." in n and "lora_" in n or n.startswith("identity_injection.")]

    TRAINABLE_GROUPS = TRAINABLE_GROUPS

    @staticmethod
    def parameter_group(name: str) -> str:
        """Which of TRAINABLE_GROUPS one of PolyVivid's own parameters belongs to."""
        if name.startswith("identity_injection."):
            return "lora_blocks" if ".lora_" in name else "identity_injection"
        return "lora_interaction" if name.startswith("interaction.") else "lora_blocks"

    def freeze_base(self, groups: tuple[str, ...] | list[str] = TRAINABLE_GROUPS) -> dict[str, int]:
        """Freeze everything but PolyVivid's own parameters in `groups`; returns trainable counts by group.

        identity_injection: the injection modules' own weights (the zero-initialised FC; the adapter's K/V).
        lora_blocks: the LoRA on the pretrained weights the injection inherits from each double block
        (video Q/K/V and FFN; token_concat: the blocks' video Q/K/V); in interaction_weights="shared"
        mode also the shared block's interaction LoRA.
        """
        unknown = set(groups) - set(self.TRAINABLE_GROUPS)
        if unknown:
            raise ValueError(f"unknown trainable groups {sorted(unknown)}; choose from {self.TRAINABLE_GROUPS}")
        own = {n for n in self.polyvivid_parameter_names() if self.parameter_group(n) in groups}
        counts: dict[str, int] = {}
        for name, param in self.named_parameters():
            param.requires_grad_(name in own)
            if name in own:
                group = self.parameter_group(name)
                counts[group] = counts.get(group, 0) + param.numel()
        return counts

    def polyvivid_state_dict(self) -> dict[str, torch.Tensor]:
        own = set(self.polyvivid_parameter_names())
        return {n: p.detach().contiguous() for n, p in self.named_parameters() if n in own}

    def load_polyvivid_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        own = set(self.polyvivid_parameter_names())
        missing, unexpected = own - set(state_dict), set(state_dict) - own
        if missing or unexpected:
            raise ValueError(
                f"PolyVivid weights do not fit this model config: {len(missing)} missing "
                f"(e.g. {sorted(missing)[:2]}), {len(unexpected)} unexpected (e.g. {sorted(unexpected)[:2]})"
            )
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, tensor in state_dict.items():
                params[name].copy_(tensor.to(params[name].dtype))

    def save_polyvivid_weights(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """PolyVivid's own weights (safetensors) + the transformer config: small, beside any base model.

        state_dict: the weights to write when they were gathered elsewhere (sharded training).
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(state_dict if state_dict is not None else self.polyvivid_state_dict(), directory / POLYVIVID_WEIGHTS)
        (directory / "transformer_config.json").write_text(json.dumps(dict(self.config), indent=2, default=list))
        return directory / POLYVIVID_WEIGHTS

    def load_polyvivid_weights(self, directory: str | Path) -> None:
        from safetensors.torch import load_file

        self.load_polyvivid_state_dict(load_file(Path(directory) / POLYVIVID_WEIGHTS))

    def reset_polyvivid_parameters(self) -> None:
        """Fresh init of PolyVivid's own parameters (zero FCs, LoRA B = 0)."""
        if self.identity_injection is not None:
            for module in self.identity_injection:
                module.reset_parameters()
        for module in self.modules():
            if hasattr(module, "reset_lora_parameters") and ADAPTER_NAME in getattr(module, "lora_A", {}):
                module.reset_lora_parameters(ADAPTER_NAME, True)

    @torch.no_grad()
    def inherit_interaction_weights(self) -> None:
        """Copy the pretrained block's weights into the interaction module (weights='copy')."""
        if self.interaction is None or self.interaction.block is None:
            return
        # Either side may have a LoRA wrapper ("x.base_layer.weight") where the other has none.
        unwrap = lambda state: {k.replace(".base_layer.", "."): v for k, v in state.items() if "lora_" not in k}
        source = unwrap(self.transformer_blocks[self.config.interaction_block].state_dict())
        for name, tensor in unwrap(self.interaction.block.state_dict()).items():
            tensor.copy_(source[name])

    @classmethod
    def build_on_meta(cls, base_dir: str | Path, **polyvivid_config: Any) -> "PolyVividTransformer":
        """The model of a HunyuanVideo transformer directory's config.json with `polyvivid_config`, every
        tensor on the meta device: shapes only, no memory (a 13B model is built in no time and no RAM)."""
        config = json.loads((Path(base_dir) / "config.json").read_text())
        base_keys = set(HunyuanVideoTransformer3DModel._get_init_keys(HunyuanVideoTransformer3DModel))
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k in base_keys}
        with torch.device("meta"):
            return cls(**kwargs, **polyvivid_config)

    def base_weight_sources(self) -> dict[str, str]:
        """Every tensor PolyVivid does not own, and the HunyuanVideo checkpoint's name it is loaded from: the
        base's own (where peft wrapped a Linear, ours is "x.base_layer.weight") and, with
        interaction_weights="copy", the interaction block's copy of block `interaction_block`."""
        own = set(self.polyvivid_parameter_names())
        inherited = f"transformer_blocks.{self.config.interaction_block}."
        sources = {}
        for name in self.state_dict():
            if name in own:
                continue
            plain = name.replace(".base_layer.", ".")
            if plain.startswith("interaction.block."):
                plain = inherited + plain[len("interaction.block."):]
            sources[name] = plain
        return sources

    def base_weights_from(self, source) -> dict[str, str]:
        """base_weight_sources(), once `source` (a loading.SafetensorsDir) is known to hold nothing else: a
        checkpoint with weights HunyuanVideo does not have is some other model."""
        sources = self.base_weight_sources()
        unknown = sorted(set(source.tensors) - set(sources.values()))
        if unknown:
            raise ValueError(f"{source.directory} has weights HunyuanVideo does not: {unknown[:3]}")
        return sources

    def materialize_polyvivid_parameters(self, dtype: torch.dtype = torch.float32) -> set[str]:
        """On a model built on the meta device: PolyVivid's own parameters on the CPU in `dtype` (fp32, the
        master weights of what trains), initialised as a fresh model's (zero FCs, LoRA B = 0) from the
        global RNG, which the caller seeds (every rank alike). The base stays on meta, to be loaded.
        Returns their names."""
        own = set(self.polyvivid_parameter_names())
        for prefix, module in self.named_modules():
            for name, param in list(module._parameters.items()):
                if param is not None and (f"{prefix}.{name}" if prefix else name) in own:
                    module._parameters[name] = nn.Parameter(torch.empty(param.shape, dtype=dtype),
                                                            requires_grad=param.requires_grad)
        self.reset_polyvivid_parameters()
        return own

    @classmethod
    def from_hunyuanvideo(cls, base_dir: str | Path, torch_dtype: torch.dtype = torch.float32,
                          **polyvivid_config: Any) -> "PolyVividTransformer":
        """Assemble PolyVivid from a HunyuanVideo transformer directory (diffusers layout, safetensors).

        Built on the meta device; the base weights are then read into the model's own memory tensor by
        tensor (model.loading), so a 13B base is read once, never randomly initialised and never held
        twice. Training shards the meta model first and reads each rank's rows (train.trainer)."""
        from .loading import SafetensorsDir, load_weights, materialize

        source = SafetensorsDir(base_dir)
        model = cls.build_on_meta(base_dir, **polyvivid_config)
        nn.Module.to(model, dtype=torch_dtype)  # nn.Module's: diffusers' `to` warns about casts meta has no use for
        own = model.materialize_polyvivid_parameters(torch_dtype)
        materialize(model, "cpu", keep=own)
        load_weights(model, source, model.base_weights_from(source))
        return model

    # ----------------------------------------------------------------------------- forward
    def embed_subjects(self, subject_latents: torch.Tensor) -> torch.Tensor:
        """[B, n, C, h, w] clean VAE latents (one frame each) -> [B, n * h/p * w/p, D], patchified like video."""
        b, n, c, h, w = subject_latents.shape
        tokens = self.x_embedder(subject_latents.reshape(b * n, c, 1, h, w))
        return tokens.reshape(b, -1, tokens.shape[-1])

    def _concat_rope(self, n: int, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """token_concat: subject k's tokens sit at frame -(k+1) on the video's own (y, x) grid."""
        t = -torch.arange(1, n + 1, device=device).repeat_interleave(h * w)
        yx = torch.stack(torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                                        indexing="ij"), -1).reshape(-1, 2).repeat(n, 1)
        return rope_cos_sin(torch.cat([t[:, None], yx], 1), self.config.rope_axes_dim, self.config.rope_theta)

    def _run(self, module, *args):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(module, *args)
        return module(*args)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.LongTensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        pooled_projections: torch.Tensor,
        guidance: torch.Tensor | None = None,
        subject_latents: torch.Tensor | None = None,
        subject_mask: torch.Tensor | None = None,
        text_positions: torch.Tensor | None = None,
        subject_positions: torch.Tensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> tuple[torch.Tensor] | Transformer2DModelOutput:
        """Base arguments as HunyuanVideoTransformer3DModel, plus the subjects:

        subject_latents    [B, n, C, h, w] clean VAE latents of the subject images (None: plain base model)
        subject_mask       [B, n] bool, False for padding subjects (None: all present); a row with none
                           present runs as the plain base model (true CFG's unconditional row in one batch)
        text_positions     [B, L, 3] interaction RoPE positions of the z_T tokens (rope.interaction_positions)
        subject_positions  [B, n*h/p*w/p, 3] positions of the subjects' VAE tokens
        """
        if subject_latents is None:
            return super().forward(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                                   pooled_projections, guidance, attention_kwargs, return_dict)
        cfg = self.config
        batch, n_subjects = subject_latents.shape[:2]
        if n_subjects > cfg.max_subjects:
            raise ValueError(f"{n_subjects} subjects given; this model supports at most {cfg.max_subjects}")
        _, _, frames, height, width = hidden_states.shape
        p, p_t = cfg.patch_size, cfg.patch_size_t
        post_f, post_h, post_w = frames // p_t, height // p, width // p
        sub_h, sub_w = subject_latents.shape[-2] // p, subject_latents.shape[-1] // p
        device = hidden_states.device

        video_rope = self.rope(hidden_states)
        temb, _ = self.time_text_embed(timestep, pooled_projections, guidance)
        video = self.x_embedder(hidden_states)
        text = self.context_embedder(encoder_hidden_states, timestep, encoder_attention_mask)
        subjects = self.embed_subjects(subject_latents.to(video.dtype))

        if subject_mask is None:
            subject_mask = torch.ones(batch, n_subjects, dtype=torch.bool, device=device)
        subject_token_mask = subject_mask.bool().repeat_interleave(sub_h * sub_w, dim=1)
        text_mask = encoder_attention_mask.bool()
        # rows with no subject take the base model's path: interaction and injection are undone for them
        # (computed over all subject tokens, so that no attention row is empty, then dropped)
        present = subject_mask.bool().any(1)
        conditioned = None if bool(present.all()) else present[:, None, None]
        injection_mask = subject_token_mask if conditioned is None else subject_token_mask | ~present[:, None]

        if self.interaction is not None:
            rope = None
            if cfg.use_interaction_rope:
                if text_positions is None or subject_positions is None:
                    raise ValueError("interaction RoPE needs text_positions and subject_positions")
                v_cos, v_sin = rope_cos_sin(subject_positions, cfg.rope_axes_dim, cfg.rope_theta)
                t_cos, t_sin = rope_cos_sin(text_positions, cfg.rope_axes_dim, cfg.rope_theta)
                rope = JointRope(v_cos, v_sin, t_cos, t_sin)
            shared = self.transformer_blocks[cfg.interaction_block]
            interacted, subjects = self._run(self.interaction, text, subjects, temb, text_mask,
                                             injection_mask, rope, shared)
            text = interacted if conditioned is None else torch.where(conditioned, interacted, text)

        n_video = video.shape[1]
        video_mask = torch.ones(batch, n_video, dtype=torch.bool, device=device)
        if self.injection_strategy.appends_subject_tokens:
            concat_cos, concat_sin = self._concat_rope(n_subjects, sub_h, sub_w, device)
            video = torch.cat([video, subjects], dim=1)
            video_rope = (torch.cat([video_rope[0], concat_cos]), torch.cat([video_rope[1], concat_sin]))
            video_mask = torch.cat([video_mask, subject_token_mask], dim=1)
        attention_mask = torch.cat([video_mask, text_mask], dim=1)[:, None, None, :]
        sharding = self.sequence_sharding
        if sharding is not None:  # this rank's chunk of the video and text tokens, the mask in exchange order
            video, video_rope, text, attention_mask = sharding.shard(video, video_rope, text, video_mask, text_mask)
        elif bool(attention_mask.all()):  # nothing padded: no mask, so that flash attention kernels can run
            attention_mask = None

        def double(i, video, text):
            if self.identity_injection is not None:
                injected = self._run(self.identity_injection[i], video, subjects, injection_mask,
                                     self.transformer_blocks[i])
                video = injected if conditioned is None else torch.where(conditioned, injected, video)
            return self._run(self.transformer_blocks[i], video, text, temb, attention_mask, video_rope)

        cache = self.step_cache if not torch.is_grad_enabled() else None  # sampling only (model/step_cache.py)
        start = video
        video, text = double(0, video, text)
        first_residual = video - start if cache is not None else None
        if cache is not None and cache.can_skip(first_residual, sharding.group if sharding is not None else None):
            video = video + cache.rest_residual
        else:
            after_first = video
            for i in range(1, len(self.transformer_blocks)):
                video, text = double(i, video, text)
            for block in self.single_transformer_blocks:
                video, text = self._run(block, video, text, temb, attention_mask, video_rope)
            if cache is not None:
                cache.store(first_residual, video - after_first)

        if sharding is None:
            video = self.proj_out(self.norm_out(video[:, :n_video], temb))
        else:  # per-token layers on the chunk, then every rank gets the whole output (64 numbers a token)
            video = sharding.gather(self.proj_out(self.norm_out(video, temb)))[:, :n_video]
        video = video.reshape(batch, post_f, post_h, post_w, -1, p_t, p, p)
        video = video.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if not return_dict:
            return (video,)
        return Transformer2DModelOutput(sample=video)
