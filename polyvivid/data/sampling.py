"""What one training sample reads, drawn from its own generator: which frame window (window_starts,
pick_window) and which caption (compose_caption). Raw loading (loader.py) and precomputed inputs
(precomputed.py) draw alike, in the same order, so both train on the same inputs; precompute encodes
every outcome (window_starts, caption_variants).
"""

from __future__ import annotations

import numpy as np
import torch

from ..model.request import word_in_prompt
from .dataset import SampleRecord

SHORT_CLIP = "shorter than the stage's frames"  # the skip reason (progress.json's samples_skipped)
SHORT_CAPTION_CHANCE = 0.5  # compose_caption: the short caption instead of the long one
EXTRA_SENTENCE_CHANCE = 0.5  # compose_caption: each of CAPTION_EXTRAS appended
CAPTION_EXTRAS = ("background", "style", "camera")


class SampleError(Exception):
    """One sample cannot be used; the message says why."""


def window_starts(total: int, wanted: int, windows: int = 0) -> list[int]:
    """Where a window of `wanted` frames may start in a clip of `total`: anywhere (windows 0), or at one of
    `windows` evenly spaced starts, first and last included (fewer when the clip has fewer). A finite set is
    what lets precompute encode every window training can pick (dataset.frameWindows). Frames are never
    repeated (that would be slow motion the clip never had), so a clip shorter than the window has none."""
    if total < wanted:
        raise SampleError(f"{SHORT_CLIP}: {total} frames, {wanted} wanted")
    last = total - wanted
    if windows == 0 or last + 1 <= windows:
        return list(range(last + 1))
    if windows == 1:
        return [0]
    return sorted({round(i * last / (windows - 1)) for i in range(windows)})


def pick_frames(total: int, wanted: int, generator: torch.Generator, windows: int = 0) -> np.ndarray:
    """A contiguous window of `wanted` frames at a random one of window_starts (one draw from `generator`)."""
    starts = window_starts(total, wanted, windows)
    start = starts[pick_window(len(starts), generator)]
    return np.arange(start, start + wanted)


def pick_window(count: int, generator: torch.Generator) -> int:
    """Which of `count` windows a sample reads: the one draw raw and precomputed training share."""
    return int(torch.randint(0, count, (1,), generator=generator))


def compose_caption(record: SampleRecord, generator: torch.Generator) -> str:
    """The caption one training sample reads, combined from the record's structured caption for
    diversity (paper A.3: the structured captions are combined during training):

    - the short caption with probability SHORT_CAPTION_CHANCE (0.5), only when it names every
      subject's word (the fusion template finds each subject by its word in the prompt); else the
      long caption;
    - then each of background, style and camera the record has, as a sentence of its own, with
      probability EXTRA_SENTENCE_CHANCE (0.5) each, in that order.

    The paper gives no probabilities; these are ours. A record with only `caption` reads it unchanged.
    It always takes four draws from `generator`, whatever the record holds.
    """
    draws = torch.rand(1 + len(CAPTION_EXTRAS), generator=generator).tolist()
    extras = [field for field, draw in zip(CAPTION_EXTRAS, draws[1:]) if draw < EXTRA_SENTENCE_CHANCE]
    return _caption(record, draws[0] < SHORT_CAPTION_CHANCE, extras)


def caption_variants(record: SampleRecord) -> list[str]:
    """Every caption compose_caption can give this record, each once (what precompute encodes)."""
    variants = []
    for short in (False, True):
        for chosen in range(2 ** len(CAPTION_EXTRAS)):
            text = _caption(record, short, [f for i, f in enumerate(CAPTION_EXTRAS) if chosen >> i & 1])
            if text not in variants:
                variants.append(text)
    return variants


def _caption(record: SampleRecord, short: bool, extras: list[str]) -> str:
    text = record.short_caption if short and _short_names_all(record) else record.caption
    for field in CAPTION_EXTRAS:
        extra = getattr(record, field)
        if extra is not None and field in extras:
            text = f"{_end_sentence(text)} {extra[0].upper()}{extra[1:]}"
    return text


def _short_names_all(record: SampleRecord) -> bool:
    short = record.short_caption
    return short is not None and all(word_in_prompt(s.word, short) for s in record.subjects)


def _end_sentence(text: str) -> str:
    text = text.rstrip()
    return text if text.endswith((".", "!", "?")) else f"{text}."
