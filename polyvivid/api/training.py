"""PolyVividTraining: progressive two-stage training of PolyVivid (paper appendix A.2).

Defaults are the paper's: stage `identity` (single-subject samples) then stage `interaction`
(samples with 2..maxSubjects subjects; data/loader.py stage_view has the fallback), 5,000 steps
each, the first 1,000 of each at reduced resolution, global batch 256. The resolutions are ours
(the paper does not give them): 544x960 with 129 frames, and 272x480 with 33 frames for the
reduced part.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from ..model.options import (DEFAULT_INJECTION, SMOKE_PRESET, SPEC_TRANSFORMER_OPTIONS, TRAINABLE_GROUPS,
                             InjectionName, PresetName, TrainableGroup)
from .common import (API_VERSION, QUANTITY_PATTERN, ApiModel, EnvVar, ObjectMeta, SchedulingSpec, StorageSpec,
                     Finite, Suspendable, quantity_bytes)


class Resolution(ApiModel):
    height: int = Field(gt=0, multiple_of=16)
    width: int = Field(gt=0, multiple_of=16)
    frames: int = Field(gt=0, description="4k+1 frames")

    @field_validator("frames")
    @classmethod
    def _frames(cls, v: int) -> int:
        if (v - 1) % 4:
            raise ValueError(f"must be of the form 4k+1, got {v}")
        return v


class Stage(ApiModel):
    name: Literal["identity", "interaction"]
    steps: int = Field(5000, gt=0)
    low_res_steps: int = Field(1000, ge=0, description="the first steps of the stage run at lowResolution")
    max_subjects: int = Field(1, ge=1, le=8, description="most subjects a sample of this stage has")
    min_subjects: int | None = Field(None, ge=1, le=8, description="fewest subjects a sample of this stage has "
                                     "(default: 1 for identity, 2 for interaction)")
    min_samples: int = Field(1, ge=1, description="fewest samples the stage needs with minSubjects..maxSubjects "
                             "subjects; with fewer it falls back (fallback) or the run stops")
    fallback: bool = Field(True, description="with fewer than minSamples samples, train on the samples with "
                           "1..maxSubjects subjects instead (logged, and in progress.json's stage_data)")
    resolution: Resolution = Field(default_factory=lambda: Resolution(height=544, width=960, frames=129))
    low_resolution: Resolution = Field(default_factory=lambda: Resolution(height=272, width=480, frames=33))

    def parts(self) -> list[tuple[bool, Resolution]]:
        """(low_res, resolution) of each part the stage trains, in order: the low-resolution part if it has
        steps, then the rest if any."""
        return [(low_res, self.resolution_of(low_res)) for low_res, steps in
                ((True, self.low_res_steps), (False, self.steps - self.low_res_steps)) if steps]

    def resolution_of(self, low_res: bool) -> Resolution:
        return self.low_resolution if low_res else self.resolution

    @model_validator(mode="after")
    def _low_res_within_stage(self):
        if self.low_res_steps > self.steps:
            raise ValueError(f"lowResSteps ({self.low_res_steps}) exceeds steps ({self.steps})")
        return self

    @model_validator(mode="after")
    def _subject_range(self):
        # paper A.2: identity trains on single-subject data, interaction on several subjects
        if self.min_subjects is None:
            self.min_subjects = 1 if self.name == "identity" else min(2, self.max_subjects)
        if self.min_subjects > self.max_subjects:
            raise ValueError(f"minSubjects ({self.min_subjects}) exceeds maxSubjects ({self.max_subjects})")
        return self


def default_stages() -> list[Stage]:
    return [Stage(name="identity", max_subjects=1), Stage(name="interaction", max_subjects=4)]


class ModelSource(ApiModel):
    """Where the base weights come from, and PolyVivid's switches (paper Table 2)."""

    preset: PresetName | None = Field(None, description="random weights in a preset's shapes")
    seed: int = Field(0, description="seed of a preset's random weights")
    hunyuanvideo: str | None = Field(None, description="URI of a diffusers HunyuanVideo directory")
    llava: str | None = Field(None, description="URI of a transformers LLaVA directory")
    injection: InjectionName = DEFAULT_INJECTION
    use_interaction: bool = True
    use_interaction_rope: bool = True
    use_llava_fusion: bool = True
    interaction_block: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _one_source(self):
        real = self.hunyuanvideo is not None or self.llava is not None
        if (self.preset is None) == (not real):
            raise ValueError("give either preset, or hunyuanvideo and llava")
        if real and (self.hunyuanvideo is None or self.llava is None):
            raise ValueError("hunyuanvideo and llava go together")
        return self

    def base_card(self) -> dict:
        """How a PolyVivid-weights card names this base (see PolyVividPipeline.save_polyvivid)."""
        if self.preset:
            return {"preset": self.preset, "seed": self.seed}
        return {"hunyuanvideo": self.hunyuanvideo, "llava": self.llava}

    def transformer_options(self) -> dict:
        return {name: getattr(self, name) for name in SPEC_TRANSFORMER_OPTIONS}


