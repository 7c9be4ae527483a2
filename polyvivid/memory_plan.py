"""The memory planner: per GPU, for each stage and resolution of a PolyVividTraining, the estimated
parameters, gradients, optimizer state, activations and peak, and whether they fit; and for a
PolyVividService, each phase of its largest request (`polyvivid plan`, and the operator, which refuses a
spec that cannot fit).

An analytic model, torch-free so that the operator can run it:
- Parameter counts are closed-form in the transformer config (diffusers' HunyuanVideo blocks, PolyVivid's
  interaction copy, injection modules and LoRA); a test checks them against the model built on the meta
  device for every injection strategy. The frozen encoders' counts are the presets' (also checked).
- Storage follows the trainer (train.trainer.build_transformer): frozen weights in the compute dtype (bf16 on
  GPUs), PolyVivid's own parameters in fp32 with fp32 gradients and AdamW's two fp32 moments. FSDP2 shards
  all of it over the data-parallel ranks and all-gathers one block (and its injection) at a time in the
  compute dtype, the next one prefetched; DDP replicates everything.
- Activations are linear in tokens (flash / memory-efficient attention keeps no token x token matrix), in
  units of the hidden width D per token, measured on the real modules (tests check the constants with
  saved-tensor hooks): with activation checkpointing each block keeps its inputs, and the backward
  recomputes one block at a time, whose own activations are the recompute peak. One sample at a time.
- Context parallelism (spec.contextParallel N) splits a sample's video and text tokens over N ranks:
  a rank's block activations are those of its 1/N of the tokens, plus the Ulysses all-to-all buffers
  (Q, K, V and the output, sent and received) during one attention. FSDP2 shards over all ranks.
- Reading raw clips, the frozen encoders (LLaVA, CLIP, the VAE) sit on every GPU, in the compute dtype; with
  spec.precompute training never builds them (the precompute phase before it holds only the encoders).
- RESERVED_GIB covers the CUDA context, NCCL and cuBLAS workspaces and allocator fragmentation.
The planner is validated against the measured peak of a training step at a small shape on CPU (tests).

Serving (service_plan) holds no gradients: a replica process keeps the transformer's weights (bf16, fp8
with memory.fp8Weights, two blocks with memory.groupOffload), the VAE, the encoders while a request is
encoded (always, with memory.offloadEncoders false), and the working set of one block at a time
(INFERENCE_ACTIVATIONS per local token, measured on the real modules), plus the
step cache's residuals. Rank 0 decodes: VAE_DECODE_BYTES_PER_PIXEL untiled, at most VAE_TILED_DECODE with
tiling, plus the decoded video itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .api.training import TrainingSpec

GIB = 2**30
RESERVED_GIB = 3.0
# Activation constants: elements saved for the backward, per token, in units of the hidden width D.
SAVED_WITH_CHECKPOINTING = {"double_video": 1.0, "double_text": 1.0, "injection_video": 1.0, "single": 1.0}
BLOCK_ACTIVATIONS = {"double_video": 12.0, "double_text": 12.0, "injection_video": 14.0, "single": 11.5}
BACKWARD_TRANSIENT = 2.0  # the gradients of a block's inputs and outputs while its backward runs
OUTSIDE_BLOCKS = 1.0  # per video token: the final norm's and projection's inputs
ULYSSES_TRANSIENT = 8.0  # per local token with context parallelism: Q, K, V, output, each sent and received
LATENT_FRAMES_PER_FRAME = 4  # the causal VAE: 1 + 4k frames -> 1 + k latent frames
SPATIAL_DOWN = 8  # VAE spatial compression; the transformer's patch divides further
# The frozen encoders of each preset (LLaVA, CLIP-L text, the VAE), counted on the meta device.
ENCODER_PARAMS = {"hunyuan-13b": {"llava": 8_355_272_704, "clip_text": 123_060_480, "vae": 246_478_803},
                  "tiny": {"llava": 73_824, "clip_text": 7_696, "vae": 790_531}}
SHAPE_OF_REAL_WEIGHTS = "hunyuan-13b"  # a spec with hunyuanvideo/llava URIs: the published models' shapes
TEXT_TOKENS = 256  # HunyuanVideo's text length (LLaVA prompt template, cropped)
# D-units a token, no grad: one block's working set, measured as a no-grad forward's peak RSS
# (benchmarks/step_memory.py inference; tests/serve/test_service_plan.py)
INFERENCE_ACTIVATIONS = 19.0
STEP_CACHE_RESIDUALS = 3.0  # D-units a video token: the cached first and rest residuals and this step's first
# HunyuanVideo's VAE decode of 720p x 129 frames measured 37 GB untiled and 3.6 GB tiled (issue 22): the
# untiled decode grows with the output's pixels, the tiled one is bounded by its tile
VAE_DECODE_BYTES_PER_PIXEL = 37e9 / (129 * 720 * 1280)
VAE_TILED_DECODE = 3.6e9


def hidden_width(config: dict) -> int:
    """D, the transformer's hidden width (heads x head dim): the unit the activation constants count in."""
    return config.get("num_attention_heads", 24) * config.get("attention_head_dim", 128)


