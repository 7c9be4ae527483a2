"""Phrase grounding with Florence-2's `<CAPTION_TO_PHRASE_GROUNDING>`: where each subject phrase of a
caption is in an image, or that it is not there.

The prompt is Florence2Processor's for that task, with the whole caption as its input:
    encoder: <image tokens> <s>Locate the phrases in the caption: {caption}</s>
Florence-2 answers with the caption's groundable phrases, each followed by its box:
    "a man in red<loc_x1><loc_y1><loc_x2><loc_y2>a guitar<loc_..>...", coordinates in 1,000 bins.
To ground one phrase we force the answer to start with that phrase (the caption's own words, as the
captioner gives them) and read what the model does next. Because the caption is in the prompt, the model
can tell "the man in red" from "the woman" in the same frame; a phrase that is forced out of its place in
the answer (not the first) is a small departure from what it was trained on.

Found or not: right after a phrase the model either opens a box (a <loc_*> token), ends the answer, or
keeps writing. The probability mass it puts on the 1,000 <loc_*> tokens there, P(box | image, caption,
phrase), is the phrase's score: the model's own probability that this phrase has a box in this image.
A phrase is found when that is at least `MIN_GROUNDING_SCORE`; only then is its box decoded, each
coordinate the most likely <loc_*> token (x2 > x1, y2 > y1 enforced), so a missing subject never gets
a forced box. The coordinates' mean log-probability is kept too: how sure the box is, not whether it
exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

# a phrase is found when the model more likely than not opens a box after it: curation's
# spec.grounding.minScore and DINO-sim's absent frames default to it (its home: the torch-free API)
from ..api.curation import MIN_GROUNDING_SCORE

TASK_PROMPT = "Locate the phrases in the caption: {}"
LOC_BINS = 1000


@dataclass(frozen=True)
class Grounding:
    """One phrase in one image."""

    phrase: str
    score: float  # P(a <loc_*> token right after the phrase), 0..1
    found: bool  # score >= the grounder's min_score
    box: list[float] | None = None  # [x1, y1, x2, y2] in the image's pixels; only when found
    box_logprob: float | None = None  # mean log-probability of the box's four coordinates


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
    def __init__(self, model, image_processor, tokenizer, min_score: float = MIN_GROUNDING_SCORE):
        self.model, self.image_processor, self.tokenizer = model, image_processor, tokenizer
        self.min_score = min_score
        self.loc_ids = torch.tensor(tokenizer.convert_tokens_to_ids([f"<loc_{i}>" for i in range(LOC_BINS)]))
        if tokenizer.unk_token_id is not None and (self.loc_ids == tokenizer.unk_token_id).any():
            raise ValueError("this tokenizer has no <loc_*> tokens: not a Florence-2 tokenizer")

    @classmethod
    def load(cls, uri: str | None = None, preset: str | None = None,
             min_score: float = MIN_GROUNDING_SCORE) -> "Grounder":
        if preset == "tiny":
            return cls(*tiny_florence2(), min_score=min_score)
        from transformers import AutoProcessor, Florence2ForConditionalGeneration

        from ..storage import materialize_dir

        local = materialize_dir(uri)
        model = Florence2ForConditionalGeneration.from_pretrained(local).eval()
        if (local / "processor_config.json").exists():
            processor = AutoProcessor.from_pretrained(local)
            return cls(model, processor.image_processor, processor.tokenizer, min_score)
        # A directory with the image processor and tokenizer files but no Florence2Processor.
        from transformers import AutoTokenizer
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        return cls(model, CLIPImageProcessorPil.from_pretrained(local), AutoTokenizer.from_pretrained(local),
                   min_score)

    def prompt_ids(self, caption: str) -> list[int]:
        """The encoder's text after the image tokens, as Florence2Processor builds it: <s>prompt</s>."""
        t = self.tokenizer
        return [t.bos_token_id] + t(TASK_PROMPT.format(caption), add_special_tokens=False).input_ids + [t.eos_token_id]

    def answer_prefix(self, phrase: str) -> list[int]:
        """The decoder's forced start: </s><s> then the phrase, as the answer's first phrase."""
        ids = self.tokenizer(phrase.strip(), add_special_tokens=False).input_ids
        if not ids:
            raise ValueError(f"cannot ground an empty phrase: {phrase!r}")
        text = self.model.config.text_config
        return [text.decoder_start_token_id, text.bos_token_id] + ids

    @torch.no_grad()
    def ground(self, image: Image.Image, phrases: list[str], caption: str | None = None) -> list[Grounding]:
        """Each phrase of `caption` in `image` (one Grounding per phrase, in order). Without a caption the
        phrases joined are the caption."""
        from transformers.modeling_outputs import BaseModelOutput

        if isinstance(phrases, str):
            raise TypeError(f"ground() takes a list of phrases, got the string {phrases!r}")
        model, device = self.model, self.model.device
        caption = caption if caption is not None else ", ".join(phrases)
        # Image and caption are encoded once and shared by every phrase (Florence2Model.forward's merge).
        pixels = self.image_processor([image.convert("RGB")], return_tensors="pt").pixel_values.to(device, model.dtype)
        image_embeds = model.get_image_features(pixel_values=pixels).pooler_output
        text_embeds = model.get_input_embeddings()(torch.tensor([self.prompt_ids(caption)], device=device))
        encoder = BaseModelOutput(last_hidden_state=model.model.get_encoder()(
            inputs_embeds=torch.cat([image_embeds.to(text_embeds.dtype), text_embeds], dim=1)).last_hidden_state)
        loc_ids = self.loc_ids.to(device)

        def next_logprobs(decoded: list[int]) -> torch.Tensor:
            out = model(encoder_outputs=encoder, decoder_input_ids=torch.tensor([decoded], device=device))
            return out.logits[0, -1].float().log_softmax(-1)

        results = []
        for phrase in phrases:
            decoded = self.answer_prefix(phrase)
            logprobs = next_logprobs(decoded)
            score = float(logprobs[loc_ids].exp().sum())
            if score < self.min_score:
                results.append(Grounding(phrase, score, found=False))
                continue
            coords, logps = [], []
            for step in range(4):
                if step:
                    logprobs = next_logprobs(decoded)
                loc_logprobs = logprobs[loc_ids]
                if step >= 2:  # x2 > x1 and y2 > y1: a box, not a line or a point
                    loc_logprobs[: coords[step - 2] + 1] = float("-inf")
                best = int(loc_logprobs.argmax())
                coords.append(best)
                logps.append(float(loc_logprobs[best]))
                decoded.append(int(loc_ids[best]))
            x1, y1, x2, y2 = coords
            w, h = image.size
            # bin i covers [i, i+1) / 1000 of the side
            box = [x1 * w / LOC_BINS, y1 * h / LOC_BINS, (x2 + 1) * w / LOC_BINS, (y2 + 1) * h / LOC_BINS]
            results.append(Grounding(phrase, score, found=True, box=box, box_logprob=sum(logps) / 4))
        return results
