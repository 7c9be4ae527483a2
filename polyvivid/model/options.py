"""The model's names that the API, the CLI, the model and the pipeline share, in one torch-free place.

The API (polyvivid/api, imported by the operator, which has no torch) builds its enums from these
tuples, the CLI its `choices`, and the model checks against them. Where a list has a richer home in
torch code (the injection registry in injection.py, the presets in presets/), a test ties the two:
tests/model/test_options.py.
"""

from __future__ import annotations

from typing import Literal

from .presets import PRESETS

# Paper Table 2: how subject tokens reach the video stream. Each name has a class in
# injection.INJECTION_STRATEGIES (the registry); the first is the default.
INJECTION_STRATEGIES = ("cross_attention", "adapter", "token_concat", "none")
DEFAULT_INJECTION = INJECTION_STRATEGIES[0]

# PolyVivid's own parameters, by group (PolyVividTransformer.parameter_group).
TRAINABLE_GROUPS = ("identity_injection", "lora_interaction", "lora_blocks")

# Random weights in a preset's shapes (presets/, one file per scale); `tiny` is the only one small
# enough for every evaluation model at once.
PRESET_NAMES = tuple(PRESETS)
SMOKE_PRESET = "tiny"

# The PolyVividTransformer config keys that are PolyVivid's own (not HunyuanVideo's): what a weights
# card stores, so a weights artifact rebuilds the same modules.
TRANSFORMER_OPTIONS = ("injection", "use_interaction", "use_interaction_rope", "use_llava_fusion", "interaction_block",
                       "interaction_weights", "lora_rank", "lora_alpha", "max_subjects")
# Those of them a PolyVividTraining's spec.model sets (the rest follow spec.lora or the preset).
SPEC_TRANSFORMER_OPTIONS = ("injection", "use_interaction", "use_interaction_rope", "use_llava_fusion",
                            "interaction_block")

# diffusers attention backends a service may choose (attention_dispatch.AttentionBackendName), without the
# "*_hub" ones, which download kernels from the Hugging Face Hub when first used.
ATTENTION_BACKENDS = ("native", "_native_flash", "_native_efficient", "_native_cudnn", "_native_math", "flash",
                      "_flash_3", "sage", "xformers", "flex")

# pydantic enums built from the tuples above (Literal of a tuple is the Literal of its items).
InjectionName = Literal[INJECTION_STRATEGIES]  # type: ignore[valid-type]
TrainableGroup = Literal[TRAINABLE_GROUPS]  # type: ignore[valid-type]
PresetName = Literal[PRESET_NAMES]  # type: ignore[valid-type]
AttentionBackend = Literal[ATTENTION_BACKENDS]  # type: ignore[valid-type]