def preset_name(spec) -> str:
    """The preset whose shapes a spec's model has: its own, or the published weights' for URIs."""
    return spec.model.preset or SHAPE_OF_REAL_WEIGHTS


def _linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def _lora(i: int, o: int, rank: int) -> int:
    return rank * (i + o)


@dataclass(frozen=True)
class ParameterCounts:
    base: int  # HunyuanVideo's transformer
    interaction_copy: int  # the interaction block's frozen copy of a double block
    own: dict[str, int]  # PolyVivid's own, by trainable group
    largest_unit: int  # the largest FSDP unit: a double block with its injection module
    root_unit: int  # what FSDP2's root unit holds (embedders, token refiner, final layer): kept gathered

    @property
    def own_total(self) -> int:
        return sum(self.own.values())


def parameter_counts(config: dict) -> ParameterCounts:
    """Counts of a PolyVividTransformer with `config` (its constructor's arguments), in closed form."""
    d = hidden_width(config)
    hd = config.get("attention_head_dim", 128)
    f = int(d * config.get("mlp_ratio", 4.0))
    text, pooled = config.get("text_embed_dim", 4096), config.get("pooled_projection_dim", 768)
    c_in, c_out = config.get("in_channels", 16), config.get("out_channels", 16)
    p, pt = config.get("patch_size", 2), config.get("patch_size_t", 1)
    layers, singles = config.get("num_layers", 20), config.get("num_single_layers", 40)
    refiners, rank = config.get("num_refiner_layers", 2), config.get("lora_rank", 16)
    injection = config.get("injection", "cross_attention")

    ffn = _linear(d, f) + _linear(f, d)
    double = 2 * _linear(d, 6 * d) + 8 * _linear(d, d) + 4 * hd + 2 * ffn
    single = 3 * _linear(d, d) + 2 * hd + _linear(d, 3 * d) + _linear(d, f) + _linear(d + f, d)
    refiner = 4 * d + 4 * _linear(d, d) + ffn + _linear(d, 2 * d)
    embedders = (c_in * pt * p * p * d + d  # x_embedder (Conv3d)
                 + _linear(text, d) + _linear(256, d) + _linear(d, d) + _linear(text, d) + _linear(d, d)  # context
                 + refiners * refiner
                 + (2 if config.get("guidance_embeds", True) else 1) * (_linear(256, d) + _linear(d, d))
                 + _linear(pooled, d) + _linear(d, d))
    base = embedders + layers * double + singles * single + _linear(d, 2 * d) + _linear(d, pt * p * p * c_out)

    own = {"identity_injection": 0, "lora_blocks": 0, "lora_interaction": 0}
    interaction_copy, per_injection = 0, 0
    if config.get("use_interaction", True):
        block_lora = 6 * _lora(d, d, rank) + 2 * (_lora(d, f, rank) + _lora(f, d, rank))
        if config.get("interaction_weights", "copy") == "copy":
            interaction_copy = double
            own["lora_interaction"] = block_lora
        else:
            own["lora_blocks"] += block_lora  # freeze_base: the shared block's LoRA counts with the blocks'
    if injection == "cross_attention":
        per_injection = _linear(d, d) + 3 * _lora(d, d, rank) + _lora(d, f, rank) + _lora(f, d, rank)
        own["identity_injection"] = layers * _linear(d, d)
        own["lora_blocks"] += layers * (per_injection - _linear(d, d))
    elif injection == "adapter":
        per_injection = 3 * _linear(d, d)
        own["identity_injection"] = layers * per_injection
    elif injection == "token_concat":
        own["lora_blocks"] += layers * 3 * _lora(d, d, rank)
    root = base - layers * double - singles * single
    return ParameterCounts(base, interaction_copy, own, double + per_injection, root)


