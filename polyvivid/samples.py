"""Drawn sample subject images (no downloads): what `make demo` and the tests condition on."""

from __future__ import annotations

from PIL import Image, ImageDraw

SAMPLES = {
    # word: (background, drawing)
    "man": ((235, 235, 225), "man"),
    "guitar": ((225, 235, 240), "guitar"),
    "tiger": ((240, 240, 230), "tiger"),
    "dog": ((230, 240, 230), "dog"),
}


def draw_subject(word: str, size: int = 256) -> Image.Image:
    """A simple, recognisable drawing per sample word (anything else: a coloured disc)."""
    background, kind = SAMPLES.get(word, ((240, 240, 240), "disc"))
    image = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(image)
    s = size / 256
    if kind == "man":
        d.ellipse([98 * s, 30 * s, 158 * s, 90 * s], fill=(230, 190, 150))  # head
        d.rectangle([93 * s, 95 * s, 163 * s, 190 * s], fill=(40, 80, 160))  # shirt
        d.rectangle([98 * s, 190 * s, 125 * s, 250 * s], fill=(50, 50, 50))  # legs
        d.rectangle([131 * s, 190 * s, 158 * s, 250 * s], fill=(50, 50, 50))
    elif kind == "guitar":
        d.ellipse([70 * s, 130 * s, 170 * s, 230 * s], fill=(170, 90, 30))  # body
        d.ellipse([85 * s, 90 * s, 155 * s, 160 * s], fill=(170, 90, 30))
        d.ellipse([108 * s, 150 * s, 132 * s, 174 * s], fill=(30, 20, 10))  # sound hole
        d.rectangle([114 * s, 20 * s, 126 * s, 120 * s], fill=(90, 60, 30))  # neck
    elif kind == "tiger":
        d.ellipse([50 * s, 60 * s, 206 * s, 216 * s], fill=(240, 140, 30))
        for x in range(60, 200, 24):
            d.rectangle([x * s, 70 * s, (x + 8) * s, 200 * s], fill=(20, 20, 20))
    elif kind == "dog":
        d.ellipse([60 * s, 80 * s, 196 * s, 216 * s], fill=(150, 110, 70))
        d.ellipse([50 * s, 60 * s, 90 * s, 130 * s], fill=(110, 80, 50))
        d.ellipse([166 * s, 60 * s, 206 * s, 130 * s], fill=(110, 80, 50))
    else:
        d.ellipse([40 * s, 40 * s, 216 * s, 216 * s], fill=(200, 60, 90))
    return image
