"""`polyvivid curate`: raw videos -> the multi-subject dataset (paper section 3, appendix A.3), on Ray.

The stages and their order are api.curation.CURATION_STAGES; each names its runner here (a function
run as light CPU tasks, or a model stage class run as a pool of Ray actors with the spec's CPUs/GPUs per
actor). `polyvivid curate --help` lists them.

A row that fails a stage is not dropped silently: it carries `reject` (stage and reason) through the
remaining stages, and summary.json lists every reject. Each finished video leaves a marker under
`_done/`, so a re-run skips it and processes new videos, and again those rejected for a reason the user
can fix (a stage whose `fixable` is set: captions, grounding, segmentation, consolidation; or a file that
could not be read): a caption file added beside the video or a better model then changes the result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter

import numpy as np
from PIL import Image

from ..api.curation import CURATION_STAGE_NAMES, CURATION_STAGES, FIXABLE_STAGES, CurationSpec
from ..storage import ObjectNotFound, StorageError, open_store
from ..telemetry import CURATION
from ..video import png_bytes
from .captioning import CAPTION_FIELDS
from .dataset import MANIFEST, SampleRecord, SubjectRecord
from .shots import (
    black_border_box, clip_ranges, decode_video, detect_shots, has_transition, motion_score, subsample,
)

log = logging.getLogger("polyvivid.curate")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm")
SUMMARY = "summary.json"


def clip_id(video_key: str, index: int) -> str:
    stem = video_key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    digest = hashlib.sha1(video_key.encode()).hexdigest()[:8]
    return f"{stem}-{digest}-{index:03d}"


def done_key(video_key: str) -> str:
    return f"_done/{hashlib.sha1(video_key.encode()).hexdigest()}.json"


_METRICS: dict = {}


def _metrics():
    """Prometheus metrics through Ray's metrics agent (each Ray worker process makes its own)."""
    if not _METRICS:
        from ray.util.metrics import Counter as RayCounter, Histogram

        rows, seconds = CURATION["rows"], CURATION["seconds"]
        _METRICS["rows"] = RayCounter(rows.name, rows.help, tag_keys=rows.labels)
        _METRICS["seconds"] = Histogram(seconds.name, seconds.help, boundaries=[0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60],
                                        tag_keys=seconds.labels)
    return _METRICS


def _record(stage: str, result: str, seconds: float | None = None) -> None:
    try:
        metrics = _metrics()
    except ImportError:  # stages used without Ray (unit tests, a notebook)
        return
    metrics["rows"].inc(tags={"stage": stage, "result": result})
    if seconds is not None:
        metrics["seconds"].observe(seconds, tags={"stage": stage})


def rejected(row: dict, stage: str, reason: str, fixable: bool | None = None) -> dict:
    """The row without its frames, carrying why; fixable (default: the stage's) says a re-run retries it."""
    row = {k: v for k, v in row.items() if k not in ("frames",)}
    row["reject"] = {"stage": stage, "reason": reason,
                     "fixable": stage in FIXABLE_STAGES if fixable is None else fixable}
    _record(stage, "rejected")
    return row


def _timed(row: dict, stage: str, started: float) -> dict:
    seconds = time.perf_counter() - started
    row.setdefault("seconds", {})[stage] = round(seconds, 4)
    _record(stage, "passed", seconds)
    return row


# -------------------------------------------------------------------------------- split, filters
_HOOKS: dict = {}


def _clip_filters(spec: CurationSpec):
    """The model hooks of the filters, loaded once per worker process (None when none is set)."""
    f = spec.filters
    if f.subtitle_detector is None and f.watermark_detector is None and f.quality_scorer is None:
        return None
    key = f.model_dump_json()
    if key not in _HOOKS:
        from .frame_filters import ClipFilters

        _HOOKS[key] = ClipFilters(f)
    return _HOOKS[key]