def video_tokens(frames: int, height: int, width: int, config: dict) -> int:
    p, pt = config.get("patch_size", 2), config.get("patch_size_t", 1)
    latent_frames = (frames - 1) // LATENT_FRAMES_PER_FRAME + 1
    return math.ceil(latent_frames / pt) * (height // SPATIAL_DOWN // p) * (width // SPATIAL_DOWN // p)


@dataclass(frozen=True)
class Setup:
    """What one GPU's memory depends on besides the sample's tokens."""
    config: dict  # PolyVividTransformer config
    trainable: tuple[str, ...]
    data_parallel: int  # ranks FSDP shards over (DDP: replicas)
    parallelism: str = "fsdp"
    activation_checkpointing: bool = True
    compute_bytes: int = 2  # bf16; 4 on CPU (fp32)
    encoder_params: int = 0  # frozen encoders held on the GPU (0 once inputs are precomputed)
    context_parallel: int = 1  # ranks a sample's tokens are split over
    samples_per_rank: int = 1  # micro-batches accumulated per optimizer step
    reserved_gib: float = RESERVED_GIB
    subject_tokens: int = 576  # <image> tokens a subject adds to the fused prompt (LLaVA's vision grid)


@dataclass(frozen=True)
class Estimate:
    params: float  # bytes, like every field
    grads: float
    optimizer: float
    gathered: float  # FSDP's all-gathered blocks (current and prefetched)
    encoders: float
    activations: float
    reserved: float

    @property
    def peak(self) -> float:
        return sum(asdict(self).values())


def activation_bytes(config: dict, video: int, text: int, checkpointing: bool, element_bytes: int) -> float:
    """Activations of one sample's forward and backward, at their peak."""
    d = hidden_width(config)
    layers, singles = config.get("num_layers", 20), config.get("num_single_layers", 40)
    injects = config.get("injection", "cross_attention") in ("cross_attention", "adapter")
    block = BLOCK_ACTIVATIONS
    double_full = block["double_video"] * video + block["double_text"] * text + injects * block["injection_video"] * video
    single_full = block["single"] * (video + text)
    if checkpointing:
        saved = SAVED_WITH_CHECKPOINTING
        kept = (layers * (saved["double_video"] * video + saved["double_text"] * text
                          + injects * saved["injection_video"] * video) + singles * saved["single"] * (video + text))
        units = kept + max(double_full, single_full) + BACKWARD_TRANSIENT * (video + text)
    else:
        units = layers * double_full + singles * single_full + BACKWARD_TRANSIENT * (video + text)
    return (units + OUTSIDE_BLOCKS * video) * d * element_bytes


def estimate(setup: Setup, video: int, text: int) -> Estimate:
    """One GPU's memory for a sample of `video` and `text` tokens."""
    counts = parameter_counts(setup.config)
    trainable = sum(n for group, n in counts.own.items() if group in setup.trainable)
    frozen = counts.base + counts.interaction_copy
    shards = setup.data_parallel if setup.parallelism == "fsdp" else 1
    # FSDP2 keeps gradients unsharded (fp32) while it accumulates micro-batches without syncing
    grad_shards = shards if setup.samples_per_rank == 1 else 1
    cp = setup.context_parallel
    local_video, local_text = math.ceil(video / cp), math.ceil(text / cp)  # padded to a multiple of cp, then cut
    activations = activation_bytes(setup.config, local_video, local_text, setup.activation_checkpointing,
                                   setup.compute_bytes)
    if cp > 1:
        d = hidden_width(setup.config)
        activations += ULYSSES_TRANSIENT * (local_video + local_text) * d * setup.compute_bytes
    return Estimate(
        params=(frozen * setup.compute_bytes + counts.own_total * 4) / shards,
        grads=trainable * 4 / grad_shards,
        optimizer=2 * trainable * 4 / shards,
        # the block being computed and the one prefetched, and the root unit, which stays gathered
        gathered=(2 * counts.largest_unit + counts.root_unit) * setup.compute_bytes if shards > 1 else 0.0,
        encoders=setup.encoder_params * setup.compute_bytes,
        activations=activations,
        reserved=setup.reserved_gib * GIB,
    )


@dataclass(frozen=True)
class PlanRow:
    stage: str
    resolution: str  # "low" or "full"
    size: str  # FRAMESxHEIGHTxWIDTH
    video_tokens: int
    context_parallel: int
    params_gib: float
    grads_gib: float
    optimizer_gib: float
    gathered_gib: float
    encoders_gib: float
    activations_gib: float
    reserved_gib: float
    per_gpu_gib: float  # the peak
    gpu_memory_gib: float
    fits: bool


def setup_for(spec: TrainingSpec, on_gpu: bool = True) -> Setup:
    from .model.presets import get_preset

    preset = preset_name(spec)
    config = dict(get_preset(preset).transformer, **spec.model.transformer_options(), lora_rank=spec.lora.rank,
                  lora_alpha=spec.lora.alpha)
    bf16 = spec.precision == "bf16" and on_gpu
    vision = get_preset(preset).llava_vision
    world, cp = spec.resources.world_size, spec.context_parallel
    return Setup(config=config, trainable=tuple(spec.trainable), data_parallel=world, context_parallel=cp,
                 parallelism=spec.parallelism, activation_checkpointing=spec.activation_checkpointing,
                 compute_bytes=2 if bf16 else 4,
                 encoder_params=0 if spec.precompute is not None else sum(ENCODER_PARAMS[preset].values()),
                 samples_per_rank=max(spec.global_batch_size // max(world // cp, 1), 1),
                 subject_tokens=(vision["image_size"] // vision["patch_size"]) ** 2)


def plan(spec: TrainingSpec, gpu_memory_gib: float | None = None) -> list[PlanRow]:
    """A row per stage and resolution the spec trains at (the low-resolution part first)."""
    memory = gpu_memory_gib if gpu_memory_gib is not None else spec.resources.gpu_memory_gib
    setup, rows = setup_for(spec), []
    text = TEXT_TOKENS
    for stage in spec.stages:
        for low_res, res in stage.parts():
            name = "low" if low_res else "full"
            video = video_tokens(res.frames, res.height, res.width, setup.config)
            # the fused prompt holds each subject's image tokens too (LLaVA's grid, 576 at full size)
            est = estimate(setup, video, text + stage.max_subjects * setup.subject_tokens)
            gib = {k: round(v / GIB, 2) for k, v in asdict(est).items()}
            rows.append(PlanRow(stage.name, name, f"{res.frames}x{res.height}x{res.width}", video, setup.context_parallel,
                                gib["params"], gib["grads"], gib["optimizer"], gib["gathered"], gib["encoders"],
                                gib["activations"], gib["reserved"], round(est.peak / GIB, 2), memory,
                                est.peak / GIB <= memory))
    return rows


def parallelism_refusal(spec: TrainingSpec) -> str | None:
    """Why the spec's GPUs cannot split the run as it asks (contextParallel against the GPUs and the heads,
    the global batch against the data-parallel groups), as "spec.FIELD: why", or None."""
    from .model.presets import get_preset

    cp, world = spec.context_parallel, spec.resources.world_size
    heads = get_preset(preset_name(spec)).transformer["num_attention_heads"]
    if world % cp:
        return f"spec.contextParallel: contextParallel {cp} does not divide the {world} GPUs (nodes x gpusPerNode)"
    if heads % cp:
        return f"spec.contextParallel: contextParallel {cp} does not divide the model's {heads} attention heads"
    if spec.global_batch_size % (world // cp):
        groups = f"{world // cp} data-parallel groups ({world} GPUs / contextParallel {cp})" if cp > 1 else \
            f"{world} GPUs (nodes x gpusPerNode)"
        return f"spec.globalBatchSize: {spec.global_batch_size} is not a multiple of the {groups}"
    return None


def smallest_context_parallel(spec: TrainingSpec) -> int | None:
    """The smallest contextParallel with which every row fits (None: none does)."""
    for cp in range(1, spec.resources.world_size + 1):
        candidate = spec.model_copy(update={"context_parallel": cp})
        if parallelism_refusal(candidate) is None and all(row.fits for row in plan(candidate)):
            return cp
    return None


def refusal(spec: TrainingSpec) -> str | None:
    """Why the spec cannot fit its GPUs (the first row that does not), or None."""
    if spec.resources.gpus_per_node == 0:
        return None  # CPU training: host memory, not planned
    for row in plan(spec):
        if not row.fits:
            return (f"stage {row.stage} ({row.resolution} {row.size}) needs an estimated {row.per_gpu_gib:.1f} GiB per "
                    f"GPU (params {row.params_gib}, grads {row.grads_gib}, optimizer {row.optimizer_gib}, gathered "
                    f"{row.gathered_gib}, encoders {row.encoders_gib}, activations {row.activations_gib}, reserved "
                    f"{row.reserved_gib}) of {row.gpu_memory_gib:g} GiB{_advice(spec)}; see `polyvivid plan`")
    return None


def _advice(spec: TrainingSpec) -> str:
    cp = smallest_context_parallel(spec)
    return f" (contextParallel {cp} would fit)" if cp and cp != spec.context_parallel else ""


# --------------------------------------------------------------------------------------------- serving

@dataclass(frozen=True)
class ServicePlanRow:
    phase: str  # encode (prompt and subjects), denoise, decode (rank 0)
    size: str  # the largest request: FRAMESxHEIGHTxWIDTH
    subjects: int
    processes: int  # the replica's sequence-parallel degree
    transformer_gib: float
    encoders_gib: float  # LLaVA and CLIP
    vae_gib: float
    activations_gib: float  # denoise: a block's working set; decode: the VAE's
    reserved_gib: float
    per_gpu_gib: float
    gpu_memory_gib: float
    fits: bool


def service_plan(spec, gpu_memory_gib: float | None = None) -> list[ServicePlanRow]:
    """Per GPU of a replica, for the largest request the service accepts (its limits), each phase."""
    from .model.presets import get_preset

    preset = preset_name(spec)
    config = dict(get_preset(preset).transformer)
    memory, limits, n = spec.memory, spec.limits, spec.replicas.degree
    gpu = gpu_memory_gib if gpu_memory_gib is not None else spec.worker.gpu_memory_gib
    counts = parameter_counts(config)
    d = hidden_width(config)
    weight_bytes = 1 if memory.fp8_weights else 2
    stored = counts.base + counts.interaction_copy + counts.own_total
    transformer = (2 * counts.largest_unit + counts.root_unit if memory.group_offload else stored) * weight_bytes
    encoders = (ENCODER_PARAMS[preset]["llava"] + ENCODER_PARAMS[preset]["clip_text"]) * 2
    vae = ENCODER_PARAMS[preset]["vae"] * 2
    vision = get_preset(preset).llava_vision
    text = TEXT_TOKENS + limits.max_subjects * (vision["image_size"] // vision["patch_size"]) ** 2
    video = video_tokens(limits.max_frames, limits.max_height, limits.max_width, config)
    local_video, local_text = math.ceil(video / n), math.ceil(text / n)
    working = INFERENCE_ACTIVATIONS * (local_video + local_text) + STEP_CACHE_RESIDUALS * local_video
    if n > 1:
        working += ULYSSES_TRANSIENT * (local_video + local_text)
    pixels = limits.max_frames * limits.max_height * limits.max_width
    untiled = VAE_DECODE_BYTES_PER_PIXEL * pixels
    decode = (min(untiled, VAE_TILED_DECODE) if memory.vae_tiling else untiled) + pixels * 3 * 2 * 2  # + bf16 video, twice
    resident_encoders = 0.0 if memory.offload_encoders else encoders
    phases = {"encode": (encoders, 0.0), "denoise": (resident_encoders, working * d * 2),
              "decode": (resident_encoders, decode)}
    rows = []
    for phase, (held_encoders, activations) in phases.items():
        parts = [transformer, held_encoders, vae, activations, RESERVED_GIB * GIB]
        peak = sum(parts) / GIB
        rows.append(ServicePlanRow(phase, f"{limits.max_frames}x{limits.max_height}x{limits.max_width}",
                                   limits.max_subjects, n, *(round(x / GIB, 2) for x in parts), round(peak, 2), gpu,
                                   peak <= gpu))
    return rows


def sequence_parallel_refusal(spec) -> str | None:
    """Why a service's replicas cannot split a request over their processes (the degree against the model's
    attention heads), or None."""
    from .model.presets import get_preset

    n = spec.replicas.degree
    heads = get_preset(preset_name(spec)).transformer["num_attention_heads"]
    if heads % n:
        return f"spec.replicas: {n} processes a replica do not divide the model's {heads} attention heads"
    return None


def service_refusal(spec) -> str | None:
    """Why a service's replicas cannot run its largest request (the degree against the model's heads, or a
    phase that does not fit its GPUs), as "spec.FIELD: why", or None. CPU services are not planned."""
    unsplittable = sequence_parallel_refusal(spec)
    if unsplittable or spec.replicas.gpus_per_replica == 0:
        return unsplittable
    for row in service_plan(spec):
        if not row.fits:
            return (f"spec.limits: a {row.size} request with {row.subjects} subjects needs an estimated "
                    f"{row.per_gpu_gib:.1f} GiB per GPU while it {_PHASE_VERB[row.phase]} (transformer "
                    f"{row.transformer_gib}, encoders {row.encoders_gib}, VAE {row.vae_gib}, activations "
                    f"{row.activations_gib}, reserved {row.reserved_gib}) of {row.gpu_memory_gib:g} GiB; see "
                    f"`polyvivid plan`")
    return None


_PHASE_VERB = {"encode": "is encoded", "denoise": "denoises", "decode": "is decoded"}
