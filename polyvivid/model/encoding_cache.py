"""A bounded LRU of a pipeline's conditioning inputs (LLaVA's z_T and spans, CLIP's pooled embedding, the
subjects' latents), keyed by a hash of the prompt, each subject's word and its image's pixels. A request
that comes again (the same subjects, a retried job, a seed sweep) skips LLaVA, CLIP and the VAE, and with
offloaded encoders also their trip to the GPU. Entries are kept in host memory. Each pipeline has its
own cache, so a cache is never shared between services.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
from PIL import Image


def encoding_key(prompt: str, subjects: list[tuple[str, Image.Image]]) -> str:
    digest = hashlib.sha256(prompt.encode())
    for word, image in subjects:
        digest.update(b"\0" + word.encode() + b"\0" + f"{image.mode}:{image.size}".encode() + b"\0")
        digest.update(image.tobytes())
    return digest.hexdigest()


class EncodingCache:
    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self.entries: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: str, device: torch.device) -> dict[str, torch.Tensor] | None:
        cond = self.entries.get(key)
        if cond is None:
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return {name: t.to(device) for name, t in cond.items()}

    def put(self, key: str, cond: dict[str, torch.Tensor]) -> None:
        if self.max_entries == 0:
            return
        self.entries[key] = {name: t.detach().to("cpu") for name, t in cond.items()}
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