def split_and_filter(row: dict, spec: CurationSpec) -> list[dict]:
    """One video -> its clips (frames in the row) or a reject saying why."""
    started = time.perf_counter()
    store = open_store(spec.input)
    key = row["video"]
    try:
        video = decode_video(store.read_bytes(key))
    except (ValueError, StorageError) as e:  # a damaged upload or a store outage: a re-run tries again
        return [rejected({"video": key}, "split", str(e), fixable=True)]
    sidecar = {}
    stem = key.rsplit(".", 1)[0]
    for ext in ("json", "txt"):
        try:
            sidecar[ext] = store.read_bytes(f"{stem}.{ext}").decode("utf-8", "replace")
        except ObjectNotFound:
            pass
    split = spec.split
    ranges, too_short = clip_ranges(detect_shots(video.frames, split.shot_threshold), video.fps,
                                    split.min_clip_seconds, split.max_clip_seconds)
    out = [rejected({"video": key, "clip": clip_id(key, -1 - i)}, "split",
                    f"shorter than {split.min_clip_seconds}s") for i in range(too_short)]
    filters = spec.filters
    hooks = _clip_filters(spec)
    for i, (start, end) in enumerate(ranges):
        frames = video.frames[start:end]
        base = {"video": key, "clip": clip_id(key, i), "sidecar": sidecar}
        top, bottom, left, right = black_border_box(frames, filters.black_border_threshold)
        if bottom - top < 16 or right - left < 16:
            out.append(rejected(base, "filters", "black frames"))
            continue
        frames = frames[:, top:bottom, left:right]
        if has_transition(frames, filters.transition_threshold):
            out.append(rejected(base, "filters", "transition (fade or dissolve)"))
            continue
        motion = motion_score(frames)
        if motion < filters.min_motion:
            out.append(rejected(base, "filters", f"static (motion {motion:.2f} < {filters.min_motion})"))
            continue
        frames = subsample(frames, video.fps, split.max_fps)
        reason = hooks.reason_to_drop(frames) if hooks is not None else None
        if reason:
            out.append(rejected(base, "filters", reason))
            continue
        # split and filters are timed together, under "split"
        out.append(_timed({**base, "frames": frames, "fps": min(split.max_fps, video.fps),
                           "border": [top, bottom, left, right]}, "split", started))
    return out


# ------------------------------------------------ caption, grounding, segmentation, consolidation
def sample_frames(frames: np.ndarray, count: int) -> list[int]:
    return sorted(set(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int).tolist()))


class _ModelStage:
    """A model stage (one Ray actor): rows rejected upstream pass through untouched."""

    def __call__(self, row: dict) -> dict:
        return row if "reject" in row else self.process(row)

    def process(self, row: dict) -> dict:
        raise NotImplementedError


class CaptionStage(_ModelStage):
    def __init__(self, spec: CurationSpec):
        self.spec = spec.caption
        self.captioner = None  # loaded on first need: clips with caption files never need it

    def process(self, row: dict) -> dict:
        from .captioning import Captioner, sidecar_caption

        started = time.perf_counter()
        files = {k: v.encode() for k, v in row.pop("sidecar", {}).items()}
        caption = sidecar_caption(files)
        source = "file"
        if caption is None or not caption.subjects:
            if self.captioner is None:
                model = self.spec.model
                self.captioner = Captioner.load(model.uri, model.preset, self.spec.max_new_tokens)
            frames = [Image.fromarray(row["frames"][i]) for i in sample_frames(row["frames"], 4)]
            generated, raw = self.captioner.caption(frames)
            if caption is None:
                caption, source = generated, "mllm"
            elif generated is not None:  # a caption file without subjects: take the MLLM's phrases
                caption.subjects, source = generated.subjects, "file+mllm"
            if caption is None:
                return rejected(row, "caption", f"the captioner gave no structured caption: {raw[:80]!r}")
        problems = caption.problems()
        if problems:
            return rejected(row, "caption", "; ".join(problems))
        row.update(caption=caption.caption, phrases=caption.subjects, caption_source=source,
                   **{k: getattr(caption, k) for k in CAPTION_FIELDS})
        return _timed(row, "caption", started)


