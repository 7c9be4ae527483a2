"""Reads the dataset for training: decodes a window of the stage's frames with PyAV, scaled as they are
decoded and cropped to the stage's resolution, composes the caption (sampling.py draws both), and shards
samples over ranks; or reads what precompute encoded instead (precomputed.py).

Each stage part reads a view of the dataset (stage_view): the samples with the stage's number of
subjects and enough frames. Which sample of the view a rank reads at a step, its frame window and
its caption are pure functions of (seed, global position), so a resumed run reads exactly what an
uninterrupted one would. An unreadable sample is skipped (counted by reason and logged) and the next
readable one in the view takes its place.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import signal
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..api.training import Stage
from ..images import ImageRejected, read_image
from ..processes import die_with_parent
from ..storage import ArtifactStore, StorageError, open_store
from .dataset import SampleRecord, read_manifest
from .precomputed import EncodedSample, PrecomputedReader
from .sampling import (  # noqa: F401  (SampleError, SHORT_CLIP, ...: re-exported, training's data is read here)
    SHORT_CLIP, SampleError, caption_variants, compose_caption, pick_frames, window_starts,
)

log = logging.getLogger(__name__)


@dataclass
class TrainSample:
    id: str
    video: torch.Tensor  # [3, F, H, W] in [-1, 1]
    caption: str
    subjects: list[tuple[str, Image.Image]]


def clip_tensor(clip: np.ndarray) -> torch.Tensor:
    """Decoded frames [F, H, W, 3] uint8 as the VAE takes them: [3, F, H, W] in [-1, 1]."""
    return torch.from_numpy(clip).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0).contiguous()


def cover_size(h: int, w: int, height: int, width: int) -> tuple[int, int]:
    """(h', w'): the frame scaled, aspect kept, to the smallest size that covers height x width."""
    scale = max(height / h, width / w)
    return max(height, round(h * scale)), max(width, round(w * scale))


def decode_window(source: bytes | str, frames: int, height: int, width: int, generator: torch.Generator,
                  num_frames: int | None = None, windows: int = 0) -> np.ndarray:
    """`frames` contiguous frames (pick_frames, from `generator`) of an mp4 (bytes, or a local path, which
    is streamed) at height x width, [F, H, W, 3] uint8: FFmpeg's swscale scales each frame as it is decoded
    (area filter) to cover the target, and the centre is cut out. Frames before the window are decoded but
    not converted; decoding stops at its end. num_frames: the clip's length when known (the manifest's),
    else the container's count. windows: see window_starts."""
    with _open_clip(source, num_frames) as (container, stream, total):
        start = int(pick_frames(total, frames, generator, windows)[0])
        return _decode_scaled(container, stream, start, frames, height, width)


def decode_windows(source: bytes | str, frames: int, height: int, width: int, windows: int,
                   num_frames: int | None = None) -> tuple[list[int], np.ndarray]:
    """Every window decode_window can pick (window_starts): (their starts, the frames from the first start
    to the last window's end [N, H, W, 3], window k being frames[starts[k] - starts[0]:][:frames]). One decode
    for all of them; what precompute encodes."""
    with _open_clip(source, num_frames) as (container, stream, total):
        starts = window_starts(total, frames, windows)
        return starts, _decode_scaled(container, stream, starts[0], starts[-1] - starts[0] + frames, height, width)


@contextlib.contextmanager
def _open_clip(source: bytes | str, num_frames: int | None):
    """(container, its video stream, its frame count) of an mp4; opening errors become SampleError."""
    import av

    try:
        container = av.open(source if isinstance(source, str) else io.BytesIO(source))
    except (av.error.FFmpegError, ValueError) as e:
        raise SampleError(f"undecodable video ({type(e).__name__})") from None
    with container:
        try:
            stream = container.streams.video[0]
            total = num_frames or stream.frames
            if not total:  # no count anywhere: count by decoding, then start again
                total = sum(1 for _ in container.decode(stream))
                container.seek(0)
        except (av.error.FFmpegError, ValueError, IndexError) as e:
            raise SampleError(f"undecodable video ({type(e).__name__})") from None
        yield container, stream, total


