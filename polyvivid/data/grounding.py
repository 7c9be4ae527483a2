"""Phrase grounding for curation with Florence-2 (`<CAPTION_TO_PHRASE_GROUNDING>`): one box per
subject phrase on a sampled frame.

Florence-2 answers "phrase<loc_x1><loc_y1><loc_x2><loc_y2>", coordinates quantised to 1,000 bins.
We decode that answer under a constraint: the phrase is forced, then each of the four coordinates is
the most likely <loc_*> token. A strong model puts its box there anyway; the constraint keeps every
answer well-formed and gives a score (the coordinates' mean log-probability) to compare boxes with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

TASK_PROMPT = "Locate the phrases in the caption: {}"
LOC_BINS = 1000


@dataclass
class Box:
    x1: float
    y1: float
    x2: float
    y2: float
    score: float  # mean log-probability of the four coordinates

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]


def tiny_florence2(seed: int = 0):
    """Random Florence-2 in tiny shapes: byte-level tokenizer plus <loc_*> tokens (no download)."""
    from tokenizers import AddedToken
    from transformers import Florence2Config, Florence2ForConditionalGeneration
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from ..model.tokenizer import byte_tokenizer

    tokenizer = byte_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken(f"<loc_{i}>", special=True)
                                                                for i in range(LOC_BINS)]})
    torch.manual_seed(seed)
    config = Florence2Config(
        vision_config=dict(depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
                           patch_prenorm=[False, True], embed_dim=[16, 32], num_heads=[2, 2], num_groups=[2, 2],
                           window_size=4, projection_dim=32, max_temporal_embeddings=4, max_position_embeddings=16),
        text_config=dict(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                         decoder_ffn_dim=64, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         decoder_start_token_id=tokenizer.eos_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    processor = CLIPImageProcessorPil(size={"height": 64, "width": 64}, do_center_crop=False,
                                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return Florence2ForConditionalGeneration(config).eval(), processor, tokenizer


class Grounder:
    def __init__(self, model, image_processor, tokenizer):
        self.model, self.image_processor, self.tokenizer = model, image_processor, tokenizer
        self.loc_ids = torch.tensor(tokenizer.convert_tokens_to_ids([f"<loc_{i}>" for i in range(LOC_BINS)]))
        if (self.loc_ids == tokenizer.unk_token_id).any() if tokenizer.unk_token_id is not None else False:
            raise ValueError("this tokenizer has no <loc_*> tokens: not a Florence-2 tokenizer")

    @classmethod
    def load(cls, uri: str | None = None, preset: str | None = None) -> "Grounder":
        if preset == "tiny":
            return cls(*tiny_florence2())
        from transformers import AutoProcessor, Florence2ForConditionalGeneration

        from ..storage import materialize_dir

        local = materialize_dir(uri)
        model = Florence2ForConditionalGeneration.from_pretrained(local).eval()
        if (local / "processor_config.json").exists():
            processor = AutoProcessor.from_pretrained(local)
            return cls(model, processor.image_processor, processor.tokenizer)
        # A directory with the image processor and tokenizer files but no Florence2Processor.
        from transformers import AutoTokenizer
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        return cls(model, CLIPImageProcessorPil.from_pretrained(local), AutoTokenizer.from_pretrained(local))

    @torch.no_grad()
    def ground(self, image: Image.Image, phrase: str) -> Box:
        """The most likely box of `phrase` in `image`, in the image's pixel coordinates."""
        from transformers.modeling_outputs import BaseModelOutput

        model, device = self.model, self.model.device
        pixels = self.image_processor([image.convert("RGB")], return_tensors="pt").pixel_values.to(device, model.dtype)
        n_image = model.get_image_features(pixel_values=pixels).pooler_output.shape[1]
        prompt = self.tokenizer(TASK_PROMPT.format(phrase), add_special_tokens=False).input_ids
        input_ids = torch.tensor([[model.config.image_token_id] * n_image + prompt], device=device)
        text = model.config.text_config
        decoded = [text.decoder_start_token_id, text.bos_token_id] + self.tokenizer(
            phrase, add_special_tokens=False).input_ids
        encoder = None
        coords, logps = [], []
        loc_ids = self.loc_ids.to(device)
        for step in range(4):
            out = model(input_ids=input_ids, pixel_values=pixels if encoder is None else None,
                        encoder_outputs=encoder, decoder_input_ids=torch.tensor([decoded], device=device))
            encoder = BaseModelOutput(last_hidden_state=out.encoder_last_hidden_state)
            logprobs = out.logits[0, -1].float().log_softmax(-1)[loc_ids]
            if step >= 2:  # x2 > x1 and y2 > y1: a box, not a line or a point
                logprobs[: coords[step - 2] + 1] = float("-inf")
            best = int(logprobs.argmax())
            coords.append(best)
            logps.append(float(logprobs[best]))
            decoded.append(int(loc_ids[best]))
        x1, y1, x2, y2 = coords
        w, h = image.size
        # bin i covers [i, i+1) / 1000 of the side
        return Box(x1 * w / LOC_BINS, y1 * h / LOC_BINS, (x2 + 1) * w / LOC_BINS, (y2 + 1) * h / LOC_BINS,
                   sum(logps) / 4)
