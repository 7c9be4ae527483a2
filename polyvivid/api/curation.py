"""CurationJob: raw videos -> the multi-subject dataset that training reads (paper section 3, A.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from .common import API_VERSION, ApiModel, ObjectMeta, SchedulingSpec, StorageSpec, Finite, Suspendable, WorkerShape


class ModelRef(ApiModel):
    """A model for one stage: a path or s3:// URI in its library's layout, or `preset: tiny`, random
    weights in tiny shapes that make a junk dataset (smoke tests of the machinery only). Nothing
    defaults to it: a spec that wants random models says so, stage by stage."""

    uri: str | None = None
    preset: Literal["tiny"] | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.uri is None) == (self.preset is None):
            raise ValueError("give exactly one of uri or preset")
        return self


class StageResources(ApiModel):
    """Ray resources of one model stage: an actor pool of `actors` replicas."""

    actors: int = Field(1, ge=1, le=1024)
    cpus: float = Field(0.5, ge=0)
    gpus: float = Field(0.0, ge=0, description="GPU fraction per actor, e.g. 0.25 to pack four on a GPU")


class SplitSpec(ApiModel):
    min_clip_seconds: float = Field(2.0, gt=0)
    max_clip_seconds: float = Field(20.0, gt=0)
    shot_threshold: float = Field(0.35, gt=0, le=2, description="histogram distance between frames that starts a new shot")
    max_fps: float = Field(24.0, gt=0, description="clips keep their source frame rate up to this (above it, "
                           "frames are dropped evenly); 24 is the rate HunyuanVideo generates at")

    @model_validator(mode="after")
    def _range(self):
        if self.min_clip_seconds > self.max_clip_seconds:
            raise ValueError("minClipSeconds exceeds maxClipSeconds")
        return self


class FilterSpec(ApiModel):
    black_border_threshold: float = Field(16.0, ge=0, le=255, description="mean luma under which a border row/column is black")
    min_motion: float = Field(0.5, ge=0, description="mean absolute frame difference (0-255) under which a clip is static")
    transition_threshold: float = Field(0.35, gt=0, le=2, description="histogram distance inside a clip that marks a transition")
    subtitle_detector: ModelRef | None = Field(None, description="image classifier; unset: skipped")
    watermark_detector: ModelRef | None = Field(None, description="image classifier; unset: skipped")
    detector_threshold: float = Field(0.5, gt=0, le=1, description="mean positive probability that drops a clip")
    quality_scorer: ModelRef | None = Field(None, description="one-output image model; unset: skipped")
    min_quality: float = 0.0


class CaptionSpec(ApiModel):
    model: ModelRef | None = Field(None, description="Qwen2.5-VL (required)")
    max_new_tokens: int = Field(128, ge=1)
    resources: StageResources = Field(default_factory=StageResources)


# Florence-2's probability that a box follows the phrase at which the phrase is found (data/grounding.py)
MIN_GROUNDING_SCORE = 0.5


class GroundingSpec(ApiModel):
    model: ModelRef | None = Field(None, description="Florence-2 (required)")
    frames_per_clip: int = Field(6, ge=1, le=64, description="frames sampled per clip for grounding")
    min_score: float = Field(MIN_GROUNDING_SCORE, ge=0, le=1,
                             description="Florence-2's probability that a box follows the phrase, needed to count it "
                                         "found; below it the subject is absent from that frame")
    resources: StageResources = Field(default_factory=StageResources)


class SegmentationSpec(ApiModel):
    """SAM2, and the actors that also run the CLIP check and consolidation."""

    model: ModelRef | None = Field(None, description="SAM2 (required)")
    resources: StageResources = Field(default_factory=StageResources)


class ClipScoreSpec(ApiModel):
    model: ModelRef | None = Field(None, description="CLIP (required)")
    min_score: float = Field(0.2, ge=-1, le=1, description="CLIP cosine similarity of cut-out and phrase to keep it")


class ConsolidationSpec(ApiModel):
    max_distance: float = Field(0.3, gt=0, le=2, description="cosine distance under which two detections agree")
    reference_images: int = Field(1, ge=1, le=8, description="reference images kept per subject")


# (field, YAML name) of the settings whose `model` every run needs, and of the optional filter models
REQUIRED_MODELS = (("caption", "caption"), ("grounding", "grounding"), ("segmentation", "segmentation"),
                   ("clip_score", "clipScore"))
FILTER_MODELS = (("subtitle_detector", "subtitleDetector"), ("watermark_detector", "watermarkDetector"),
                 ("quality_scorer", "qualityScorer"))


class CurationSpec(Finite, Suspendable):
    input: str = Field(min_length=1, description="URI prefix of the raw videos (*.mp4, *.mov, *.mkv, *.webm)")
    output: str = Field(min_length=1, description="URI where the dataset (manifest.jsonl, summary.json) goes")
    split: SplitSpec = Field(default_factory=SplitSpec)
    filters: FilterSpec = Field(default_factory=FilterSpec)
    caption: CaptionSpec = Field(default_factory=CaptionSpec)
    grounding: GroundingSpec = Field(default_factory=GroundingSpec)
    segmentation: SegmentationSpec = Field(default_factory=SegmentationSpec)
    clip_score: ClipScoreSpec = Field(default_factory=ClipScoreSpec)
    consolidation: ConsolidationSpec = Field(default_factory=ConsolidationSpec)
    ray_address: str | None = Field(None, description="an existing Ray cluster (default: start one locally)")
    workers: int = Field(1, ge=0, le=1000, description="worker pods of the RayCluster the operator creates")
    worker: WorkerShape = Field(default_factory=WorkerShape)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)

    @model_validator(mode="after")
    def _required_models(self):
        missing = [f"{alias}.model" for name, alias in REQUIRED_MODELS if getattr(self, name).model is None]
        if missing:
            raise ValueError(f"no model for {', '.join(missing)}: give each `uri:` (a path or s3:// URI in the "
                             "model's own layout), or `preset: tiny` for random weights (a smoke test: the "
                             "dataset is junk)")
        return self

    def random_model_stages(self) -> list[str]:
        """The spec fields (their YAML names) whose model is the random tiny preset."""
        refs = [(f"{alias}.model", getattr(self, name).model) for name, alias in REQUIRED_MODELS]
        refs += [(f"filters.{alias}", getattr(self.filters, name)) for name, alias in FILTER_MODELS]
        return [field for field, ref in refs if ref is not None and ref.preset is not None]


@dataclass(frozen=True)
class CurationStage:
    """One step of `polyvivid curate`. Its name is its one spelling: the CurationSpec field that
    configures it (where it has settings), the stage in summary.json and in a reject, the metrics tag."""

    name: str
    runner: str | None  # the function or actor class in polyvivid.data.curation; None: runs inside the previous runner
    what: str
    actor_pool: bool = False  # a pool of Ray actors sized by spec.<name>.resources; else light CPU tasks
    fans_out: bool = False  # one row in (a video), many out (its clips)
    # its rejects depend on models or caption files, not on the video itself (a better model, a caption
    # beside the video can pass them): a re-run retries the video
    fixable: bool = False


# In pipeline order: read by the pipeline (polyvivid/data/curation.py), the operator's validation and
# the docs. A new stage is an entry here (with its settings model in CurationSpec) and its runner.
CURATION_STAGES = (
    CurationStage("split", "split_and_filter", "decode, cut at shot changes, keep clips within the length range",
                  fans_out=True),
    CurationStage("filters", None, "crop black borders, drop transitions and static clips, cap the frame rate"),
    CurationStage("caption", "CaptionStage", "caption files beside the video, else the MLLM; subject phrases",
                  actor_pool=True, fixable=True),
    CurationStage("grounding", "GroundingStage", "Florence-2 box of every phrase, in the caption, on sampled frames",
                  actor_pool=True, fixable=True),
    CurationStage("segmentation", "SegmentationStage",
                  "SAM2 in each box, largest object, cut-out; CLIP score vs the phrase (clipScore)",
                  actor_pool=True, fixable=True),
    CurationStage("consolidation", None, "maximum cliques of CLIP features; every clique kept is a subject",
                  fixable=True),
    CurationStage("write", "write_clip", "clip, subject images, manifest.jsonl and summary.json to the output"),
)
FIXABLE_STAGES = frozenset(stage.name for stage in CURATION_STAGES if stage.fixable)
CURATION_STAGE_NAMES = tuple(stage.name for stage in CURATION_STAGES)


class CurationJob(ApiModel):
    api_version: Literal["polyvivid.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["CurationJob"] = "CurationJob"
    metadata: ObjectMeta
    spec: CurationSpec
    # written by the operator; its schema is status.CurationStatus (see crds.py). Not validated with the spec:
    # a spec is never refused over what its status says
    status: dict | None = None
