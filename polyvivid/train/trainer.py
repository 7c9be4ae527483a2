"""The training loop: rectified flow on PolyVivid's own parameters, stage by stage (paper A.2).

One process per GPU (or one or more on CPU) under torchrun. Every rank builds the whole pipeline
(frozen VAE and text encoders, the transformer with its frozen base), keeps only PolyVivid's own
parameters trainable, and wraps the transformer for DDP or FSDP2. Each optimizer step sees
`global_batch_size` samples: `global_batch_size / world_size` per rank, accumulated one at a time.

What a step reads and which noise it draws are functions of (seed, global sample position), so a
resumed run repeats exactly what an uninterrupted one would do.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..api.training import Stage, TrainingSpec
from ..data.loader import SubjectVideoDataset, TrainSample
from ..storage import StorageError, open_store, with_retries
from .checkpoint import CheckpointError, Checkpoints
from .parallel import DistEnv, all_reduce_mean, any_rank, init_distributed, parallelize, set_gradient_sync
from .progress import ProgressReporter

log = logging.getLogger("polyvivid.train")
EXIT_PREEMPTED = 143  # SIGTERM: checkpoint saved; the job controller restarts and we resume


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why. The last good checkpoint is kept."""


@dataclass
class StepPlan:
    step: int  # global, 0-based
    stage_index: int
    stage: Stage
    stage_step: int

    @property
    def low_res(self) -> bool:
        return self.stage_step < self.stage.low_res_steps

    @property
    def resolution(self):
        return self.stage.low_resolution if self.low_res else self.stage.resolution


def plan_step(spec: TrainingSpec, step: int) -> StepPlan:
    offset = 0
    for index, stage in enumerate(spec.stages):
        if step < offset + stage.steps:
            return StepPlan(step, index, stage, step - offset)
        offset += stage.steps
    raise IndexError(step)


def learning_rate(spec: TrainingSpec, step: int) -> float:
    opt = spec.optimizer
    if opt.warmup_steps and step < opt.warmup_steps:
        return opt.learning_rate * (step + 1) / opt.warmup_steps
    if opt.schedule == "cosine":
        progress = (step - opt.warmup_steps) / max(spec.total_steps - opt.warmup_steps, 1)
        return opt.learning_rate * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return opt.learning_rate


def sample_generator(seed: int, position: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + position)


def build_pipeline(spec: TrainingSpec):
    from ..model.pipeline import PolyVividPipeline

    options = dict(spec.model.transformer_options(), lora_rank=spec.lora.rank, lora_alpha=spec.lora.alpha)
    if spec.model.preset:
        return PolyVividPipeline.from_preset(spec.model.preset, seed=spec.model.seed, **options)
    return PolyVividPipeline.from_hunyuanvideo(spec.model.hunyuanvideo, spec.model.llava, **options)


def flow_matching_loss(pipe, model, sample: TrainSample, generator: torch.Generator, env: DistEnv,
                       autocast_dtype: torch.dtype | None, shift: float) -> torch.Tensor:
    """Rectified flow as HunyuanVideo: x_t = (1 - s) x0 + s noise, predict the velocity noise - x0,
    with s drawn uniformly and shifted towards noise (s' = shift s / (1 + (shift - 1) s))."""
    vae = pipe.vae
    with torch.no_grad():
        x0 = vae.encode(sample.video[None].to(env.device, vae.dtype)).latent_dist.sample(generator)
        x0 = (x0 * vae.config.scaling_factor).float()
        cond = pipe.encode_conditions(sample.caption, sample.subjects)
    return velocity_loss(model, x0, cond, generator, env.device, autocast_dtype, shift,
                         pipe.transformer.config.guidance_embeds)


def velocity_loss(model, x0: torch.Tensor, cond: dict, generator: torch.Generator, device: torch.device,
                  autocast_dtype: torch.dtype | None, shift: float, guidance_embeds: bool) -> torch.Tensor:
    """The flow-matching loss for scaled latents x0 [B, ...] and the transformer's conditioning inputs;
    each sample draws its own noise level."""
    batch = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator).to(device)
    u = torch.rand((batch,), generator=generator)
    sigma = (shift * u / (1 + (shift - 1) * u)).to(device)
    s = sigma.view(batch, *([1] * (x0.dim() - 1)))
    x_t = (1 - s) * x0 + s * noise
    guidance = torch.full((batch,), 1000.0, device=device) if guidance_embeds else None
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        pred = model(hidden_states=x_t, timestep=sigma * 1000.0, guidance=guidance, **cond).sample
    return F.mse_loss(pred.float(), (noise - x0).float())