def _decode_scaled(container, stream, start: int, count: int, height: int, width: int) -> np.ndarray:
    """Frames start..start+count-1 scaled as decoded to cover height x width, centre-cut: [count, H, W, 3]."""
    import av

    out = []
    try:
        for index, frame in enumerate(container.decode(stream)):
            if index < start:
                continue
            h, w = cover_size(frame.height, frame.width, height, width)
            out.append(frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA"))
            if len(out) == count:
                break
    except (av.error.FFmpegError, ValueError, IndexError) as e:
        raise SampleError(f"undecodable video ({type(e).__name__})") from None
    if len(out) < count:  # the container or the manifest promised more frames than there are
        raise SampleError(f"{SHORT_CLIP}: {start + len(out)} frames, {start + count} wanted")
    video = np.stack(out)
    top, left = (video.shape[1] - height) // 2, (video.shape[2] - width) // 2
    return video[:, top:top + height, left:left + width]


def subjects_fit(record: SampleRecord, min_subjects: int, max_subjects: int) -> bool:
    """Whether a sample has min..max subjects. A single-subject selection (max 1) also refuses a sample
    whose caption names subjects it has no image of (unmatched_subjects): that is not single-subject
    data, the caption describes someone the model is not shown."""
    if not min_subjects <= len(record.subjects) <= max_subjects:
        return False
    return max_subjects > 1 or not record.unmatched_subjects


def describe_subjects(low: int, high: int) -> str:
    return f"{low} subject{'s' * (low > 1)}" if low == high else f"{low}..{high} subjects"


class SubjectVideoDataset:
    """The samples of a manifest, or a view of some of them (select). Views share the store, the
    records and the skip counts; each has its own order and its own known-bad samples."""

    def __init__(self, uri: str, store: ArtifactStore | None = None, frame_windows: int = 0):
        self.uri = uri
        self.store = store or open_store(uri)
        self.frame_windows = frame_windows  # window_starts: where a sample's frames may start
        # set, samples are read from what precompute encoded (EncodedSample) instead of decoded (TrainSample)
        self.precomputed: PrecomputedReader | None = None
        try:
            self.samples, rejected = read_manifest(self.store)
        except StorageError as e:
            raise SampleError(f"cannot read the dataset manifest: {e}") from None
        for line, reason in rejected:
            log.warning("manifest line %d skipped: %s", line, reason)
        if not self.samples:
            raise SampleError(f"{uri}: the manifest has no valid samples")
        self.indices: list[int] = list(range(len(self.samples)))  # the samples (of self.samples) this view reads
        # counted with the samples that fail to load (progress.json's samples_skipped); a sample counts once
        # per reason, however many views skip it
        self.skipped: Counter[str] = Counter({"invalid manifest line": len(rejected)} if rejected else {})
        self._counted: set[tuple[int, str]] = set()
        self._bad: set[int] = set()
        self._orders: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def __copy__(self) -> SubjectVideoDataset:  # a view (select): shares the store and the rest
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        return view

    def __getstate__(self) -> dict:  # to a loader worker: without the store's client
        return {k: v for k, v in self.__dict__.items() if k != "store"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.store = open_store(self.uri)

    def select(self, frames: int, min_subjects: int, max_subjects: int) -> SubjectVideoDataset:
        """A view of the samples with min..max subjects (subjects_fit) and at least `frames` frames. A clip
        the manifest says is shorter is skipped here and counted; one without num_frames is checked when read."""
        keep = []
        for index in self.indices:
            record = self.samples[index]
            if record.num_frames is not None and record.num_frames < frames:
                self._skip(index, SHORT_CLIP)
            elif subjects_fit(record, min_subjects, max_subjects):
                keep.append(index)
        view = copy.copy(self)  # shares store, samples, skipped, _counted
        view.indices, view._bad, view._orders = keep, set(), {}
        return view

    def _skip(self, index: int, reason: str) -> None:
        if (index, reason) not in self._counted:
            self._counted.add((index, reason))
            self.skipped[reason] += 1

    def index_at(self, position: int, seed: int) -> int:
        """The sample at a global position: a fresh seeded permutation of the view every epoch."""
        return self.indices[self._slot_at(position, seed)]

    def _slot_at(self, position: int, seed: int) -> int:
        epoch, offset = divmod(position, len(self.indices))
        if epoch not in self._orders:
            self._orders = {epoch: torch.randperm(len(self.indices), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))}
        return int(self._orders[epoch][offset])

    def load(self, record: SampleRecord, frames: int, height: int, width: int, max_subjects: int,
             generator: torch.Generator) -> TrainSample:
        """A sample at the stage's size with all its subjects and a composed caption (compose_caption). More
        subjects than `max_subjects` is an error, not a cut: the caption would name subjects the model is not
        shown (a stage's view never holds such a sample)."""
        if len(record.subjects) > max_subjects:
            raise SampleError(f"more subjects than maxSubjects: {len(record.subjects)}, at most {max_subjects}")
        clip = decode_window(self.video_source(record), frames, height, width, generator, record.num_frames,
                             self.frame_windows)
        subjects = self.subject_images(record)
        return TrainSample(record.id, clip_tensor(clip), compose_caption(record, generator), subjects)

    def video_source(self, record: SampleRecord) -> str | bytes:
        """The clip as decode_window reads it: a local path (streamed), else its bytes."""
        local = self.store.local_path(record.video)
        try:
            return str(local) if local is not None and local.is_file() else self.store.read_bytes(record.video)
        except StorageError as e:
            raise SampleError(str(e)) from None

    def subject_images(self, record: SampleRecord) -> list[tuple[str, Image.Image]]:
        """(word, image) of each of the sample's subjects."""
        try:
            return [(s.word, read_image(self.store.read_bytes(s.image))[0]) for s in record.subjects]
        except StorageError as e:
            raise SampleError(str(e)) from None
        except ImageRejected as e:
            raise SampleError(f"unreadable subject image: {e}") from None

    def get(self, position: int, seed: int, frames: int, height: int, width: int, max_subjects: int,
            generator: torch.Generator) -> TrainSample | EncodedSample:
        """The sample at `position`, or the next readable one of the view after it if it is broken."""
        if not self.indices:
            raise SampleError(f"{self.uri}: no sample to read")
        slot = self._slot_at(position, seed)
        start = generator.get_state()  # every attempt draws as the first would: a process that already knows a
        for attempt in range(len(self.indices)):  # sample is bad reads the same stand-in as one that finds out
            generator.set_state(start)
            index = self.indices[(slot + attempt) % len(self.indices)]
            if index in self._bad:
                continue
            record = self.samples[index]
            try:
                if self.precomputed is not None:
                    return self.precomputed.read(index, record, frames, height, width, generator)
                return self.load(record, frames, height, width, max_subjects, generator)
            except SampleError as e:
                self._bad.add(index)
                self._skip(index, str(e).split(":")[0])
                log.warning("sample %s (%s) skipped: %s", record.id, record.video, e)
        raise SampleError(f"{self.uri}: no readable sample left")


def stage_view(dataset: SubjectVideoDataset, stage: Stage, frames: int) -> tuple[SubjectVideoDataset, str | None]:
    """The samples one part of a stage (`frames` frames a sample) trains on, and why when they are not the
    stage's own selection.

    A stage trains on the samples with stage.min_subjects..stage.max_subjects subjects (identity: exactly
    one, with no other subject named in the caption; interaction: 2..maxSubjects) and at least `frames`
    frames. When fewer than stage.min_samples qualify and stage.fallback is on, it trains on every sample
    with 1..maxSubjects subjects instead, if that has more; the reason comes back for a warning and
    progress.json. Otherwise a shortfall is a SampleError.
    """
    view = dataset.select(frames, stage.min_subjects, stage.max_subjects)
    if len(view) >= stage.min_samples:
        return view, None
    wanted = f"{describe_subjects(stage.min_subjects, stage.max_subjects)} and at least {frames} frames"
    if stage.max_subjects == 1:
        wanted += " (and no unmatched_subjects)"
    shortfall = (f"no sample has {wanted}" if not len(view) else
                 f"{len(view)} sample{'s' * (len(view) > 1)} with {wanted}, fewer than minSamples {stage.min_samples}")
    if stage.fallback and stage.min_subjects > 1:
        wider = dataset.select(frames, 1, stage.max_subjects)
        if len(wider) > len(view):
            return wider, f"{shortfall}: training on the {len(wider)} with {describe_subjects(1, stage.max_subjects)}"
    raise SampleError(f"stage {stage.name}: {shortfall} in {dataset.uri}")


@dataclass(frozen=True)
class StepRequest:
    """The samples one rank reads for one step: at these global positions, from one view, at one size."""
    step: int
    view: object  # a key of the views the StepLoader was given
    positions: tuple[int, ...]
    frames: int
    height: int
    width: int
    max_subjects: int


@dataclass
class LoadedStep:
    step: int
    # each sample, its video as uint8 (a quarter of float32's bytes in the workers' shared memory: unpack()
    # restores it exactly), and its generator's state after loading
    samples: list[tuple[TrainSample, torch.Tensor]]
    skipped: list[tuple[int, str]]  # samples newly skipped while loading (dataset index, reason)
    error: str | None = None  # a SampleError that ends the run


class StepLoader(torch.utils.data.IterableDataset):
    """A rank's samples, step by step, loaded ahead of the training loop by DataLoader workers (worker w
    loads steps w, w + workers, ...; the DataLoader returns them in step order).

    Each sample draws its frames and caption from `generator_for(position)`; the generator's state comes
    back with the sample, so the step goes on drawing from it (latents, noise) exactly as if it had loaded
    the sample itself. Samples skipped in a worker come back too, to be counted in the training process.
    """

    def __init__(self, views: dict, requests: list[StepRequest], seed: int, generator_for):
        self.views, self.requests, self.seed, self.generator_for = views, requests, seed, generator_for

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        requests = self.requests if info is None else self.requests[info.id::info.num_workers]
        counted = set(next(iter(self.views.values()))._counted)  # views of one dataset share what they counted
        for request in requests:
            view = self.views[request.view]
            samples = []
            try:
                for position in request.positions:
                    generator = self.generator_for(position)
                    sample = view.get(position, self.seed, request.frames, request.height, request.width,
                                      request.max_subjects, generator)
                    samples.append((sample, generator.get_state()))
            except SampleError as e:
                yield LoadedStep(request.step, [], sorted(view._counted - counted), error=str(e))
                return
            new = sorted(view._counted - counted)
            counted |= set(new)
            yield LoadedStep(request.step, [(pack(sample), state) for sample, state in samples], new)


def pack(sample: TrainSample | EncodedSample) -> TrainSample | EncodedSample:
    """A decoded sample with its video as uint8 [3, F, H, W] (the decoded pixels), for the trip out of a
    worker; an encoded one as it is."""
    if isinstance(sample, EncodedSample):
        return sample
    return dataclasses.replace(sample, video=sample.video.add(1.0).mul_(127.5).round_().to(torch.uint8))


def unpack(sample: TrainSample | EncodedSample) -> TrainSample | EncodedSample:
    """pack's inverse, exactly: the float video in [-1, 1] that load() made."""
    if isinstance(sample, EncodedSample):
        return sample
    return dataclasses.replace(sample, video=sample.video.float().div_(127.5).sub_(1.0))


def _die_with_rank(worker_id: int) -> None:
    # DataLoader's own watchdog left a dead rank's workers running for minutes, holding its output open
    import multiprocessing

    die_with_parent(signal.SIGKILL, parent=multiprocessing.parent_process().pid)


def step_batches(loader: StepLoader, workers: int, prefetch_steps: int):
    """An iterator of LoadedStep in step order: loaded in `workers` processes (each `prefetch_steps` steps
    ahead), or in this one with workers 0.

    Workers are spawned, not forked: a forked worker would inherit the rank's process-group sockets and
    keep them open after the rank died, so the other ranks would wait on a dead peer instead of failing."""
    if workers == 0:
        return iter(loader)
    return iter(torch.utils.data.DataLoader(loader, batch_size=None, num_workers=workers,
                                            prefetch_factor=prefetch_steps, worker_init_fn=_die_with_rank,
                                            multiprocessing_context="spawn",
                                            generator=torch.Generator()))  # not the rank's global RNG