class DatasetSource(ApiModel):
    uri: str | None = Field(None, description="URI of a dataset (its manifest.jsonl)")
    curation_job: str | None = Field(None, description="name of a CurationJob whose output to use")
    frame_windows: int = Field(4, ge=0, le=64, description="where a sample's frames may start in its clip: one of "
                               "N evenly spaced starts, first and last included; 0: anywhere (not with precompute, "
                               "which encodes every window)")

    @model_validator(mode="after")
    def _one(self):
        if (self.uri is None) == (self.curation_job is None):
            raise ValueError("give exactly one of uri or curationJob")
        return self


class PrecomputeSpec(ApiModel):
    """Encode every input training reads once, before the first step, in the training job's own pods: the
    clips' VAE latents (every frame window at every stage size, VAE tiling on), LLaVA's z_T with each
    subject's token spans and CLIP's pooled embedding for every caption variant, the subjects' latents.
    Training then reads them and never loads LLaVA, CLIP or the VAE. Resumable and idempotent: a restart
    encodes only what is missing, and a finished configuration is reused."""
    output: str | None = Field(None, description="URI under which the encodings go, in a directory per "
                               "configuration (default OUTPUT/precomputed; share one between runs to reuse them)")


class LoraSpec(ApiModel):
    rank: int = Field(64, ge=1, le=1024)
    alpha: float = Field(64.0, gt=0)


