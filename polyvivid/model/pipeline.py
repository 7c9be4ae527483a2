"""PolyVividPipeline: prompt + [(word, image), ...] -> video frames.

Components (diffusers layout, one sub-folder each): transformer (PolyVividTransformer), vae
(AutoencoderKLHunyuanVideo), scheduler (FlowMatchEulerDiscreteScheduler), text_encoder
(LlavaForConditionalGeneration) + tokenizer + image_processor for the text-image fusion, and
text_encoder_2 (CLIPTextModel) + tokenizer_2 for HunyuanVideo's pooled projection.

Ways to get one:
  PolyVividPipeline.from_preset("tiny")                 random weights, seeded (tests, demo)
  PolyVividPipeline.from_pretrained(DIR)                 a whole checkpoint saved by save_pretrained
  PolyVividPipeline.from_hunyuanvideo(HV_DIR, LLAVA_DIR) real HunyuanVideo + LLaVA weights
  load_pipeline(REF)                                     any of the above from a path, s3:// URI or preset
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from diffusers import AutoencoderKLHunyuanVideo, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from transformers import (
    CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from .encoding_cache import EncodingCache, encoding_key
from .fusion import END_OF_TURN, TextImageFusion, encode_subject_images, square_subject_image
from .options import TRANSFORMER_OPTIONS
from .presets import get_preset
from .request import InvalidRequest, validate_request  # noqa: F401  (re-exported)
from .step_cache import StepCache
from .transformer import POLYVIVID_WEIGHTS, PolyVividTransformer

PIPELINE_CARD = "polyvivid_pipeline.json"  # marks a PolyVivid-weights-only directory (see load_pipeline)


def _image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """Padded to a square (fusion.square_subject_image), resized, [3, size, size] in [-1, 1]."""
    image = square_subject_image(image).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


class PolyVividPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->text_encoder_2->transformer->vae"
    # <SEP> of the fused prompt: the text encoder's end-of-turn token (fusion.py); set it for an MLLM
    # whose chat format ends a turn with another token.
    fusion_separator = END_OF_TURN

    def __init__(self, transformer: PolyVividTransformer, vae: AutoencoderKLHunyuanVideo,
                 scheduler: FlowMatchEulerDiscreteScheduler, text_encoder: LlavaForConditionalGeneration,
                 tokenizer: PreTrainedTokenizerFast, image_processor: CLIPImageProcessorPil,
                 text_encoder_2: CLIPTextModel, tokenizer_2: PreTrainedTokenizerFast):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, scheduler=scheduler, text_encoder=text_encoder,
                              tokenizer=tokenizer, image_processor=image_processor,
                              text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
        self.vae_scale_spatial = vae.spatial_compression_ratio
        self.vae_scale_temporal = vae.temporal_compression_ratio
        # set by place(); until then generation runs where the transformer is, in its dtype
        self.execution_device: torch.device | None = None
        self.compute_dtype: torch.dtype | None = None
        self.encoders_offloaded = False
        self.attention_backend: str | None = None
        self.encoding_cache: EncodingCache | None = None
        self.last_step_cache: StepCache | None = None  # the last generation's (how many steps it skipped)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, name: str = "tiny", seed: int = 0, **transformer_overrides: Any) -> "PolyVividPipeline":
        """Random weights in the preset's shapes, reproducible from `seed`."""
        from .tokenizer import byte_tokenizer

        preset = get_preset(name)
        torch.manual_seed(seed)
        transformer = PolyVividTransformer(**{**preset.transformer, **transformer_overrides})
        transformer.inherit_interaction_weights()  # as from_hunyuanvideo: the interaction block starts as a copy
        vae = AutoencoderKLHunyuanVideo(**preset.vae)
        llava = LlavaForConditionalGeneration(LlavaConfig(
            vision_config=CLIPVisionConfig(**preset.llava_vision).to_dict(),
            text_config=LlamaConfig(**preset.llava_text).to_dict(), **preset.llava))
        clip = CLIPTextModel(CLIPTextConfig(**preset.clip_text))
        size = preset.llava_vision["image_size"]
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        for module in (transformer, vae, llava, clip):
            module.eval()
        return cls(transformer, vae, FlowMatchEulerDiscreteScheduler(**preset.scheduler), llava, byte_tokenizer(),
                   image_processor, clip, byte_tokenizer(clip=True))

    @classmethod
    def from_hunyuanvideo(cls, hunyuanvideo: str | Path, llava: str | Path, polyvivid_weights: str | Path | None = None,
                          torch_dtype: torch.dtype = torch.float32, transformer: PolyVividTransformer | None = None,
                          **transformer_options: Any) -> "PolyVividPipeline":
        """Assemble PolyVivid from real weights in their published layouts (paths or s3:// URIs).

        hunyuanvideo: a diffusers HunyuanVideo pipeline directory (transformer/, vae/, scheduler/,
            text_encoder_2/, tokenizer_2/; its Llama text_encoder is not used).
        llava: a transformers LLaVA directory (LlavaForConditionalGeneration + tokenizer + image
            processor), e.g. LLaVA-Llama-3-8B or HunyuanVideo-I2V's text encoder.
        polyvivid_weights: a directory with polyvivid_weights.safetensors (a training run's final/).
        transformer: one already built from hunyuanvideo's transformer/ (training builds its own, sharded);
            transformer_options then do not apply.
        """
        from transformers import AutoTokenizer

        from ..storage import materialize_dir

        hv, llava = materialize_dir(str(hunyuanvideo)), materialize_dir(str(llava))
        if transformer is None:
            transformer = PolyVividTransformer.from_hunyuanvideo(hv / "transformer", torch_dtype, **transformer_options)
        if polyvivid_weights is not None:
            transformer.load_polyvivid_weights(materialize_dir(str(polyvivid_weights)))
        pipe = cls(
            transformer=transformer.eval(),
            vae=AutoencoderKLHunyuanVideo.from_pretrained(hv / "vae", torch_dtype=torch_dtype).eval(),
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(hv / "scheduler"),
            text_encoder=LlavaForConditionalGeneration.from_pretrained(llava, dtype=torch_dtype).eval(),
            tokenizer=AutoTokenizer.from_pretrained(llava),
            image_processor=CLIPImageProcessorPil.from_pretrained(llava),
            text_encoder_2=CLIPTextModel.from_pretrained(hv / "text_encoder_2", dtype=torch_dtype).eval(),
            tokenizer_2=AutoTokenizer.from_pretrained(hv / "tokenizer_2"),
        )
        return pipe

    @classmethod
    def from_pretrained(cls, directory: str | Path, torch_dtype: torch.dtype = torch.float32) -> "PolyVividPipeline":
        """A whole checkpoint written by `save_pretrained`, each component by its own class (no hub)."""
        from transformers import AutoTokenizer

        d = Path(directory)
        if not (d / "model_index.json").exists():
            raise FileNotFoundError(f"{d} is not a PolyVivid checkpoint: no model_index.json")
        return cls(
            transformer=PolyVividTransformer.from_pretrained(d / "transformer", torch_dtype=torch_dtype).eval(),
            vae=AutoencoderKLHunyuanVideo.from_pretrained(d / "vae", torch_dtype=torch_dtype).eval(),
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(d / "scheduler"),
            text_encoder=LlavaForConditionalGeneration.from_pretrained(d / "text_encoder", dtype=torch_dtype).eval(),
            tokenizer=AutoTokenizer.from_pretrained(d / "tokenizer"),
            image_processor=CLIPImageProcessorPil.from_pretrained(d / "image_processor"),
            text_encoder_2=CLIPTextModel.from_pretrained(d / "text_encoder_2", dtype=torch_dtype).eval(),
            tokenizer_2=AutoTokenizer.from_pretrained(d / "tokenizer_2"),
        )

    # ------------------------------------------------------------------ placement
    def place(self, device: str | torch.device, vae_tiling: bool = True, offload_encoders: bool = True,
              fp8_weights: bool = False, group_offload: bool = False, attention_backend: str | None = None,
              encoding_cache_entries: int = 0) -> None:
        """Put the pipeline on `device` for generation (api.service.InferenceMemory says what each option saves):
        the VAE there, tiled; LLaVA and CLIP there, or in host memory and on the device only while encoding
        (offload_encoders; nothing moves when `device` is the CPU); the transformer there, its weights stored
        in float8 (fp8_weights), or kept in host memory block by block (group_offload); and the attention
        backend every attention of a generation uses; encoding_cache_entries > 0 keeps that many requests'
        encodings (model/encoding_cache.py)."""
        device = torch.device(device)
        self.encoding_cache = EncodingCache(encoding_cache_entries) if encoding_cache_entries else None
        self.execution_device = device
        self.compute_dtype = self.transformer.dtype
        self.vae.to(device)
        if vae_tiling:
            self.enable_vae_tiling()
        self.encoders_offloaded = offload_encoders and device.type != "cpu"
        for encoder in (self.text_encoder, self.text_encoder_2):
            encoder.to("cpu" if self.encoders_offloaded else device)
        if attention_backend is not None:
            from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

            _check_attention_backend_requirements(AttentionBackendName(attention_backend))  # its package is there
        self.attention_backend = attention_backend
        if fp8_weights:
            self.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=self.compute_dtype)
        if group_offload:
            self.transformer.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                                  offload_type="block_level", num_blocks_per_group=1,
                                                  use_stream=device.type == "cuda")
        else:
            self.transformer.to(device)

    def freeze_encoders(self, device: str | torch.device, dtype: torch.dtype) -> None:
        """The VAE and the text encoders frozen on `device` in `dtype`, VAE tiling on: as training and the
        precompute phase encode their inputs (the untiled encode of a 720p clip peaks at 32 GB)."""
        for module in (self.vae, self.text_encoder, self.text_encoder_2):
            module.requires_grad_(False).to(device, dtype)
        self.enable_vae_tiling()

    def _device_and_dtype(self) -> tuple[torch.device, torch.dtype]:
        """Where generation computes, in what dtype: place()'s, else the transformer's own."""
        return self.execution_device or self.transformer.device, self.compute_dtype or self.transformer.dtype

    @contextlib.contextmanager
    def _encoders_on_device(self):
        """LLaVA and CLIP on the execution device meanwhile (moved there and back when offloaded)."""
        if not self.encoders_offloaded:
            yield
            return
        device, _ = self._device_and_dtype()
        for encoder in (self.text_encoder, self.text_encoder_2):
            encoder.to(device)
        try:
            yield
        finally:
            for encoder in (self.text_encoder, self.text_encoder_2):
                encoder.to("cpu")
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def _conditions(self, prompt: str, subjects: list[tuple[str, Image.Image]]) -> dict[str, torch.Tensor]:
        """encode_conditions, through the encoding cache when place() gave the pipeline one."""
        cache = self.encoding_cache
        key = encoding_key(prompt, subjects) if cache is not None else None
        cond = cache.get(key, self._device_and_dtype()[0]) if cache is not None else None
        if cond is None:
            with self._encoders_on_device():
                cond = self.encode_conditions(prompt, subjects)
            if cache is not None:
                cache.put(key, cond)
        return cond

    @contextlib.contextmanager
    def _step_cache(self, threshold: float):
        """The transformer carries a fresh StepCache (threshold > 0) for one generation, and none after it,
        however it ends."""
        self.last_step_cache = self.transformer.step_cache = StepCache(threshold) if threshold > 0 else None
        try:
            yield
        finally:
            self.transformer.step_cache = None

    def _attention(self):
        from diffusers.models.attention_dispatch import attention_backend

        return attention_backend(self.attention_backend) if self.attention_backend else contextlib.nullcontext()

    def save_polyvivid(self, directory: str | Path, base: dict[str, Any]) -> Path:
        """PolyVivid's own weights plus a card saying which base they go on: a small artifact.

        base: {"preset": "tiny", "seed": 0} or {"hunyuanvideo": URI, "llava": URI}.
        """
        self.transformer.save_polyvivid_weights(directory)
        write_polyvivid_card(directory, base, dict(self.transformer.config))
        return Path(directory)

    # ------------------------------------------------------------------ generation
    @property
    def subject_image_size(self) -> int:
        """Pixels per side for the VAE so that its token grid equals LLaVA's <image> grid."""
        grid = self.text_encoder.config.vision_config.image_size // self.text_encoder.config.vision_config.patch_size
        return grid * self.vae_scale_spatial * self.transformer.config.patch_size

    def encode_subjects(self, images: list[Image.Image], size: int | None = None) -> torch.Tensor:
        """[1, n, C, h, w] clean latents of the subject images."""
        size = size or self.subject_image_size
        pixels = torch.stack([_image_to_tensor(img, size) for img in images])
        return encode_subject_images(self.vae, pixels)[None]

    @torch.no_grad()
    def pooled_prompt(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer_2(prompt, padding="max_length", truncation=True, return_tensors="pt",
                               max_length=self.text_encoder_2.config.max_position_embeddings).input_ids
        return self.text_encoder_2(ids.to(self.text_encoder_2.device)).pooler_output

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        subjects: list[tuple[str, Image.Image]] = (),
        num_frames: int = 9,
        height: int = 64,
        width: int = 64,
        num_inference_steps: int = 30,
        guidance_scale: float = 6.0,
        true_cfg_scale: float = 1.0,
        negative_prompt: str = "",
        generator: torch.Generator | None = None,
        output_type: str = "np",
        callback: Callable[[int, int], None] | None = None,
        step_cache_threshold: float = 0.0,
    ) -> np.ndarray | torch.Tensor:
        """Returns frames [F, H, W, 3] uint8 (output_type "np") or the latents ("latent").

        guidance_scale feeds HunyuanVideo's embedded (distilled) guidance; true_cfg_scale > 1 adds
        classifier-free guidance against `negative_prompt` without subjects (both passes in one batch of two).
        callback(step, total) runs after every denoising step (progress reporting).
        step_cache_threshold > 0 skips the blocks after the first on steps where the first block's residual
        changed by less than that, relatively (model/step_cache.py); self.last_step_cache says how many.
        """
        cfg = self.transformer.config
        subjects = list(subjects)
        validate_request(prompt, [w for w, _ in subjects], num_frames, height, width, cfg.max_subjects,
                         self.vae_scale_spatial * cfg.patch_size)
        device, dtype = self._device_and_dtype()

        cond = self._conditions(prompt, subjects)
        uncond = self._conditions(negative_prompt or " ", []) if true_cfg_scale > 1.0 else None

        latent_frames = (num_frames - 1) // self.vae_scale_temporal + 1
        shape = (1, cfg.in_channels, latent_frames, height // self.vae_scale_spatial, width // self.vae_scale_spatial)
        latents = torch.randn(shape, generator=generator, device="cpu", dtype=torch.float32).to(device)
        sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]
        self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        guidance = torch.tensor([guidance_scale * 1000.0], device=device, dtype=dtype) if cfg.guidance_embeds else None

        timesteps = self.scheduler.timesteps
        rows = 1 if uncond is None else 2  # true CFG: the conditioned and unconditional passes in one batch
        if uncond is not None:
            cond = batch_conditions([cond, uncond])
            guidance = guidance.expand(rows) if guidance is not None else None
        with self.progress_bar(total=len(timesteps)) as progress, self._attention(), \
                self._step_cache(step_cache_threshold):
            for i, t in enumerate(timesteps):
                timestep = t.expand(rows).float()  # fp32, as diffusers: in bf16, 995.1 would be 996
                noise_pred = self.transformer(hidden_states=latents.to(dtype).expand(rows, -1, -1, -1, -1),
                                              timestep=timestep, guidance=guidance, **cond).sample
                if uncond is not None:
                    noise_pred, uncond_pred = noise_pred.chunk(2)
                    noise_pred = uncond_pred + true_cfg_scale * (noise_pred - uncond_pred)
                latents = self.scheduler.step(noise_pred.float(), t, latents, return_dict=False)[0]
                progress.update()
                if callback is not None:
                    callback(i + 1, len(timesteps))

        if output_type == "latent":
            return latents
        video = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        frames = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [3, F, H, W]
        return frames.permute(1, 2, 3, 0).cpu().numpy()

    def encode_conditions(self, prompt: str, subjects: list[tuple[str, Image.Image]], device: torch.device | None = None,
                          dtype: torch.dtype | None = None,
                          subject_latents: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The transformer's conditioning inputs for one prompt and its subjects, on `device` in `dtype` (default:
        the transformer's). subject_latents: encode_subjects' result when the caller already has it."""
        cfg = self.transformer.config
        default_device, default_dtype = self._device_and_dtype()
        device, dtype = device or default_device, dtype or default_dtype
        fusion = TextImageFusion(self.text_encoder, self.tokenizer, self.image_processor, self.fusion_separator)
        fused = fusion.encode(prompt, subjects, with_images=cfg.use_llava_fusion)
        cond = dict(
            encoder_hidden_states=fused.embeds.to(device, dtype),
            encoder_attention_mask=fused.mask.to(device),
            pooled_projections=self.pooled_prompt(prompt).to(device, dtype),
        )
        if subjects:
            cond.update(
                subject_latents=(subject_latents if subject_latents is not None else
                                 self.encode_subjects([img for _, img in subjects])).to(device, dtype),
                text_positions=fused.text_positions[None].to(device),
                subject_positions=fused.subject_positions[None].to(device),
            )
        return cond

    def enable_vae_tiling(self) -> None:
        self.vae.enable_tiling()


def batch_conditions(conditions: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One batch from several `encode_conditions` results: captions right-padded (masked out, as
    HunyuanVideo pads), subject lists padded with masked-out zero subjects (a condition without subjects,
    as true CFG's unconditional one, gets none present)."""
    with_subjects = [c for c in conditions if "subject_latents" in c]
    if with_subjects:  # a condition without subjects becomes a row of none (the model's base path)
        like = with_subjects[0]
        conditions = [c if "subject_latents" in c else {
            **c, "subject_latents": like["subject_latents"][:, :0],
            "text_positions": like["text_positions"].new_zeros(1, c["encoder_attention_mask"].shape[1], 3),
            "subject_positions": like["subject_positions"][:, :0]} for c in conditions]

    def pad(key: str, length: int) -> torch.Tensor:
        parts = [c[key] for c in conditions]
        return torch.cat([F.pad(t, (0, 0) * (t.dim() - 2) + (0, length - t.shape[1])) for t in parts])

    text_length = max(c["encoder_attention_mask"].shape[1] for c in conditions)
    batch = {"encoder_hidden_states": pad("encoder_hidden_states", text_length),
             "encoder_attention_mask": pad("encoder_attention_mask", text_length),
             "pooled_projections": torch.cat([c["pooled_projections"] for c in conditions])}
    if with_subjects:
        counts = [c["subject_latents"].shape[1] for c in conditions]
        batch["text_positions"] = pad("text_positions", text_length)
        batch["subject_latents"] = pad("subject_latents", max(counts))
        batch["subject_positions"] = pad("subject_positions", max(c["subject_positions"].shape[1] for c in conditions))
        device = batch["subject_latents"].device
        batch["subject_mask"] = torch.arange(max(counts), device=device)[None] < torch.tensor(counts, device=device)[:, None]
    return batch


def write_polyvivid_card(directory: str | Path, base: dict[str, Any], transformer_config: dict[str, Any]) -> Path:
    """The card beside PolyVivid weights: which base model they go on, with which PolyVivid options."""
    card = {"format": "polyvivid-weights/v1", "base": base,
            "transformer_options": {k: transformer_config[k] for k in TRANSFORMER_OPTIONS}}
    path = Path(directory) / PIPELINE_CARD
    path.write_text(json.dumps(card, indent=2))
    return path


class DamagedModel(ValueError):
    """Weights or a card that cannot be read as stored (truncated, corrupt, or not what it says)."""


def load_pipeline(ref: str, torch_dtype: torch.dtype = torch.float32, base: str | None = None) -> PolyVividPipeline:
    """A pipeline from a preset name, or a directory / s3:// URI holding either a whole checkpoint
    (model_index.json) or PolyVivid weights with their card (polyvivid_pipeline.json).

    base: where the card's base model lives now (a directory or URI with hunyuanvideo/ and llava/),
    for weights trained on a base that has since moved (e.g. a cluster's own copy).
    DamagedModel when a file is there but unreadable.
    """
    from safetensors import SafetensorError

    try:
        return _load_pipeline(ref, torch_dtype, base)
    except (SafetensorError, json.JSONDecodeError, KeyError) as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        raise DamagedModel(f"{ref}: damaged or unreadable model files ({e.__class__.__name__}: {detail})") from None


def _load_pipeline(ref: str, torch_dtype: torch.dtype, base: str | None) -> PolyVividPipeline:
    from ..storage import materialize_dir
    from .presets import PRESETS

    if ref in PRESETS:
        return PolyVividPipeline.from_preset(ref)
    local = materialize_dir(ref)
    if (local / "model_index.json").exists():
        return PolyVividPipeline.from_pretrained(local, torch_dtype=torch_dtype)
    card_path = local / PIPELINE_CARD
    if not card_path.exists():
        raise FileNotFoundError(f"{ref} is neither a PolyVivid checkpoint (model_index.json) "
                                f"nor PolyVivid weights ({PIPELINE_CARD})")
    card = json.loads(card_path.read_text())
    options = card.get("transformer_options", {})
    unknown = sorted(set(options) - set(TRANSFORMER_OPTIONS))
    if unknown:  # e.g. injection_ffn_mult: weights of the injection before it inherited the blocks' FFN
        raise DamagedModel(f"{ref}: its card names transformer options this PolyVivid does not have "
                           f"({', '.join(unknown)}): weights from an older version; train them again")
    base = {"hunyuanvideo": f"{base.rstrip('/')}/hunyuanvideo", "llava": f"{base.rstrip('/')}/llava"} if base \
        else card["base"]
    if "preset" in base:
        pipe = PolyVividPipeline.from_preset(base["preset"], seed=base.get("seed", 0), **options)
    else:
        pipe = PolyVividPipeline.from_hunyuanvideo(base["hunyuanvideo"], base["llava"], torch_dtype=torch_dtype,
                                                   **options)
    if not (local / POLYVIVID_WEIGHTS).exists():
        raise FileNotFoundError(f"{ref} has no {POLYVIVID_WEIGHTS}")
    pipe.transformer.load_polyvivid_weights(local)
    return pipe
