"""The precompute phase: every input a training run reads, encoded once into the store before its first
step (data/precomputed.py has the layout and the reader), so that training never loads LLaVA, CLIP or the
VAE and never runs them again for a sample it meets in another epoch.

It runs in the training job's own pods, as the first phase of `polyvivid train` when spec.precompute is
set (or alone: `polyvivid precompute`). Every rank builds the frozen encoders and encodes its share of the
samples still missing, writing one shard per sample; rank 0 then writes index.json. The store is the
only state:
- resumable: a restarted job lists what is there and encodes only the rest (a shard is written whole or
  not at all: a local file is renamed into place, an S3 PUT is atomic);
- idempotent: a configuration whose index.json exists is reused as it is, and another configuration (a
  new base, manifest, size, window count or dtype) has another fingerprint, so another directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import torch

from ..api.training import TrainingSpec
from ..data.loader import SampleError, SubjectVideoDataset, caption_variants, clip_tensor, decode_windows
from ..data.precomputed import (
    FORMAT, INDEX, PrecomputedReader, error_key, fingerprint, sample_key, sample_tensors, size_key,
)
from ..storage import ArtifactStore, open_store, with_retries
from .parallel import DistEnv

log = logging.getLogger("polyvivid.precompute")
LOG_EVERY_S = 30.0


def sizes_by_sample(spec: TrainingSpec, views: dict) -> dict[int, list[str]]:
    """Manifest index -> the sizes (size_key) it is read at: those of the stage parts whose view (keyed
    (stage index, low_res), Trainer.views) holds it."""
    sizes: dict[int, set[str]] = {}
    for (stage_index, low_res), view in views.items():
        res = spec.stages[stage_index].resolution_of(low_res)
        size = size_key(res.frames, res.height, res.width)
        for index in view.indices:
            sizes.setdefault(index, set()).add(size)
    return {index: sorted(s) for index, s in sorted(sizes.items())}


def configuration(spec: TrainingSpec, dataset: SubjectVideoDataset, sizes: dict[int, list[str]],
                  dtype: torch.dtype) -> dict:
    """Everything the encodings depend on; its fingerprint names their directory."""
    manifest = dataset.store.read_bytes("manifest.jsonl")
    return {"format": FORMAT, "model": spec.model.base_card(), "use_llava_fusion": spec.model.use_llava_fusion,
            "dataset": dataset.uri, "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
            "frame_windows": spec.dataset.frame_windows, "sizes": sorted({s for v in sizes.values() for s in v}),
            "dtype": str(dtype).removeprefix("torch.")}


def precompute_root(spec: TrainingSpec, output: str) -> str:
    return (spec.precompute.output or f"{output.rstrip('/')}/precomputed").rstrip("/")


def vae_config(spec: TrainingSpec) -> dict:
    """The VAE's configuration (its scaling factor: what training multiplies the drawn latents by), read
    without building it."""
    import inspect

    from diffusers import AutoencoderKLHunyuanVideo

    from ..model.presets import get_preset
    from ..storage import materialize_dir

    defaults = {name: p.default for name, p in inspect.signature(AutoencoderKLHunyuanVideo.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    if spec.model.preset:
        return {**defaults, **get_preset(spec.model.preset).vae}
    return {**defaults, **AutoencoderKLHunyuanVideo.load_config(materialize_dir(spec.model.hunyuanvideo) / "vae")}


def build_encoders(spec: TrainingSpec, device: torch.device, dtype: torch.dtype):
    """The pipeline's frozen encoders (VAE with tiling on, LLaVA, CLIP) on `device`; its transformer only as
    configuration (a preset's tiny random one, or the real one on the meta device: no memory)."""
    from ..model.pipeline import PolyVividPipeline

    if spec.model.preset:
        pipe = PolyVividPipeline.from_preset(spec.model.preset, seed=spec.model.seed, **spec.transformer_options())
    else:
        from ..model.transformer import PolyVividTransformer
        from ..storage import materialize_dir

        base = materialize_dir(spec.model.hunyuanvideo) / "transformer"
        transformer = PolyVividTransformer.build_on_meta(base, **spec.transformer_options())
        pipe = PolyVividPipeline.from_hunyuanvideo(spec.model.hunyuanvideo, spec.model.llava, torch_dtype=dtype,
                                                   transformer=transformer)
    pipe.freeze_encoders(device, dtype)
    return pipe


@torch.no_grad()
def encode_sample_inputs(pipe, dataset: SubjectVideoDataset, index: int, sizes: list[str], windows: int,
                         device: torch.device, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """One sample's shard: (tensors, header metadata), as data/precomputed.py lays them out."""
    record = dataset.samples[index]
    source = dataset.video_source(record)
    vae = pipe.vae
    latents, starts_by_size = {}, {}
    for size in sizes:
        frames, height, width = map(int, size.split("x"))
        starts, decoded = decode_windows(source, frames, height, width, windows, record.num_frames)
        starts_by_size[size] = starts
        latents[size] = []
        for start in starts:
            video = clip_tensor(decoded[start - starts[0]:][:frames])[None].to(device, vae.dtype)
            latents[size].append(vae.encode(video).latent_dist.parameters)
    subjects = dataset.subject_images(record)
    subject_latents = pipe.encode_subjects([image for _, image in subjects])
    captions = caption_variants(record)
    conditions = [pipe.encode_conditions(caption, subjects, device, dtype, subject_latents=subject_latents)
                  for caption in captions]
    meta = {"format": FORMAT, "id": record.id, "captions": json.dumps(captions), "windows": json.dumps(starts_by_size)}
    return sample_tensors(latents, conditions, conditions[0]["subject_latents"]), meta


def _write_shard(store: ArtifactStore, index: int, tensors: dict, meta: dict) -> None:
    from safetensors.torch import save

    with_retries(store.write_bytes, sample_key(index), save(tensors, metadata=meta), what=f"write {sample_key(index)}")


def _barrier(env: DistEnv) -> None:
    if env.distributed:
        import torch.distributed as dist

        dist.barrier()


def precompute_inputs(spec: TrainingSpec, env: DistEnv, dataset: SubjectVideoDataset, views: dict, output: str,
                      dtype: torch.dtype, report=None) -> PrecomputedReader:
    """Encode what `views` read that is not in the store yet (every rank its share), then rank 0 writes the
    index; returns the reader. Every rank calls it (barriers). report(done, total): progress on rank 0."""
    sizes = sizes_by_sample(spec, views)
    config = configuration(spec, dataset, sizes, dtype)
    uri = f"{precompute_root(spec, output)}/{fingerprint(config)}"
    store = open_store(uri)
    if store.exists(INDEX):  # this configuration is encoded already
        if env.is_main:
            log.info("precomputed inputs found: %s", uri)
        return PrecomputedReader.open(uri, store)
    present = set(store.list("samples/"))
    todo = [i for i in sizes if sample_key(i) not in present and error_key(i) not in present]
    _barrier(env)  # every rank has listed before any writes: they all split the same list
    mine = todo[env.rank::env.world_size]
    if env.is_main:
        log.info("precomputing %d of %d samples (%d ranks) into %s", len(todo), len(sizes), env.world_size, uri)
        if todo and report:
            report(len(sizes) - len(todo), len(sizes))
    if mine:
        pipe = build_encoders(spec, env.device, dtype)
        last_log = time.monotonic()
        for n, index in enumerate(mine, start=1):
            try:
                tensors, meta = encode_sample_inputs(pipe, dataset, index, sizes[index], spec.dataset.frame_windows,
                                                     env.device, dtype)
                _write_shard(store, index, tensors, meta)
            except SampleError as e:  # recorded: training skips it, as a raw read would
                record = dataset.samples[index]
                log.warning("sample %s (%s) not precomputed: %s", record.id, record.video, e)
                with_retries(store.write_text, error_key(index), json.dumps({"id": record.id, "error": str(e)}),
                             what=f"write {error_key(index)}")
            if env.is_main and (time.monotonic() - last_log > LOG_EVERY_S or n == len(mine)):
                last_log = time.monotonic()
                done = len(sizes) - len(todo) + min(n * env.world_size, len(todo))  # ranks move alike
                log.info("precomputed about %d of %d samples", done, len(sizes))
                if report:
                    report(done, len(sizes))
        del pipe
        if env.device.type == "cuda":
            torch.cuda.empty_cache()
    _barrier(env)
    if env.is_main:
        _write_index(store, config, sizes, dataset, vae_config(spec)["scaling_factor"])
    _barrier(env)
    return PrecomputedReader.open(uri, store)


def _write_index(store: ArtifactStore, config: dict, sizes: dict[int, list[str]], dataset: SubjectVideoDataset,
                 scaling_factor: float) -> None:
    """index.json, once every sample has its shard or its error: from then on the directory is complete."""
    present = set(store.list("samples/"))
    samples = {}
    for index in sizes:
        record = dataset.samples[index]
        if sample_key(index) in present:
            samples[str(index)] = {"id": record.id, "file": sample_key(index)}
        elif error_key(index) in present:
            samples[str(index)] = {"id": record.id, **json.loads(store.read_text(error_key(index)))}
        else:
            raise RuntimeError(f"precompute: sample {record.id} has neither {sample_key(index)} nor an error record")
    index = {"format": FORMAT, "configuration": config, "scaling_factor": scaling_factor, "samples": samples}
    with_retries(store.write_text, INDEX, json.dumps(index, indent=1), what=f"write {INDEX}")
