"""What makes a generation request runnable, checked before any model is loaded.

Torch-free on purpose: the CLI and the HTTP ingress check requests with it without importing the model.
"""

from __future__ import annotations

import re

from ..api.common import MAX_FRAMES, MAX_SIDE


class InvalidRequest(ValueError):
    """A generation request that cannot be run as given; `field` names the argument at fault."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def word_in_prompt(word: str, prompt: str) -> bool:
    """A whole word (or phrase) of the prompt, case-insensitive: "man" is not in "woman"."""
    return re.search(rf"(?<!\w){re.escape(word.strip())}(?!\w)", prompt, flags=re.IGNORECASE) is not None


def validate_request(prompt: str, words: list[str], num_frames: int, height: int, width: int,
                     max_subjects: int, spatial_multiple: int = 16) -> None:
    if not prompt.strip():
        raise InvalidRequest("prompt: must not be empty", "prompt")
    if len(words) > max_subjects:
        raise InvalidRequest(f"subjects: {len(words)} given, this model supports at most {max_subjects}", "subjects")
    for i, word in enumerate(words):
        if not word.strip():
            raise InvalidRequest("subject: the word must not be empty", f"subjects[{i}].name")
        if not word_in_prompt(word, prompt):
            raise InvalidRequest(f"subject {word!r} does not appear in the prompt", f"subjects[{i}].name")
    if num_frames < 1 or (num_frames - 1) % 4:
        raise InvalidRequest(f"num_frames: must be of the form 4k+1 (1, 5, 9, ...), got {num_frames}", "num_frames")
    if num_frames > MAX_FRAMES:
        raise InvalidRequest(f"num_frames: at most {MAX_FRAMES}, got {num_frames}", "num_frames")
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % spatial_multiple:
            raise InvalidRequest(f"{name}: must be a positive multiple of {spatial_multiple}, got {value}", name)
        if value > MAX_SIDE:
            raise InvalidRequest(f"{name}: at most {MAX_SIDE}, got {value}", name)

