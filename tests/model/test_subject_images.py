"""Subject images reach both branches (LLaVA and the VAE) whole: padded to a square, never cropped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from polyvivid.model.fusion import SUBJECT_PAD_COLOR, TextImageFusion, square_subject_image
from polyvivid.model.pipeline import PolyVividPipeline, _image_to_tensor

RED, BLUE = (220, 20, 20), (20, 20, 220)


def cut_out(width: int, height: int) -> Image.Image:
    """A subject cut out on white: a red 'head' at the top (or left) end, blue at the other end."""
    image = Image.new("RGB", (width, height), (90, 160, 90))
    pixels = image.load()
    for y in range(height):
        for x in range(width):
            along = y / height if height >= width else x / width
            if along < 0.15:
                pixels[x, y] = RED
            elif along > 0.85:
                pixels[x, y] = BLUE
    return image


@pytest.mark.parametrize("size", [(48, 192), (192, 48)])  # a standing person; a lying guitar
def test_a_tall_or_wide_cut_out_is_padded_not_cropped(size):
    image = cut_out(*size)
    square = np.asarray(square_subject_image(image))
    assert square.shape == (192, 192, 3)
    colors = {tuple(c) for c in square.reshape(-1, 3)}
    assert RED in colors and BLUE in colors  # both ends kept
    assert tuple(square[0, 0]) == SUBJECT_PAD_COLOR and tuple(square[-1, -1]) == SUBJECT_PAD_COLOR
    square_input = Image.new("RGB", (64, 64), RED)
    assert square_subject_image(square_input).size == (64, 64)

    # The VAE branch: both ends survive the resize to the subject size.
    pixels = ((_image_to_tensor(image, 32).permute(1, 2, 0).numpy() + 1) * 127.5).round()
    reddish = (pixels[..., 0] > 150) & (pixels[..., 2] < 90)
    bluish = (pixels[..., 2] > 150) & (pixels[..., 0] < 90)
    assert reddish.any() and bluish.any()


def test_llava_sees_the_padded_square_too():
    pipe = PolyVividPipeline.from_preset("tiny")
    seen = []
    processor = pipe.image_processor

    class Recording:  # a spy around the real processor: what LLaVA's image branch is given
        def __call__(self, images, **kwargs):
            seen.extend(images)
            return processor(images, **kwargs)

    tall = cut_out(48, 192)
    TextImageFusion(pipe.text_encoder, pipe.tokenizer, Recording()).encode("A man waves", [("man", tall)])
    assert len(seen) == 1 and seen[0].size == (192, 192)
    assert np.array_equal(np.asarray(seen[0]), np.asarray(square_subject_image(tall)))
