"""hunyuan-13b: the real shapes. HunyuanVideo's transformer (24 heads x 128, 20 double + 40 single
blocks), its causal 3D VAE, LLaVA-Llama-3-8B (CLIP-L/14 at 336 px: a 24x24 <image> grid) and the
CLIP-L text encoder for the pooled projection. Real weights load from paths or s3:// URIs
(`PolyVividPipeline.from_hunyuanvideo`); this preset only fixes the shapes.
"""

from .base import ModelPreset

PRESET = ModelPreset(
    name="hunyuan-13b",
    transformer=dict(
        in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
        num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
        text_embed_dim=4096, pooled_projection_dim=768, rope_axes_dim=(16, 56, 56), guidance_embeds=True,
        lora_rank=64, lora_alpha=64.0, max_subjects=4,
    ),
    vae=dict(),  # diffusers' AutoencoderKLHunyuanVideo defaults are HunyuanVideo's VAE
    llava_vision=dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768,
    ),
    llava_text=dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128320, max_position_embeddings=8192, rope_theta=500000.0,
        rms_norm_eps=1e-5,
    ),
    llava=dict(image_token_index=128257, image_seq_length=576, pad_token_id=128258,
               projector_hidden_act="gelu"),
    clip_text=dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        vocab_size=49408, max_position_embeddings=77, projection_dim=768,
    ),
    scheduler={"shift": 7.0},
)
