"""CLIP for curation: the score between a subject cut-out and its phrase (the keep/drop check), and
the image features that clique consolidation compares. Loads a transformers CLIPModel directory
(path or s3:// URI), or builds the random `tiny` preset."""

from __future__ import annotations

import torch
from PIL import Image


def tiny_clip(seed: int = 0):
    """Random CLIP in the tiny shapes, with the byte-level tokenizer (no download)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from ..model.presets.tiny import BOS_TOKEN_ID, EOS_TOKEN_ID, PAD_TOKEN_ID, VOCAB_SIZE
    from ..model.tokenizer import byte_tokenizer

    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(
        text_config=CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   vocab_size=VOCAB_SIZE, max_position_embeddings=77, bos_token_id=BOS_TOKEN_ID,
                                   eos_token_id=EOS_TOKEN_ID, pad_token_id=PAD_TOKEN_ID).to_dict(),
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=32, patch_size=8).to_dict(),
        projection_dim=16))
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model.eval(), processor, byte_tokenizer(clip=True)


class ClipScorer:
    def __init__(self, model, image_processor, tokenizer):
        self.model, self.image_processor, self.tokenizer = model, image_processor, tokenizer

    @classmethod
    def load(cls, uri: str | None = None, preset: str | None = None) -> "ClipScorer":
        if preset == "tiny":
            return cls(*tiny_clip())
        from transformers import AutoTokenizer, CLIPModel
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        from ..storage import materialize_dir

        local = materialize_dir(uri)
        return cls(CLIPModel.from_pretrained(local).eval(), CLIPImageProcessorPil.from_pretrained(local),
                   AutoTokenizer.from_pretrained(local))

    @torch.no_grad()
    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        """[n, d], unit length."""
        pixels = self.image_processor([i.convert("RGB") for i in images], return_tensors="pt").pixel_values
        out = self.model.get_image_features(pixel_values=pixels.to(self.model.device, self.model.dtype))
        features = out.pooler_output if hasattr(out, "pooler_output") else out
        return torch.nn.functional.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt",
                                max_length=self.model.config.text_config.max_position_embeddings)
        out = self.model.get_text_features(input_ids=tokens.input_ids.to(self.model.device),
                                           attention_mask=tokens.attention_mask.to(self.model.device))
        features = out.pooler_output if hasattr(out, "pooler_output") else out
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def scores(self, images: list[Image.Image], texts: list[str]) -> torch.Tensor:
        """Cosine similarity of image i with text i: [n]."""
        return (self.image_features(images) * self.text_features(texts)).sum(-1)