@torch.no_grad()
def validation_loss(pipe, dataset: SubjectVideoDataset, positions: range, seed: int, frames: int, height: int,
                    width: int, max_subjects: int, env: DistEnv | None = None) -> float:
    """Mean flow-matching loss over fixed samples, noise and timesteps: comparable between models."""
    env = env or DistEnv(0, 1, 0, pipe.transformer.device)
    losses = []
    for position in positions:
        generator = sample_generator(seed + 7919, position)  # never the training draws
        sample = dataset.get(position, seed, frames, height, width, max_subjects, generator)
        losses.append(float(flow_matching_loss(pipe, pipe.transformer, sample, generator, env, None,
                                               pipe.scheduler.config.shift)))
    return sum(losses) / len(losses)


def _leave_process_group(env) -> None:
    """Every rank leaves together. A process that exits still in a gloo group can abort in the group's
    destructor ("terminate called without an active exception"), turning a clean 143 into SIGABRT."""
    if env.distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def _own_state_for_export(transformer, names: list[str]) -> dict[str, torch.Tensor]:
    """PolyVivid's own weights, gathered to full tensors (a collective under FSDP2: every rank calls it)."""
    from torch.distributed.tensor import DTensor

    params = dict(transformer.named_parameters())
    out = {}
    for name in names:
        p = params[name].detach()
        out[name] = (p.full_tensor() if isinstance(p, DTensor) else p).float().cpu().contiguous()
    return out


