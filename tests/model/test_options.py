"""The torch-free lists (polyvivid/model/options.py) agree with their torch-side homes and the API's enums."""

from typing import get_args

from polyvivid.api.service import ServedModel
from polyvivid.api.training import ModelSource, TrainingSpec
from polyvivid.model import options
from polyvivid.model.injection import INJECTION_STRATEGIES
from polyvivid.model.presets import PRESETS
from polyvivid.model.transformer import PolyVividTransformer


def _enum(model, field: str) -> tuple:
    annotation = model.model_fields[field].annotation
    args = get_args(annotation)
    literal = next((a for a in args if get_args(a)), annotation)  # X | None -> X
    return get_args(literal) or args


def test_the_api_enum_of_injection_strategies_is_the_registry():
    assert tuple(INJECTION_STRATEGIES) == options.INJECTION_STRATEGIES
    assert _enum(ModelSource, "injection") == options.INJECTION_STRATEGIES
    assert ModelSource.model_fields["injection"].default == options.DEFAULT_INJECTION == next(iter(INJECTION_STRATEGIES))


def test_presets_groups_and_options_have_one_spelling():
    assert _enum(ModelSource, "preset") == tuple(PRESETS) == _enum(ServedModel, "preset")
    assert get_args(get_args(TrainingSpec.model_fields["trainable"].annotation)[0]) == options.TRAINABLE_GROUPS
    assert PolyVividTransformer.TRAINABLE_GROUPS == options.TRAINABLE_GROUPS
    init_keys = set(PolyVividTransformer._get_init_keys(PolyVividTransformer))
    assert set(options.TRANSFORMER_OPTIONS) <= init_keys
    assert set(options.SPEC_TRANSFORMER_OPTIONS) <= set(options.TRANSFORMER_OPTIONS)
    assert set(options.SPEC_TRANSFORMER_OPTIONS) <= set(ModelSource.model_fields)


def test_each_registered_strategy_builds_what_its_class_declares():
    for name, strategy in INJECTION_STRATEGIES.items():
        model = PolyVividTransformer(num_attention_heads=2, attention_head_dim=8, num_layers=2, num_single_layers=1,
                                     num_refiner_layers=1, text_embed_dim=16, pooled_projection_dim=8,
                                     rope_axes_dim=(2, 4, 2), injection=name, lora_rank=2)
        assert model.injection_strategy is strategy
        assert (model.identity_injection is not None) == strategy.per_block, name
        if strategy.per_block:
            assert all(type(m) is strategy for m in model.identity_injection)
        adapted_video_qkv = any(n.startswith("transformer_blocks.1.attn.to_k.lora_A") for n, _ in model.named_parameters())
        assert adapted_video_qkv == bool(strategy.lora_targets), name
