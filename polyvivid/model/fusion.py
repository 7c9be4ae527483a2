"""VLLM text-image fusion (paper 4.1) and the subject images' VAE embeddings (4.2).

LLaVA reads a structured prompt,
    "PROMPT <SEP> The man looks like <image>. The guitar looks like <image>."
inside HunyuanVideo's chat template, whose system prefix and assistant suffix are cropped from the
result as HunyuanVideo-I2V does. <SEP> is "the special token marking the end of a dialogue round":
the tokenizer's end-of-turn token, <|eot_id|> for Llama-3 (README "Choices" compares the template
with HunyuanVideo-I2V's). Its hidden states z_T hold the <text> tokens and, in reading
order, each subject's run of <image> tokens. `encode` also returns which positions are which, as
the `text_lengths` / `grids` that `rope.interaction_positions` takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from .rope import interaction_positions

# <SEP>: Llama-3's end-of-turn token (LLaVA-Llama-3's tokenizer and the tiny byte tokenizer both have
# it); an MLLM with another chat format passes its own to TextImageFusion.
END_OF_TURN = "<|eot_id|>"
SYSTEM_PREFIX = (
    "<|start_header_id|>system<|end_header_id|>\n\n"
    "Describe the video by detailing the following aspects according to the reference images: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n"
)
ASSISTANT_SUFFIX = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
# HunyuanVideo reads the text encoder's third-to-last hidden state.
HIDDEN_STATE_SKIP = 2
# Subject images are padded to a square, never cropped: a tall cut-out of a standing person keeps its
# head. White, the background curation cuts subjects out on (data/segmentation.cut_out).
SUBJECT_PAD_COLOR = (255, 255, 255)


def square_subject_image(image: Image.Image) -> Image.Image:
    """The whole image, centred on a square canvas of SUBJECT_PAD_COLOR (both branches: LLaVA and the VAE)."""
    image = image.convert("RGB")
    side = max(image.size)
    if image.width == image.height:
        return image
    canvas = Image.new("RGB", (side, side), SUBJECT_PAD_COLOR)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def fusion_text(prompt: str, words: list[str], with_images: bool = True, separator: str = END_OF_TURN) -> str:
    """The user turn LLaVA reads: the prompt, the end-of-turn separator, one sentence per subject."""
    if not with_images or not words:
        return prompt
    sentences = " ".join(f"The {word} looks like <image>." for word in words)
    return f"{prompt}{separator}{sentences}"


@dataclass
class FusedPrompt:
    embeds: torch.Tensor  # [1, L, D] z_T
    mask: torch.Tensor  # [1, L]
    text_lengths: list[int]  # <text> tokens before each image, then after the last
    grids: list[tuple[int, int]]  # each subject's <image> token grid (empty without fusion)
    text_positions: torch.Tensor  # [L, 3] interaction RoPE positions of z_T
    subject_positions: torch.Tensor  # [n * h * w, 3] positions of the subjects' VAE tokens


def image_grid(llava_config) -> int:
    """Side of LLaVA's <image> token grid (24 for CLIP-L/14 at 336 px)."""
    vision = llava_config.vision_config
    return vision.image_size // vision.patch_size


class TextImageFusion:
    """Runs LLaVA over the structured prompt; holds no weights of its own."""

    def __init__(self, text_encoder, tokenizer, image_processor, separator: str = END_OF_TURN):
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        if len(self._ids(separator)) != 1:
            raise ValueError(f"the fusion separator {separator!r} is not one token of this tokenizer: give its "
                             "end-of-turn token")
        self.separator = separator
        self.grid = image_grid(text_encoder.config)
        self.image_token_id = text_encoder.config.image_token_id

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def encode(self, prompt: str, subjects: list[tuple[str, Image.Image]], with_images: bool = True) -> FusedPrompt:
        words = [w for w, _ in subjects]
        user = fusion_text(prompt, words, with_images, self.separator)
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        prefix = bos + self._ids(SYSTEM_PREFIX)
        user_ids = self._ids(user)
        suffix = self._ids(ASSISTANT_SUFFIX)

        # Expand each <image> into its run of grid*grid image tokens; note the text lengths between.
        n_image_tokens = self.grid * self.grid
        expanded, text_lengths, run = [], [], 0
        for token in user_ids:
            if token == self.image_token_id:
                expanded += [token] * n_image_tokens
                text_lengths.append(run)
                run = 0
            else:
                expanded.append(token)
                run += 1
        text_lengths.append(run)
        n_images = len(text_lengths) - 1
        expected_images = len(subjects) if with_images else 0
        if n_images != expected_images:
            raise ValueError(f"the prompt must not contain the image token itself ({n_images} found, "
                             f"{expected_images} subjects)")

        device = self.text_encoder.device
        input_ids = torch.tensor([prefix + expanded + suffix], device=device)
        pixel_values = None
        if n_images:
            images = [square_subject_image(img) for _, img in subjects]  # the processor's crop then keeps all
            pixel_values = self.image_processor(images, return_tensors="pt").pixel_values.to(
                device=device, dtype=self.text_encoder.dtype)
        hidden = self.text_encoder(input_ids=input_ids, pixel_values=pixel_values,
                                   output_hidden_states=True).hidden_states[-(HIDDEN_STATE_SKIP + 1)]
        z_t = hidden[:, len(prefix):len(prefix) + len(expanded)]

        grids = [(self.grid, self.grid)] * len(subjects)
        stream, vae = interaction_positions(text_lengths + [0] * (len(subjects) - n_images), grids)
        if not n_images:
            # No LLaVA image tokens in z_T: keep the text positions only.
            stream = stream[: len(expanded)]
        return FusedPrompt(
            embeds=z_t, mask=torch.ones(z_t.shape[:2], dtype=torch.long, device=device),
            text_lengths=text_lengths, grids=grids if n_images else [], text_positions=stream,
            subject_positions=vae,
        )


@torch.no_grad()
def encode_subject_images(vae, images: torch.Tensor) -> torch.Tensor:
    """[n, 3, H, W] in [-1, 1] -> [n, C, H/8, W/8] clean latents (each image a one-frame video)."""
    latents = vae.encode(images.unsqueeze(2).to(vae.device, vae.dtype)).latent_dist.mode()
    return latents[:, :, 0] * vae.config.scaling_factor