class GroundingStage(_ModelStage):
    """Every phrase grounded within the caption on sampled frames (data/grounding.py). The row gets
    `detections` ({phrase, frame, box, score, box_logprob}) for the phrases found, the only ones
    segmented, and `absent` ({phrase, frame, score}) for those not found, so a phrase's absent frames
    can be counted downstream; `sampled_frames` is how many frames were grounded."""

    def __init__(self, spec: CurationSpec):
        from .grounding import Grounder

        grounding = spec.grounding
        self.frames_per_clip = grounding.frames_per_clip
        self.grounder = Grounder.load(grounding.model.uri, grounding.model.preset,
                                      min_score=grounding.min_score)

    def process(self, row: dict) -> dict:
        started = time.perf_counter()
        detections, absent = [], []
        frames = sample_frames(row["frames"], self.frames_per_clip)
        for index in frames:
            image = Image.fromarray(row["frames"][index])
            for g in self.grounder.ground(image, row["phrases"], caption=row["caption"]):
                if g.found:
                    detections.append({"phrase": g.phrase, "frame": index, "box": g.box, "score": g.score,
                                       "box_logprob": g.box_logprob})
                else:
                    absent.append({"phrase": g.phrase, "frame": index, "score": g.score})
        row.update(detections=detections, absent=absent, sampled_frames=len(frames))
        return _timed(row, "grounding", started)


class SegmentationStage(_ModelStage):
    """SAM2 cut-outs, their CLIP score against the phrase, and clique consolidation per phrase
    (CLIP runs in the same actors as SAM2: it is small and needs the cut-outs they make)."""

    def __init__(self, spec: CurationSpec):
        from .clip_score import ClipScorer
        from .segmentation import Segmenter

        self.spec = spec
        self.segmenter = Segmenter.load(spec.segmentation.model.uri, spec.segmentation.model.preset)
        self.clip = ClipScorer.load(spec.clip_score.model.uri, spec.clip_score.model.preset)

    def process(self, row: dict) -> dict:
        from .segmentation import cut_out

        started = time.perf_counter()
        kept = []
        for det in row.pop("detections"):
            mask = self.segmenter.segment(Image.fromarray(row["frames"][det["frame"]]), det["box"])
            if mask.sum() < 16:
                continue
            kept.append({**det, "image": cut_out(Image.fromarray(row["frames"][det["frame"]]), mask)})
        row = _timed(row, "segmentation", started)
        started = time.perf_counter()
        subjects, reasons = [], []
        for phrase in row["phrases"]:
            found = [d for d in kept if d["phrase"] == phrase]
            if not found:
                reasons.append(f"{phrase!r}: no mask")
                continue
            scores = self.clip.scores([d["image"] for d in found], [phrase] * len(found)).tolist()
            passing = [(d, s) for d, s in zip(found, scores) if s >= self.spec.clip_score.min_score]
            if not passing:
                reasons.append(f"{phrase!r}: CLIP score {max(scores):.3f} < {self.spec.clip_score.min_score}")
                continue
            features = self.clip.image_features([d["image"] for d, _ in passing]).numpy()
            found_subjects = subjects_of_phrase(phrase, passing, features, row["sampled_frames"], self.spec)
            if not found_subjects:
                reasons.append(f"{phrase!r}: no consistent detections (no clique over a third of the frames)")
            subjects += found_subjects
        if not subjects:
            return rejected(row, "consolidation", "; ".join(reasons) or "no subjects")
        row["subjects"] = subjects
        row["dropped_subjects"] = reasons
        found = {subject["phrase"] for subject in subjects}
        row["unmatched_subjects"] = [phrase for phrase in row["phrases"] if phrase not in found]
        return _timed(row, "consolidation", started)


