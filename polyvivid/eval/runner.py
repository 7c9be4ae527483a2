"""`polyvivid eval`: score generated videos (VIDEOS/CASE_ID.mp4) against their cases and write a report
with the paper's Table 1 columns. Models load from paths or s3:// URIs (`EvalModels`), each only when a
requested metric needs it; the `tiny` preset makes random tiny ones (tests, smoke runs: numbers mean
nothing then)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..api.training import eval_models_needed
from .cases import EvalCase

# metric -> (report key, column title, higher is better)
METRICS = {
    "face": ("face_sim", "Face-sim", True),
    "dino": ("dino_sim", "DINO-sim", True),
    "clip-b": ("clip_b", "CLIP-B", True),
    "clip-l": ("clip_l", "CLIP-L", True),
    "temporal": ("temporal_consistency", "Temporal", True),
    "fvd": ("fvd", "FVD", False),
}


class MissingModel(ValueError):
    """A requested metric needs a model the run was not given; the message names the option."""


@dataclass
class EvalModels:
    clip_b: str | None = None  # CLIP ViT-B directory: CLIP-B, temporal consistency, FVD without I3D
    clip_l: str | None = None  # CLIP ViT-L directory: CLIP-L
    dinov2: str | None = None  # DINOv2 directory: DINO-sim
    grounding: str | None = None  # Florence-2 directory: finds a subject for DINO-sim
    sam2: str | None = None  # SAM2 directory: cuts the subject out for DINO-sim
    face_detector: str | None = None  # TorchScript (eval/face.py): Face-sim
    face_embedder: str | None = None  # TorchScript ArcFace-style embedder: Face-sim
    i3d: str | None = None  # TorchScript I3D for FVD (else CLIP-B features)
    preset: str | None = None  # "tiny": random tiny models for all of the above

    @classmethod
    def from_spec(cls, spec) -> "EvalModels":
        """From a training's evaluation.models (api.training.EvalModelsSpec)."""
        return cls(**spec.model_dump())

    def check(self, metrics: list[str]) -> None:
        if self.preset == "tiny":
            return
        for metric in metrics:
            needs = eval_models_needed(metric, bool(self.i3d))
            missing = [n for n in needs if not getattr(self, n)]
            if missing:
                flags = ", ".join("--" + n.replace("_", "-") for n in missing)
                raise MissingModel(f"metric {metric!r} needs {flags}")
            for name in needs:
                uri = getattr(self, name)
                if "://" not in uri and not Path(uri).expanduser().exists():  # before any work starts
                    raise MissingModel(f"--{name.replace('_', '-')}: no such file or directory: {uri}")


@dataclass
class Loaded:
    """The models of one run, loaded on first use."""

    models: EvalModels
    cache: dict = field(default_factory=dict)

    def get(self, name: str):
        if name not in self.cache:
            self.cache[name] = self._load(name)
        return self.cache[name]

    def _load(self, name: str):
        m, tiny = self.models, self.models.preset == "tiny"
        if name in ("clip_b", "clip_l"):
            from ..data.clip_score import ClipScorer, tiny_clip

            return ClipScorer(*tiny_clip(seed=0 if name == "clip_b" else 1)) if tiny else ClipScorer.load(getattr(m, name))
        if name == "dinov2":
            from .dino import DinoEmbedder

            return DinoEmbedder.load(None, "tiny") if tiny else DinoEmbedder.load(m.dinov2)
        if name == "grounding":
            from ..data.grounding import Grounder

            return Grounder.load(None, "tiny") if tiny else Grounder.load(m.grounding)
        if name == "sam2":
            from ..data.segmentation import Segmenter

            return Segmenter.load(None, "tiny") if tiny else Segmenter.load(m.sam2)
        if name == "face":
            from .face import FaceModels, tiny_face_models

            return FaceModels(*tiny_face_models()) if tiny else FaceModels.load(m.face_detector, m.face_embedder)
        if name == "video_features":
            from .fvd import ClipVideoFeatures, I3DFeatures

            return I3DFeatures.load(m.i3d) if m.i3d else ClipVideoFeatures(self.get("clip_b"))
        raise KeyError(name)


def read_video(uri: str) -> np.ndarray | None:
    """Frames [T, H, W, 3] of an mp4 (path or URI), or None when there is none."""
    from ..storage import ObjectNotFound, open_store, split_uri
    from ..video import decode_mp4

    directory, name = split_uri(uri)
    try:
        return decode_mp4(open_store(directory).read_bytes(name))
    except (ObjectNotFound, FileNotFoundError):
        return None


