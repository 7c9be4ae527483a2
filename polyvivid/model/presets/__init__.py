"""Model presets, one file per scale (torchtitan style): `tiny` for tests and the demo, and
`hunyuan-13b` with the real HunyuanVideo + LLaVA-Llama-3-8B shapes."""

from __future__ import annotations

from .base import ModelPreset
from . import hunyuan_13b, tiny

PRESETS: dict[str, ModelPreset] = {p.name: p for p in (tiny.PRESET, hunyuan_13b.PRESET)}


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
