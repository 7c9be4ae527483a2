"""What a preset is: the configs of every component, as plain dicts."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelPreset:
    name: str
    transformer: dict  # PolyVividTransformer kwargs (base HunyuanVideo shape + PolyVivid options)
    vae: dict  # AutoencoderKLHunyuanVideo kwargs
    llava_vision: dict  # CLIPVisionConfig kwargs
    llava_text: dict  # LlamaConfig kwargs
    llava: dict  # LlavaConfig kwargs besides the two sub-configs
    clip_text: dict  # CLIPTextConfig kwargs (pooled projection)
    scheduler: dict = field(default_factory=lambda: {"shift": 7.0})