def read_videos(uri: str) -> list[np.ndarray]:
    """Every *.mp4 under a directory or s3:// prefix, in name order (FVD's real set)."""
    from ..storage import open_store

    names = sorted(k for k in open_store(uri).list() if k.endswith(".mp4"))
    return [read_video(f"{uri.rstrip('/')}/{name}") for name in names]


def sample_frames(frames: np.ndarray, max_frames: int | None) -> np.ndarray:
    if not max_frames or len(frames) <= max_frames:
        return frames
    return frames[np.linspace(0, len(frames) - 1, max_frames).round().astype(int)]


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def evaluate(cases: list[EvalCase], videos_uri: str, metrics: list[str], models: EvalModels,
             real_videos: list[np.ndarray] | None = None, max_frames: int | None = None, label: str = "",
             progress: bool = True) -> dict:
    """The report: per-case scores, their means (the table row) and counts. FVD compares the generated
    videos with `real_videos` (else each case's reference_video)."""
    from tqdm.auto import tqdm

    from .clip_metrics import temporal_consistency, text_alignment
    from .dino import subject_similarity
    from .face import face_similarity
    from .fvd import fvd

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    models.check(metrics)
    loaded = Loaded(models)
    rows, missing, generated, references = [], [], [], []
    # frames_without_subject of subject_frames: DINO-sim's absent frames (eval/dino.py), beside its mean
    counts = {"frames_without_face": 0, "frames_without_subject": 0, "subject_frames": 0}
    for case in tqdm(cases, desc="eval", unit="case", disable=not progress):
        frames = read_video(f"{videos_uri.rstrip('/')}/{case.id}.mp4")
        if frames is None:
            missing.append(case.id)
            continue
        frames = sample_frames(frames, max_frames)
        row: dict = {"id": case.id}
        for metric in ("clip-b", "clip-l"):
            if metric in metrics:
                row[METRICS[metric][0]] = text_alignment(loaded.get(metric.replace("-", "_")), frames, case.prompt)
        if "temporal" in metrics:
            row["temporal_consistency"] = temporal_consistency(loaded.get("clip_b"), frames)
        if "face" in metrics:
            scores = [face_similarity(loaded.get("face"), frames, case.image(s))
                      for s in case.subjects if s.kind == "human"]
            counts["frames_without_face"] += sum(s.frames - s.frames_with_face for s in scores)
            row["face_sim"] = _mean([s.similarity for s in scores])
        if "dino" in metrics:
            scores = [subject_similarity(loaded.get("dinov2"), loaded.get("grounding"), loaded.get("sam2"), frames,
                                         case.image(s), s.name, caption=case.prompt)
                      for s in case.subjects if s.kind != "human"]
            counts["frames_without_subject"] += sum(s.frames_absent for s in scores)
            counts["subject_frames"] += sum(s.frames for s in scores)
            row["dino_sim"] = _mean([s.similarity for s in scores])
        if "fvd" in metrics:
            generated.append(frames)
            if real_videos is None and case.reference_video:
                reference = read_video(case.resolve(case.reference_video))
                if reference is not None:
                    references.append(sample_frames(reference, max_frames))
        rows.append(row)
    if not rows:
        raise ValueError(f"no videos found under {videos_uri} for these cases (expected CASE_ID.mp4)")
    summary = {METRICS[m][0]: _mean([r.get(METRICS[m][0]) for r in rows]) for m in metrics if m != "fvd"}
    fvd_features = None
    if "fvd" in metrics:
        features = loaded.get("video_features")
        fvd_features = features.name
        summary["fvd"] = fvd(features, generated, real_videos if real_videos is not None else references)
    return {"label": label, "metrics": summary, "cases": rows,
            "counts": {"cases": len(cases), "videos": len(rows), "videos_missing": missing, **counts},
            "fvd_features": fvd_features, "models": asdict(models)}


def format_table(reports: list[dict]) -> str:
    """The paper's Table 1 layout: one row per report, the columns any report has."""
    columns = [(key, title, higher) for key, title, higher in METRICS.values()
               if any(r["metrics"].get(key) is not None for r in reports)]
    header = ["Method"] + [f"{title} {'↑' if higher else '↓'}" for _, title, higher in columns]
    body = [[r.get("label") or f"run {i + 1}"] + [_cell(r["metrics"].get(key), key) for key, _, _ in columns]
            for i, r in enumerate(reports)]
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    line = lambda row: "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                                 enumerate(zip(row, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(row) for row in body])


def _cell(value: float | None, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if key == "fvd" else f"{value:.4f}"