def subjects_of_phrase(phrase: str, passing: list[tuple[dict, float]], features: np.ndarray, sampled_frames: int,
                       spec: CurationSpec) -> list[dict]:
    """Every clique of one phrase's detections that passes the one-third rule is a subject (paper A.3): two
    different men are two subjects, named "man" and "man 2" (the caption calls both "man"). passing: the
    (detection, CLIP score) pairs whose cut-outs gave `features`; each subject keeps its best-scored
    cut-outs as reference images."""
    from .clique import consolidate

    subjects = []
    for k, clique in enumerate(consolidate(features, sampled_frames, spec.consolidation.max_distance)):
        best = sorted(clique, key=lambda i: -passing[i][1])[: spec.consolidation.reference_images]
        subjects.append({"phrase": phrase, "name": phrase if k == 0 else f"{phrase} {k + 1}",
                         "images": [png_bytes(passing[i][0]["image"]) for i in best],
                         "clip_score": round(float(np.mean([passing[i][1] for i in best])), 4)})
    return subjects


# ---------------------------------------------------------------------------------------- write
def write_clip(row: dict, spec: CurationSpec) -> dict:
    """Clip and subject images to the output; the row becomes its manifest record."""
    if "reject" in row:
        return row
    from ..video import encode_mp4

    started = time.perf_counter()
    store = open_store(spec.output)
    frames = row.pop("frames")
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2  # H.264 wants even sizes
    frames = np.ascontiguousarray(frames[:, :h, :w])
    clip_key = f"clips/{row['clip']}.mp4"
    store.write_bytes(clip_key, encode_mp4(frames, fps=max(int(round(row["fps"])), 1)))
    subjects = []
    for k, subject in enumerate(row.pop("subjects")):
        key = f"subjects/{row['clip']}_{k}.png"
        store.write_bytes(key, subject["images"][0])
        for j, extra in enumerate(subject["images"][1:], start=1):
            store.write_bytes(f"subjects/{row['clip']}_{k}_{j}.png", extra)
        name = subject.get("name", subject["phrase"])
        subjects.append(SubjectRecord(word=subject["phrase"], image=key, name=name if name != subject["phrase"] else None))
    caption_fields = {k: row[k] for k in CAPTION_FIELDS if row.get(k)}
    record = SampleRecord(id=row["clip"], video=clip_key, caption=row["caption"], subjects=subjects,
                          fps=row["fps"], num_frames=len(frames), width=w, height=h, source=row["video"],
                          caption_source=row.get("caption_source"),
                          unmatched_subjects=row.get("unmatched_subjects", []), **caption_fields)
    row["record"] = record.model_dump(exclude_defaults=True)
    return _timed(row, "write", started)


# ---------------------------------------------------------------------------------------- Ray wiring
CPU_TASK = 0.25  # split/filter and write are light; leave the cores to the model actors


def _each(fn):
    def run(row, **kwargs):
        return [{"item": item} for item in fn(row["item"], **kwargs)]
    return run


def _one(fn):
    def run(row, **kwargs):
        return {"item": fn(row["item"], **kwargs)}
    return run


def _actor(cls):
    class Stage(cls):
        def __call__(self, row):
            return {"item": super().__call__(row["item"])}
    Stage.__name__ = cls.__name__
    return Stage


# ---------------------------------------------------------------------------------------- driver
def _fixable(reject: dict) -> bool:
    return reject.get("fixable", reject.get("stage") in FIXABLE_STAGES)  # markers written before the flag


def _read_marker(out, video_key: str) -> dict | None:
    """A video's done marker, or None when it has none or it is damaged (then the video is redone)."""
    try:
        marker = json.loads(out.read_text(done_key(video_key)))
    except ObjectNotFound:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("damaged marker %s for %s: the video is curated again", done_key(video_key), video_key)
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("results"), list) else None