class OptimizerSpec(ApiModel):
    name: Literal["adamw"] = "adamw"
    learning_rate: float = Field(1e-4, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    beta1: float = Field(0.9, gt=0, lt=1)
    beta2: float = Field(0.999, gt=0, lt=1)
    warmup_steps: int = Field(100, ge=0)
    schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0 disables clipping")


class DataLoaderSpec(ApiModel):
    """Each rank's sample loading: worker processes read, decode and scale the samples of the coming steps
    while the GPU trains on the current one."""
    workers: int = Field(2, ge=0, le=64, description="loader processes per rank; 0 loads in the training process")
    prefetch_steps: int = Field(1, ge=1, le=64, description="steps of samples each worker keeps ready (in shared "
                                "memory: one 129x544x960 sample is 0.19 GiB)")


# defaults of a node's pod, per GPU (and the least, for CPU training): an 8-GPU H100/H200 node has 2 TiB and
# about 200 cores, of which the pod takes 96 cores, 768 GiB (64 GiB of it /dev/shm)
CPUS_PER_GPU, MIN_CPUS = 12, 4
MEMORY_GIB_PER_GPU, MIN_MEMORY_GIB = 96, 16
SHM_GIB_PER_GPU, MIN_SHM_GIB = 8, 1


class ResourcesSpec(ApiModel):
    nodes: int = Field(1, ge=1, le=512)
    gpus_per_node: int = Field(8, ge=0, le=16, description="0 trains on CPU (one process per node)")
    gpu_memory_gib: float = Field(80.0, gt=0, le=1024, description="memory of one GPU (H100: 80, H200: 141); "
                                  "the operator refuses a spec the memory planner says cannot fit")
    cpus_per_node: int | None = Field(None, ge=1, le=1024, description="CPU cores of each node's pod (requests = "
                                      f"limits); default {CPUS_PER_GPU} a GPU, at least {MIN_CPUS}")
    memory_per_node: str | None = Field(None, pattern=QUANTITY_PATTERN, description="memory of each node's pod "
                                        f"(requests = limits), /dev/shm included; default {MEMORY_GIB_PER_GPU}Gi a "
                                        f"GPU, at least {MIN_MEMORY_GIB}Gi")
    shm_size: str | None = Field(None, pattern=QUANTITY_PATTERN, description="/dev/shm of each node's pod (NCCL, "
                                 f"data loader workers); default {SHM_GIB_PER_GPU}Gi a GPU, at least {MIN_SHM_GIB}Gi. "
                                 "It is memory: it counts in memoryPerNode, and may be at most half of it")
    ephemeral_storage: str = Field("50Gi", pattern=QUANTITY_PATTERN, description="ephemeral-storage request of "
                                   "each node's pod (logs, scratch, a checkpoint staged for upload); a weights cache "
                                   "of the pod's own (weightsCache.size) is added to it")
    extended: dict[str, int] = Field(default_factory=dict, description="other resources each node's pod asks for "
                                     "(requests = limits), e.g. the RDMA device plugin's {rdma/rdma_shared_device_a: 1}"
                                     " with network infiniband or roce")

    @property
    def world_size(self) -> int:
        return self.nodes * max(self.gpus_per_node, 1)

    @property
    def cpus(self) -> int:
        return self.cpus_per_node or max(MIN_CPUS, CPUS_PER_GPU * self.gpus_per_node)

    @property
    def memory(self) -> str:
        return self.memory_per_node or f"{max(MIN_MEMORY_GIB, MEMORY_GIB_PER_GPU * self.gpus_per_node)}Gi"

    @property
    def shm(self) -> str:
        return self.shm_size or f"{max(MIN_SHM_GIB, SHM_GIB_PER_GPU * self.gpus_per_node)}Gi"

    @model_validator(mode="after")
    def _shm_within_memory(self):
        if 2 * quantity_bytes(self.shm) > quantity_bytes(self.memory):
            raise ValueError(f"shmSize {self.shm} is more than half of memoryPerNode {self.memory}: /dev/shm is "
                             "memory, and counts in it")
        return self


class WeightsCache(ApiModel):
    """Where a node's pod keeps the base weights it downloads (POLYVIVID_CACHE): once per node, not once per
    container restart."""

    persistent_volume_claim: str | None = Field(None, description="a PVC to keep them in: ReadWriteMany (NFS, "
                                                "CephFS, Lustre), every node shares it and each file downloads once; "
                                                "ReadWriteOnce only for a single node")
    size: str = Field("200Gi", pattern=QUANTITY_PATTERN, description="without a PVC, each pod's own emptyDir of this "
                      "size (HunyuanVideo + LLaVA: about 45 GB): it survives container restarts, not a new pod")



EvalMetric = Literal["face", "dino", "clip-b", "clip-l", "temporal", "fvd"]
_EVAL_METRIC_MODELS: dict[str, tuple[str, ...]] = {
    "face": ("face_detector", "face_embedder"), "dino": ("dinov2", "grounding", "sam2"), "clip-b": ("clip_b",),
    "clip-l": ("clip_l",), "temporal": ("clip_b",)}


def eval_models_needed(metric: str, with_i3d: bool) -> tuple[str, ...]:
    """The evaluation models (EvalModelsSpec field names) a metric uses; FVD uses I3D when one is
    given, else CLIP-B features."""
    if metric == "fvd":
        return ("i3d",) if with_i3d else ("clip_b",)
    return _EVAL_METRIC_MODELS[metric]


class EvalModelsSpec(ApiModel):
    """Where the evaluation models are: directories in Hugging Face layout or TorchScript / .pt2 files,
    as paths or s3:// URIs (never fetched from a hub)."""
    clip_b: str | None = Field(None, description="CLIP ViT-B directory: CLIP-B, temporal consistency")
    clip_l: str | None = Field(None, description="CLIP ViT-L directory: CLIP-L")
    dinov2: str | None = Field(None, description="DINOv2 directory: DINO-sim")
    grounding: str | None = Field(None, description="Florence-2 directory: finds subjects for DINO-sim")
    sam2: str | None = Field(None, description="SAM2 directory: cuts subjects out for DINO-sim")
    face_detector: str | None = Field(None, description="face detector file: Face-sim")
    face_embedder: str | None = Field(None, description="ArcFace-style embedder file: Face-sim")
    i3d: str | None = Field(None, description="I3D file for FVD (else CLIP-B features)")
    preset: Literal[SMOKE_PRESET] | None = Field(None, description="random tiny models for all (smoke tests only)")


class EvaluationSpec(ApiModel):
    """After training: generate every case of a test set with the final weights and score the videos
    (OUTPUT/eval/videos/, OUTPUT/eval/report.json; the means go to progress.json and the status)."""
    cases: str = Field(min_length=1, description="URI of the test set (cases.jsonl from `polyvivid eval-cases`)")
    metrics: list[EvalMetric] = Field(default_factory=lambda: ["clip-b", "temporal"], min_length=1)
    models: EvalModelsSpec = Field(default_factory=EvalModelsSpec)
    max_cases: int | None = Field(None, ge=1, description="evaluate only the first N cases")
    real_videos: str | None = Field(None, description="URI of real videos (*.mp4) for FVD (else the cases' own)")
    num_frames: int = Field(33, ge=1, le=257)
    height: int = Field(256, ge=16, le=2048)
    width: int = Field(256, ge=16, le=2048)
    steps: int = Field(30, ge=1, le=200, description="denoising steps per video")
    guidance: float = Field(6.0, ge=0, le=30)
    max_frames: int | None = Field(None, ge=2, description="score N evenly spaced frames per video (default all)")

    @model_validator(mode="after")
    def _models_for_metrics(self):
        if self.models.preset:
            return self
        for metric in self.metrics:
            needs = eval_models_needed(metric, bool(self.models.i3d))
            missing = [n for n in needs if not getattr(self.models, n)]
            if missing:
                names = ", ".join(f"models.{to_camel(n)}" for n in missing)
                raise ValueError(f"metric {metric!r} needs {names}")
        return self


class TrainingSpec(Finite, Suspendable):
    model: ModelSource
    dataset: DatasetSource
    output: str = Field(min_length=1, description="URI where checkpoints, progress.json and final/ go")
    stages: list[Stage] = Field(default_factory=default_stages, min_length=1)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    trainable: list[TrainableGroup] = Field(
        default_factory=lambda: list(TRAINABLE_GROUPS), min_length=1,
        description="PolyVivid's parameter groups to train: the injection modules, the interaction LoRA, "
                    "the LoRA on the double blocks' Q/K/V; everything else stays frozen")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    global_batch_size: int = Field(256, ge=1)
    data_loader: DataLoaderSpec = Field(default_factory=DataLoaderSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    backend: Literal["trainjob", "pytorchjob"] = Field(
        "trainjob", description="the training child: a Kubeflow Trainer v2 TrainJob on the ClusterTrainingRuntime "
        "the chart installs (trainjob), or a Kubeflow training-operator v1 PyTorchJob (pytorchjob), for clusters "
        "on the v1 operator")
    precision: Literal["bf16", "fp32"] = "bf16"
    parallelism: Literal["fsdp", "ddp"] = "fsdp"
    context_parallel: int = Field(1, ge=1, le=64, description="ranks that share each sample, its video and text "
                                  "tokens split between them (Ulysses all-to-all in every attention): what lets "
                                  "720p x 129 frames fit 80 GiB GPUs. It divides the GPUs (nodes x gpusPerNode) "
                                  "and the model's attention heads (24 for HunyuanVideo); globalBatchSize is then "
                                  "per data-parallel group, (nodes x gpusPerNode) / contextParallel of them")
    activation_checkpointing: bool = True
    checkpoint_interval: int = Field(500, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="good checkpoints kept; older ones are deleted once a "
                                                      "newer one is complete")
    progress_interval: int = Field(10, ge=1, description="steps between progress.json updates")
    metrics_port: int = Field(9090, ge=0, le=65535, description="Prometheus port on rank 0; 0 disables")
    seed: int = 0
    storage: StorageSpec = Field(default_factory=StorageSpec)
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    env: list[EnvVar] = Field(default_factory=list, description="env of the training containers; a name given "
                              "here replaces the network preset's")
    env_from: list[dict[str, Any]] = Field(default_factory=list, description="envFrom of the training containers "
                                           "(configMapRef / secretRef sources); backend pytorchjob only (a TrainJob "
                                           "takes env only: name each variable with valueFrom)")
    network: Literal["auto", "infiniband", "roce", "tcp"] = Field(
        "auto", description="NCCL settings for the nodes' fabric: infiniband, roce (RoCE v2) or tcp presets "
        "(operator/polyvivid_operator/children/training_pod.py NCCL_PRESETS, listed in the README); auto leaves NCCL "
        "to detect it")
    termination_grace_period_seconds: int = Field(900, ge=30, le=86400, description="seconds from SIGTERM to SIGKILL "
                                                  "of a training pod: the trainer finishes its step and uploads a "
                                                  "checkpoint within them (13B: minutes)")
    weights_cache: WeightsCache = Field(default_factory=WeightsCache)
    evaluation: EvaluationSpec | None = Field(None, description="score the final weights on a test set")
    precompute: PrecomputeSpec | None = Field(None, description="encode the inputs once before training "
                                              "(`precompute: {}` for the defaults); without it every step encodes "
                                              "its samples with the frozen encoders on every GPU")

    @model_validator(mode="after")
    def _stage_names_unique(self):
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        return self

    @model_validator(mode="after")
    def _windows_for_precompute(self):
        if self.precompute is not None and self.dataset.frame_windows == 0:
            raise ValueError("precompute encodes every frame window a sample can read: it needs "
                             "dataset.frameWindows >= 1 (0 lets a window start anywhere)")
        return self

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def transformer_options(self) -> dict:
        """PolyVividTransformer's options for this run: the model's switches and the LoRA's rank and alpha."""
        return dict(self.model.transformer_options(), lora_rank=self.lora.rank, lora_alpha=self.lora.alpha)


class PolyVividTraining(ApiModel):
    api_version: Literal["polyvivid.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["PolyVividTraining"] = "PolyVividTraining"
    metadata: ObjectMeta
    spec: TrainingSpec
    # written by the operator; its schema is status.TrainingStatus (see crds.py). Not validated with the spec:
    # a spec is never refused over what its status says
    status: dict | None = None