class _Preemption:
    """Remembers a SIGTERM so the loop can checkpoint at the end of the current step."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


def train(spec: TrainingSpec, output: str | None = None, metrics_addr: str = "127.0.0.1") -> int:
    env = init_distributed()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{env.rank} %(name)s: %(message)s")
    output = output or spec.output
    store = open_store(output)
    preemption = _Preemption()

    per_rank, rest = divmod(spec.global_batch_size, env.world_size)
    if rest or per_rank == 0:
        raise TrainingError(f"globalBatchSize {spec.global_batch_size} is not a multiple of the world size "
                            f"{env.world_size} (nodes x processes per node)")
    dataset = SubjectVideoDataset(spec.dataset.uri)

    use_bf16 = spec.precision == "bf16" and env.device.type == "cuda"
    if spec.precision == "bf16" and not use_bf16 and env.is_main:
        log.info("precision bf16 asked, but no GPU: training in fp32 on CPU")
    torch.manual_seed(spec.seed)  # the same fresh PolyVivid weights on every rank
    pipe = build_pipeline(spec)
    transformer = pipe.transformer
    counts = transformer.freeze_base(spec.trainable)
    own = {n for n, p in transformer.named_parameters() if p.requires_grad}  # what checkpoints hold
    if not own:
        raise TrainingError(f"nothing to train: this model has no parameters in {spec.trainable}")
    if env.is_main:
        total = sum(p.numel() for p in transformer.parameters())
        log.info("trainable parameters: %s = %d of %d (%.3f%%)",
                 ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())), sum(counts.values()), total,
                 100 * sum(counts.values()) / total)
    for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.requires_grad_(False).to(env.device)
        if use_bf16:
            module.to(torch.bfloat16)
    transformer.to(env.device)
    if spec.activation_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    model = parallelize(transformer, spec.parallelism, env, torch.bfloat16 if use_bf16 else torch.float32)
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=spec.optimizer.learning_rate, weight_decay=spec.optimizer.weight_decay,
                                  betas=(spec.optimizer.beta1, spec.optimizer.beta2))

    scratch = Path(tempfile.mkdtemp(prefix="polyvivid-train-"))
    reporter = ProgressReporter(store, spec.total_steps, spec.metrics_port, metrics_addr, enabled=env.is_main)
    checkpoints = Checkpoints(store, env, scratch, spec.keep_checkpoints)
    try:
        resumed = checkpoints.load(model, optimizer, own)
    except CheckpointError as e:
        raise TrainingError(str(e)) from None
    start = resumed["step"] if resumed else 0
    reporter.restore(resumed)
    last_checkpoint = resumed.get("checkpoint") if resumed else None
    if resumed and env.is_main:
        log.info("resumed from %s at step %d", last_checkpoint, start)
    shift = pipe.scheduler.config.shift
    autocast_dtype = torch.bfloat16 if use_bf16 else None

    def checkpoint(step: int) -> str:
        state = {"step": step, "stage": plan_step(spec, min(step, spec.total_steps - 1)).stage.name,
                 "data_position": step * spec.global_batch_size, "seed": spec.seed,
                 "history": reporter.state["history"], "checkpoint": f"checkpoints/step-{step:08d}"}
        try:
            name = checkpoints.save(model, optimizer, own, state, step)
        except StorageError as e:
            raise TrainingError(f"checkpoint at step {step} not saved ({e}); the last good one is "
                                f"{last_checkpoint or 'none'}") from None
        return name

    for step in range(start, spec.total_steps):
        plan = plan_step(spec, step)
        res = plan.resolution
        lr = learning_rate(spec, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        started = time.perf_counter()
        losses = []
        for j in range(per_rank):
            position = step * spec.global_batch_size + env.rank * per_rank + j
            generator = sample_generator(spec.seed, position)
            sample = dataset.get(position, spec.seed, res.frames, res.height, res.width, plan.stage.max_subjects,
                                 generator)
            with set_gradient_sync(model, j == per_rank - 1):
                loss = flow_matching_loss(pipe, model, sample, generator, env, autocast_dtype, shift)
                (loss / per_rank).backward()
            losses.append(loss.item())
        if spec.optimizer.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, spec.optimizer.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_loss = all_reduce_mean(sum(losses) / len(losses), env)
        seconds = time.perf_counter() - started
        done = step + 1
        reporter.step(done, step_loss, seconds, spec.global_batch_size, stage=plan.stage.name,
                      stage_index=plan.stage_index, stage_step=plan.stage_step + 1, stage_steps=plan.stage.steps,
                      world_size=env.world_size,
                      resolution="low" if plan.low_res else "full",
                      size=f"{res.frames}x{res.height}x{res.width}", lr=lr,
                      samples_skipped=sum(dataset.skipped.values()))
        if env.is_main:
            log.info("step %d/%d stage %s (%s %dx%dx%d) loss %.5f %.2fs", done, spec.total_steps, plan.stage.name,
                     "low" if plan.low_res else "full", res.frames, res.height, res.width, step_loss, seconds)
        stop = any_rank(preemption.requested, env)
        if done % spec.checkpoint_interval == 0 or stop or done == spec.total_steps:
            last_checkpoint = checkpoint(done)
        if done % spec.progress_interval == 0 or stop or done == spec.total_steps:
            reporter.write(status="preempted" if stop else "running", last_checkpoint=last_checkpoint)
        if stop:
            log.info("SIGTERM: checkpoint %s saved at step %d; exiting for a restart", last_checkpoint, done)
            reporter.close()
            _leave_process_group(env)
            return EXIT_PREEMPTED

    # Export all of PolyVivid's own weights (trained or not, so the artifact loads on its own) and the
    # card that says which base they go on.
    weights = _own_state_for_export(transformer, transformer.polyvivid_parameter_names())
    if env.is_main:
        final = scratch / "final"
        transformer.save_polyvivid_weights(final, state_dict=weights)
        from ..model.pipeline import write_polyvivid_card

        write_polyvivid_card(final, spec.model.base_card(), dict(transformer.config))
        try:
            for path in sorted(final.iterdir()):
                with_retries(store.upload_file, path, f"final/{path.name}", what=f"upload final/{path.name}")
        except StorageError as e:
            raise TrainingError(f"final weights not uploaded ({e}); checkpoint {last_checkpoint} is kept") from None
        status = "evaluating" if spec.evaluation else "succeeded"
        reporter.write(status=status, last_checkpoint=last_checkpoint, final=store.uri("final"))
        log.info("final weights: %s", store.uri("final"))
    shutil.rmtree(scratch, ignore_errors=True)
    _leave_process_group(env)
    if spec.evaluation and env.is_main:
        # only rank 0 evaluates, on the stored weights, with the training's memory given back first
        del model, optimizer, trainable, transformer, pipe
        if env.device.type == "cuda":
            torch.cuda.empty_cache()
        from .evaluation import run_evaluation

        reporter.write(status="succeeded", last_checkpoint=last_checkpoint, final=store.uri("final"),
                       evaluation=run_evaluation(spec, store, env.device))
    reporter.close()
    return 0