def curate(spec: CurationSpec, local: bool = True, progress: bool = True, allow_ray_no_auth: bool = False) -> dict:
    """Run the pipeline on Ray; returns the summary (also written to OUTPUT/summary.json). `local` starts a
    one-machine Ray on loopback (polyvivid/ray_local.py) unless this process already runs one."""
    import ray

    started = time.perf_counter()
    source, out = open_store(spec.input), open_store(spec.output)
    videos = [k for k in source.list() if k.lower().endswith(VIDEO_EXTENSIONS)]
    finished, retried = set(), []
    for key in videos:
        marker = _read_marker(out, key)
        if marker is None:
            continue
        if any(_fixable(r["reject"]) for r in marker["results"] if "reject" in r):
            retried.append(key)  # rejected for a reason a model or a caption file can fix: try again
        else:
            finished.add(key)
    todo = [k for k in videos if k not in finished]
    log.info("%d videos under %s (%d already curated, %d retried)", len(videos), spec.input, len(finished),
             len(retried))
    random_models = spec.random_model_stages()
    if random_models:
        log.warning("random weights (preset: tiny) for %s: the dataset is for smoke tests only",
                    ", ".join(random_models))

    rows = []
    if todo:
        if not ray.is_initialized():
            if local:
                from ..ray_local import init_local_ray

                init_local_ray(allow_ray_no_auth, log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=spec.ray_address or "auto", log_to_driver=False, configure_logging=False)
        from ray.data import ActorPoolStrategy, DataContext

        DataContext.get_current().enable_progress_bars = progress
        # Every row is one python object under "item": rows differ in shape (clips, rejects), and an
        # Arrow schema per stage would only get in the way.
        ds = ray.data.from_items([{"item": {"video": k}} for k in todo])
        for stage in (s for s in CURATION_STAGES if s.runner):  # the others run inside the previous runner
            runner = globals()[stage.runner]
            if stage.actor_pool:
                res = getattr(spec, stage.name).resources
                ds = ds.map(_actor(runner), fn_constructor_kwargs={"spec": spec},
                            compute=ActorPoolStrategy(size=res.actors),
                            num_cpus=res.cpus, num_gpus=res.gpus or None)
            else:
                ds = (ds.flat_map(_each(runner), fn_kwargs={"spec": spec}, num_cpus=CPU_TASK) if stage.fans_out
                      else ds.map(_one(runner), fn_kwargs={"spec": spec}, num_cpus=CPU_TASK))
        rows = [r["item"] for r in ds.take_all()]

    by_video: dict[str, list[dict]] = {k: [] for k in todo}
    for row in rows:
        by_video[row["video"]].append({k: v for k, v in row.items() if k in ("clip", "reject", "record", "seconds")})
    for key, results in by_video.items():  # markers last: a crash before here redoes the video
        out.write_text(done_key(key), json.dumps({"video": key, "results": results}))

    # The manifest and summary cover every video curated so far, this run or earlier ones.
    records, rejects, seconds = [], [], Counter()
    for key in videos:
        results = _read_marker(out, key)["results"]
        for result in results:
            for stage, s in result.get("seconds", {}).items():
                seconds[stage] += s
            if "reject" in result:
                rejects.append({"video": key, "clip": result.get("clip"), **result["reject"]})
            else:
                records.append(result["record"])
    out.write_text(MANIFEST, "".join(json.dumps(r) + "\n" for r in records))
    by_stage = Counter(r["stage"] for r in rejects)
    # Rows into and out of every stage: videos into split, clips from then on.
    counts, flowing = {}, len(videos)
    for stage in CURATION_STAGE_NAMES:
        if stage == CURATION_STAGE_NAMES[0]:
            out_count = len(records) + sum(n for s, n in by_stage.items() if s != "split")
        else:
            out_count = flowing - by_stage.get(stage, 0)
        counts[stage] = {"in": flowing, "out": out_count, "rejected": by_stage.get(stage, 0)}
        flowing = out_count
    summary = {
        "input": spec.input, "output": spec.output, "videos": len(videos), "videos_this_run": len(todo),
        "videos_retried": len(retried), "random_models": random_models,
        "clips_written": len(records), "stages": counts, "rejects": rejects,
        "stage_seconds": {k: round(v, 3) for k, v in seconds.items()},
        "wall_seconds": round(time.perf_counter() - started, 3),
    }
    out.write_text(SUMMARY, json.dumps(summary, indent=1))
    return summary
