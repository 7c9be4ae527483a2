"""Training inputs encoded once (train/precompute.py writes them) and read in place of the clips, so that
training never loads LLaVA, CLIP or the VAE.

Layout, under `<spec.precompute.output>/<fingerprint>/` (the fingerprint hashes everything the encodings
depend on: the base model, the dataset's manifest, the sizes, the frame windows, the dtype; another
configuration writes another directory, the same one resumes or reuses this one):

    index.json                     written last, once every sample below is there: the fingerprint's
                                   inputs, the VAE's scaling factor, and each sample's file or error
    samples/<i:08d>.safetensors    manifest sample i (one safetensors shard per sample):
        latents/<F>x<H>x<W>/<k>    the VAE posterior's parameters (mean and log-variance, [1, 2C, f, h, w])
                                   of frame window k at that size; training draws the latents from them
                                   with the sample's generator, as it would from the VAE's own posterior
        captions/<j>/<input>       the transformer's conditioning inputs for caption variant j
                                   (sampling.caption_variants): LLaVA's z_T and mask, each subject's token
                                   spans (text_positions, subject_positions), CLIP's pooled embedding
        subject_latents            the subject images' latents
      and in the header's metadata: the sample's id, its captions (JSON list, j's order) and its window
      starts per size (JSON object)
    samples/<i:08d>.error.json     why sample i cannot be used: training skips it as a raw read would

Training reads a sample the way raw training does, drawing from the same generator in the same order:
which window (sampling.pick_window), which caption (sampling.compose_caption), then the latents and the noise.
With the same seed it sees the same inputs (tests/train/test_precompute.py).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import torch

from ..storage import ArtifactStore, StorageError, open_store
from .sampling import SampleError, compose_caption, pick_window

FORMAT = "polyvivid-precomputed/v1"
INDEX = "index.json"
CONDITION_INPUTS = ("encoder_hidden_states", "encoder_attention_mask", "pooled_projections", "text_positions",
                    "subject_positions")  # per caption; subject_latents is per sample


@dataclass
class EncodedSample:
    id: str
    moments: torch.Tensor  # the VAE posterior's parameters [1, 2C, f, h, w]
    cond: dict[str, torch.Tensor]  # the transformer's conditioning inputs


def size_key(frames: int, height: int, width: int) -> str:
    return f"{frames}x{height}x{width}"


def sample_key(index: int) -> str:
    return f"samples/{index:08d}.safetensors"


def error_key(index: int) -> str:
    return f"samples/{index:08d}.error.json"


def fingerprint(inputs: dict) -> str:
    """The directory name of a configuration's encodings."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def sample_tensors(latents: dict[str, list[torch.Tensor]], captions: list[dict[str, torch.Tensor]],
                   subject_latents: torch.Tensor) -> dict[str, torch.Tensor]:
    """One sample's shard: latents {size: [window k's posterior parameters]}, captions [variant j's inputs]."""
    tensors = {f"latents/{size}/{k}": t for size, windows in latents.items() for k, t in enumerate(windows)}
    for j, cond in enumerate(captions):
        tensors.update({f"captions/{j}/{name}": cond[name] for name in CONDITION_INPUTS})
    tensors["subject_latents"] = subject_latents
    return {name: t.detach().cpu().contiguous() for name, t in tensors.items()}


class PrecomputedReader:
    """The encodings of one configuration (its index.json read), for SubjectVideoDataset.precomputed."""

    def __init__(self, uri: str, index: dict, store: ArtifactStore | None = None):
        self.uri, self.index = uri, index
        self.store = store or open_store(uri)

    @classmethod
    def open(cls, uri: str, store: ArtifactStore | None = None) -> PrecomputedReader:
        store = store or open_store(uri)
        index = json.loads(store.read_text(INDEX))
        if index.get("format") != FORMAT:
            raise StorageError(f"{uri}/{INDEX} is not a {FORMAT} index")
        return cls(uri, index, store)

    @property
    def scaling_factor(self) -> float:
        return float(self.index["scaling_factor"])

    def __getstate__(self) -> dict:  # to a loader worker: without the store's client
        return {"uri": self.uri, "index": self.index}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["uri"], state["index"])

    def read(self, index: int, record, frames: int, height: int, width: int, generator: torch.Generator) -> EncodedSample:
        """Sample `index` (its manifest `record`) at this size: the window and caption drawn from `generator`
        as raw loading draws them (sampling.pick_window, then sampling.compose_caption)."""
        entry = self.index["samples"].get(str(index))
        if entry is None:
            raise SampleError(f"not precomputed: sample {record.id} is not in {self.uri}/{INDEX}")
        if "error" in entry:
            raise SampleError(entry["error"])
        size = size_key(frames, height, width)
        tensors, meta = self._read(entry["file"], size)
        starts = meta["windows"].get(size)
        if starts is None:
            raise SampleError(f"not precomputed: sample {record.id} at {size}")
        k = pick_window(len(starts), generator)
        caption = compose_caption(record, generator)
        if caption not in meta["captions"]:
            raise SampleError(f"not precomputed: sample {record.id}'s caption (the manifest changed since)")
        j = meta["captions"].index(caption)
        cond = {name: tensors[f"captions/{j}/{name}"] for name in CONDITION_INPUTS}
        cond["subject_latents"] = tensors["subject_latents"]
        return EncodedSample(record.id, tensors[f"latents/{size}/{k}"], cond)

    def _read(self, key: str, size: str) -> tuple[dict[str, torch.Tensor], dict]:
        """The tensors of one shard that a read at `size` may need, and its metadata (lists decoded)."""
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load

        def wanted(name: str) -> bool:
            return not name.startswith("latents/") or name.startswith(f"latents/{size}/")

        try:
            local = self.store.local_path(key)
            if local is not None:  # only what this read needs comes off the disk
                with safe_open(str(local), "pt") as f:
                    meta, tensors = f.metadata(), {n: f.get_tensor(n) for n in f.keys() if wanted(n)}
            else:
                data = self.store.read_bytes(key)
                (length,) = struct.unpack("<Q", data[:8])
                meta = json.loads(data[8:8 + length]).get("__metadata__") or {}
                tensors = {n: t for n, t in load(data).items() if wanted(n)}
            return tensors, {"captions": json.loads(meta["captions"]), "windows": json.loads(meta["windows"])}
        except StorageError as e:
            raise SampleError(str(e)) from None
        except (SafetensorError, OSError, ValueError, KeyError, TypeError, struct.error) as e:
            raise SampleError(f"damaged precomputed sample {key} ({type(e).__name__})") from None
