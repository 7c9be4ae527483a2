"""PolyVividService: PolyVivid served over HTTP by Ray Serve (locally, or in a KubeRay RayService)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..model.options import AttentionBackend, PresetName
from .common import (API_VERSION, MAX_FRAMES, MAX_GUIDANCE, MAX_SEED, MAX_SIDE, MAX_STEPS, ApiModel, ObjectMeta,
                     SchedulingSpec, StorageSpec, Suspendable, WorkerShape)


class ServedModel(ApiModel):
    """Which weights to serve: exactly one of a PolyVividTraining's final weights, a URI, or a preset."""

    training: str | None = Field(None, description="name of a PolyVividTraining whose final/ to serve once it succeeded")
    uri: str | None = Field(None, description="a checkpoint or PolyVivid weights (path or s3:// URI)")
    preset: PresetName | None = None
    base_model: str | None = Field(None, description="URI of the HunyuanVideo + LLaVA base, when the weights need one")

    @model_validator(mode="after")
    def _one(self):
        if sum(x is not None for x in (self.training, self.uri, self.preset)) != 1:
            raise ValueError("give exactly one of training, uri or preset")
        return self


class Replicas(ApiModel):
    min: int = Field(1, ge=0, le=1000)
    max: int = Field(1, ge=1, le=1000)
    gpus_per_replica: float = Field(1.0, ge=0, le=8)
    cpus_per_replica: float = Field(1.0, ge=0, le=256, description="Ray logical CPUs reserved per generator replica")
    max_ongoing_requests: int = Field(1, ge=1, le=64, description="generations a replica runs at once")
    sequence_parallel: int | None = Field(None, ge=1, le=8, description="processes that run each request together "
                                          "(Ulysses sequence parallelism: each holds the model and 1/N of the "
                                          "video's tokens), one per GPU. Default: gpusPerReplica (a whole number), "
                                          "else 1; on CPU replicas it sets the degree alone")

    @model_validator(mode="after")
    def _bounds(self):
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) exceeds max ({self.max})")
        gpus, degree = self.gpus_per_replica, self.sequence_parallel
        if gpus > 1 and gpus != int(gpus):
            raise ValueError(f"gpusPerReplica above 1 must be a whole number of GPUs, got {gpus:g}")
        if gpus > 1 and degree is not None and degree != gpus:
            raise ValueError(f"gpusPerReplica {gpus:g} runs each request on {gpus:g} GPUs, one process each: "
                             f"sequenceParallel must be {gpus:g} (or left out), got {degree}")
        if 0 < gpus < 1 and (degree or 1) > 1:
            raise ValueError(f"sequenceParallel {degree} needs a GPU per process; gpusPerReplica is {gpus:g}")
        return self

    @property
    def degree(self) -> int:
        """Processes per replica (the sequence-parallel degree)."""
        if self.sequence_parallel is not None:
            return self.sequence_parallel
        return int(self.gpus_per_replica) if self.gpus_per_replica >= 1 else 1

    @property
    def cpus_per_process(self) -> float:
        return self.cpus_per_replica / self.degree

    @property
    def gpus_per_process(self) -> float:
        return self.gpus_per_replica / self.degree


class Limits(ApiModel):
    max_subjects: int = Field(4, ge=1, le=8)
    max_frames: int = Field(129, ge=1, le=MAX_FRAMES)
    max_height: int = Field(720, ge=16, le=MAX_SIDE, multiple_of=16)
    max_width: int = Field(1280, ge=16, le=MAX_SIDE, multiple_of=16)
    max_steps: int = Field(50, ge=1, le=MAX_STEPS)
    max_request_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="largest accepted request body")
    queue_length: int = Field(64, ge=1, description="accepted jobs not yet finished; beyond it: 429")

    @model_validator(mode="after")
    def _frames(self):
        if (self.max_frames - 1) % 4:
            raise ValueError(f"maxFrames must be of the form 4k+1, got {self.max_frames}")
        return self


