"""tiny: random-initialised, every component a few hundred kB; a 4-step 64x64x9 video in ~1 s on CPU.

The tokenizer is byte-level (any text, no vocabulary file to download). `image_token_id` and the
special tokens are fixed by `polyvivid.model.tokenizer.byte_tokenizer`.
"""

from .base import ModelPreset

# byte_tokenizer(): 256 byte tokens, then 7 special tokens; <image> is 261.
VOCAB_SIZE = 263
IMAGE_TOKEN_ID = 261
PAD_TOKEN_ID = 262
BOS_TOKEN_ID, EOS_TOKEN_ID = 256, 257

PRESET = ModelPreset(
    name="tiny",
    transformer=dict(
        in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=32, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
        text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(8, 12, 12), guidance_embeds=True,
        lora_rank=4, lora_alpha=4.0, max_subjects=4,
    ),
    vae=dict(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(16, 16, 32, 32),
        layers_per_block=1, norm_num_groups=8,
    ),
    # 32 px / patch 8: a 4x4 <image> grid, so subject images go to the VAE at 4 * 2 * 8 = 64 px.
    llava_vision=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=32,
    ),
    llava_text=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=VOCAB_SIZE, max_position_embeddings=1024,
        bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID, pad_token_id=PAD_TOKEN_ID,
    ),
    llava=dict(image_token_index=IMAGE_TOKEN_ID, image_seq_length=16, pad_token_id=PAD_TOKEN_ID,
               projector_hidden_act="gelu"),
    clip_text=dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        vocab_size=VOCAB_SIZE, max_position_embeddings=77, projection_dim=16,
        bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID, pad_token_id=PAD_TOKEN_ID,
    ),
    scheduler={"shift": 7.0},
)
