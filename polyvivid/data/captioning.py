"""Structured captions for curation (paper section 3): a long caption, a short one, background, style,
camera, and the subject phrases, from an MLLM (Qwen2.5-VL through transformers) or from a caption
file beside the video.

Beside `clip.mp4`, a `clip.json` with {"caption": ..., "short_caption": ..., "background": ...,
"style": ..., "camera": ..., "subjects": [...]} is used as is (only `caption` is required); a
`clip.txt` gives the caption alone, and a clip whose caption names no subjects is rejected with that
reason. Training combines the fields into one caption per step (polyvivid/data/dataset.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import torch
from PIL import Image

INSTRUCTION = (
    "Describe this video. Answer with JSON only: {\"caption\": a detailed description, "
    "\"short_caption\": one sentence, \"background\": the setting, \"style\": the visual style, "
    "\"camera\": the shot and camera movement, \"subjects\": the main people, animals and objects, each a "
    "short noun phrase used in the caption}."
)
# the optional text fields of a structured caption, as the manifest stores them
CAPTION_FIELDS = ("short_caption", "background", "style", "camera")


@dataclass
class StructuredCaption:
    caption: str
    short_caption: str = ""
    subjects: list[str] = field(default_factory=list)
    background: str = ""
    style: str = ""
    camera: str = ""

    def problems(self) -> list[str]:
        """Why this caption cannot make a training sample (empty when it can)."""
        out = []
        if not self.caption.strip():
            out.append("empty caption")
        if not self.subjects:
            out.append("no subject phrases")
        missing = [s for s in self.subjects if not re.search(rf"(?<!\w){re.escape(s)}(?!\w)", self.caption, re.I)]
        if missing:
            out.append(f"subject phrases not in the caption: {missing}")
        if len({s.lower() for s in self.subjects}) != len(self.subjects):
            out.append("repeated subject phrases")
        return out


def parse_structured(text: str) -> StructuredCaption | None:
    """The first JSON object in an MLLM's answer, as a StructuredCaption (None if there is none)."""
    for match in re.finditer(r"\{.*?\}", text, re.S):
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get("caption"), str):
            subjects = [s.strip() for s in data.get("subjects", []) if isinstance(s, str) and s.strip()]
            fields = {k: data[k].strip() for k in CAPTION_FIELDS if isinstance(data.get(k), str)}
            return StructuredCaption(data["caption"].strip(), subjects=subjects, **fields)
    return None


def sidecar_caption(files: dict[str, bytes]) -> StructuredCaption | None:
    """From the caption files beside a video: {"json": bytes} or {"txt": bytes}."""
    if "json" in files:
        parsed = parse_structured(files["json"].decode("utf-8", "replace"))
        if parsed is not None:
            return parsed
    if "txt" in files:
        return StructuredCaption(files["txt"].decode("utf-8", "replace").strip())
    return None


def tiny_captioner(seed: int = 0):
    """Random Qwen2.5-VL in tiny shapes with the byte-level tokenizer (no download)."""
    from tokenizers import AddedToken
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    from ..model.tokenizer import byte_tokenizer

    tokenizer = byte_tokenizer()
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True) for t in specials]})
    ids = dict(zip(specials, tokenizer.convert_tokens_to_ids(specials)))
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         eos_token_id=ids["<|im_end|>"], pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id),
        image_token_id=ids["<|image_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], video_token_id=ids["<|image_pad|>"],
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56)
    return model, processor, tokenizer


class Captioner:
    """Asks the MLLM for a structured caption of a few frames of a clip."""

    def __init__(self, model, image_processor, tokenizer, max_new_tokens: int = 128):
        self.model, self.image_processor, self.tokenizer = model, image_processor, tokenizer
        self.max_new_tokens = max_new_tokens

    @classmethod
    def load(cls, uri: str | None = None, preset: str | None = None, max_new_tokens: int = 128) -> "Captioner":
        if preset == "tiny":
            return cls(*tiny_captioner(), max_new_tokens=max_new_tokens)
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        from ..storage import materialize_dir

        local = materialize_dir(uri)
        processor = AutoProcessor.from_pretrained(local)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(local).eval()
        return cls(model, processor.image_processor, processor.tokenizer, max_new_tokens)

    def _prompt_ids(self, grids: torch.Tensor) -> list[int]:
        merge = self.model.config.vision_config.spatial_merge_size ** 2
        image_id = self.model.config.image_token_id
        ids = self.tokenizer("<|im_start|>user\n", add_special_tokens=False).input_ids
        for thw in grids:
            ids += [self.model.config.vision_start_token_id] + [image_id] * int(thw.prod() // merge)
            ids += [self.model.config.vision_end_token_id]
        ids += self.tokenizer(f"{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).input_ids
        return ids

    @torch.no_grad()
    def caption(self, frames: list[Image.Image]) -> tuple[StructuredCaption | None, str]:
        """(the parsed caption or None, the raw answer)."""
        images = self.image_processor([f.convert("RGB") for f in frames], return_tensors="pt")
        ids = torch.tensor([self._prompt_ids(images["image_grid_thw"])], device=self.model.device)
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  pixel_values=images["pixel_values"].to(self.model.device, self.model.dtype),
                                  image_grid_thw=images["image_grid_thw"].to(self.model.device),
                                  max_new_tokens=self.max_new_tokens, do_sample=False)
        answer = self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        return parse_structured(answer), answer