class GenerationDefaults(ApiModel):
    num_frames: int = Field(129, ge=1, le=MAX_FRAMES)
    height: int = Field(544, ge=16, le=MAX_SIDE, multiple_of=16)
    width: int = Field(960, ge=16, le=MAX_SIDE, multiple_of=16)
    steps: int = Field(50, ge=1, le=MAX_STEPS)
    guidance: float = Field(6.0, ge=0, le=MAX_GUIDANCE, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    step_cache_threshold: float = Field(0.0, ge=0, le=1, allow_inf_nan=False, description="skip the blocks after "
                                        "the first on steps where the first block's output changed by less than "
                                        "this, relatively (first-block cache); 0 runs every block. A request may "
                                        "set its own (stepCacheThreshold)")


class InferenceMemory(ApiModel):
    """Where a replica keeps what while it generates (PolyVividPipeline.place). The defaults fit a 720p x
    129-frame request in 80 GiB with HunyuanVideo 13B + LLaVA 8B."""
    vae_tiling: bool = Field(True, description="decode (and encode) in tiles: 3.6 GB instead of 37 GB at 720p")
    offload_encoders: bool = Field(True, description="keep LLaVA and CLIP in host memory, on the GPU only while a "
                                   "request's prompt and subjects are encoded (16 GiB off the GPU while denoising)")
    fp8_weights: bool = Field(False, description="store the transformer's weights in float8 (e4m3), computing in "
                              "bf16 (diffusers layerwise casting): half the weight memory, for smaller GPUs")
    group_offload: bool = Field(False, description="keep the transformer's blocks in host memory and bring each to "
                                "the GPU as it runs (diffusers group offloading): slower, for the smallest GPUs")
    attention_backend: AttentionBackend | None = Field(None, description="diffusers attention backend (default: "
                                                       "PyTorch's scaled_dot_product_attention, 'native')")
    encoding_cache_entries: int = Field(32, ge=0, le=4096, description="requests whose encodings (LLaVA, CLIP, "
                                        "the subjects' latents) a replica keeps in host memory: the same prompt and "
                                        "subjects again skip the encoders; 0 keeps none")


class TokenSecretRef(ApiModel):
    name: str = Field(min_length=1)
    key: str = Field("token", min_length=1)


class ServiceSpec(Suspendable):
    model: ServedModel
    replicas: Replicas = Field(default_factory=Replicas)
    limits: Limits = Field(default_factory=Limits)
    defaults: GenerationDefaults = Field(default_factory=GenerationDefaults)
    memory: InferenceMemory = Field(default_factory=InferenceMemory)
    output: str = Field(min_length=1, description="URI where job records and videos go (jobs/ID/...)")
    api_token_secret_ref: TokenSecretRef | None = Field(None, description="Secret with a bearer token for /v1")
    allow_unauthenticated: bool = Field(False, description="serve /v1 with no token: anyone who reaches the port "
                                        "can submit, read and cancel jobs. Without it a service needs "
                                        "apiTokenSecretRef (in the cluster) or a token (locally)")
    worker: WorkerShape = Field(default_factory=WorkerShape, description="the RayCluster's worker pods; "
                                "the operator scales them between the counts that replicas.min and .max need")
    storage: StorageSpec = Field(default_factory=StorageSpec)
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)

    @model_validator(mode="after")
    def _auth_one_way(self):
        if self.allow_unauthenticated and self.api_token_secret_ref is not None:
            raise ValueError("give apiTokenSecretRef or allowUnauthenticated, not both")
        return self

    @model_validator(mode="after")
    def _defaults_within_limits(self):
        d, lim = self.defaults, self.limits
        for name, value, bound in (("numFrames", d.num_frames, lim.max_frames), ("height", d.height, lim.max_height),
                                   ("width", d.width, lim.max_width), ("steps", d.steps, lim.max_steps)):
            if value > bound:
                raise ValueError(f"defaults.{name} ({value}) exceeds its limit ({bound})")
        return self


class PolyVividService(ApiModel):
    api_version: Literal["polyvivid.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["PolyVividService"] = "PolyVividService"
    metadata: ObjectMeta
    spec: ServiceSpec
    # written by the operator; its schema is status.ServiceStatus (see crds.py). Not validated with the spec:
    # a spec is never refused over what its status says
    status: dict | None = None
