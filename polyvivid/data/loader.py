"""Reads the dataset for training: decodes clips with PyAV, samples 4k+1 frames, resizes and crops
to the stage's resolution, keeps at most the stage's number of subjects, and shards samples over ranks.

Which sample a rank reads at a step is a pure function of (seed, global position), so a resumed run
reads exactly what an uninterrupted one would. An unreadable sample is skipped (counted and logged)
and the next readable one in the dataset takes its place.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..images import ImageRejected, read_image
from ..storage import ArtifactStore, StorageError, open_store
from .dataset import SampleRecord, read_manifest

log = logging.getLogger(__name__)


class SampleError(Exception):
    """One sample cannot be used; the message says why."""


@dataclass
class TrainSample:
    id: str
    video: torch.Tensor  # [3, F, H, W] in [-1, 1]
    caption: str
    subjects: list[tuple[str, Image.Image]]


def decode_frames(data: bytes) -> np.ndarray:
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, ValueError, IndexError) as e:
        raise SampleError(f"undecodable video ({type(e).__name__})") from None
    if not frames:
        raise SampleError("video has no frames")
    return np.stack(frames)


def pick_frames(total: int, wanted: int, generator: torch.Generator) -> np.ndarray:
    """A contiguous window of `wanted` frames at a random start; a short clip is stretched."""
    if total >= wanted:
        start = int(torch.randint(0, total - wanted + 1, (1,), generator=generator))
        return np.arange(start, start + wanted)
    return np.linspace(0, total - 1, wanted).round().astype(int)


def resize_crop(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[F, 3, h, w] -> [F, 3, height, width]: centre crop to the aspect ratio, then resize."""
    _, _, h, w = video.shape
    if h * width > w * height:  # too tall
        new_h = round(w * height / width)
        top = (h - new_h) // 2
        video = video[:, :, top:top + new_h]
    else:
        new_w = round(h * width / height)
        left = (w - new_w) // 2
        video = video[:, :, :, left:left + new_w]
    return F.interpolate(video, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


class SubjectVideoDataset:
    def __init__(self, uri: str, store: ArtifactStore | None = None):
        self.uri = uri
        self.store = store or open_store(uri)
        try:
            self.samples, rejected = read_manifest(self.store)
        except StorageError as e:
            raise SampleError(f"cannot read the dataset manifest: {e}") from None
        for line, reason in rejected:
            log.warning("manifest line %d skipped: %s", line, reason)
        if not self.samples:
            raise SampleError(f"{uri}: the manifest has no valid samples")
        # counted with the samples that fail to load (progress.json's samples_skipped)
        self.skipped: Counter[str] = Counter({"invalid manifest line": len(rejected)} if rejected else {})
        self._bad: set[int] = set()
        self._orders: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def index_at(self, position: int, seed: int) -> int:
        """The sample at a global position: a fresh seeded permutation every epoch."""
        epoch, offset = divmod(position, len(self.samples))
        if epoch not in self._orders:
            self._orders = {epoch: torch.randperm(len(self.samples), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))}
        return int(self._orders[epoch][offset])

    def load(self, record: SampleRecord, frames: int, height: int, width: int, max_subjects: int,
             generator: torch.Generator) -> TrainSample:
        try:
            clip = decode_frames(self.store.read_bytes(record.video))
            subjects = []
            for subject in record.subjects:
                subjects.append((subject.word, read_image(self.store.read_bytes(subject.image))[0]))
        except StorageError as e:
            raise SampleError(str(e)) from None
        except ImageRejected as e:
            raise SampleError(f"unreadable subject image: {e}") from None
        chosen = pick_frames(len(clip), frames, generator)
        video = torch.from_numpy(clip[chosen]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        video = resize_crop(video, height, width).clamp(-1, 1).permute(1, 0, 2, 3).contiguous()
        if len(subjects) > max_subjects:
            keep = sorted(torch.randperm(len(subjects), generator=generator)[:max_subjects].tolist())
            subjects = [subjects[i] for i in keep]
        return TrainSample(record.id, video, record.caption, subjects)

    def get(self, position: int, seed: int, frames: int, height: int, width: int, max_subjects: int,
            generator: torch.Generator) -> TrainSample:
        """The sample at `position`, or the next readable one after it if it is broken."""
        index = self.index_at(position, seed)
        for attempt in range(len(self.samples)):
            candidate = (index + attempt) % len(self.samples)
            if candidate in self._bad:
                continue
            record = self.samples[candidate]
            try:
                return self.load(record, frames, height, width, max_subjects, generator)
            except SampleError as e:
                self._bad.add(candidate)
                self.skipped[str(e).split(":")[0]] += 1
                log.warning("sample %s (%s) skipped: %s", record.id, record.video, e)
        raise SampleError(f"{self.uri}: no readable sample left")
