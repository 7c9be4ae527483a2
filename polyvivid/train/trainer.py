"""The training loop: rectified flow on PolyVivid's own parameters, stage by stage (paper A.2).

One process per GPU (or one or more on CPU) under torchrun. Every rank builds the whole pipeline
(frozen VAE and text encoders, the transformer with its frozen base), keeps only PolyVivid's own
parameters trainable, and wraps the transformer for DDP or FSDP2. Each optimizer step sees
`global_batch_size` samples: `global_batch_size / world_size` per rank, accumulated one at a time. With
spec.contextParallel N, each group of N ranks shares its samples, their sequences split between them
(context_parallel.py): `global_batch_size / (world_size / N)` per group.

What a step reads and which noise it draws are functions of (seed, global sample position), so a
resumed run repeats exactly what an uninterrupted one would do.

`train(spec)` runs a `Trainer` (torchtitan's shape): setup() builds this rank's part and resumes,
train() runs the steps (train_step() on the micro-batches batch() yields, checkpoint() every
checkpointInterval), finish() exports the final weights and evaluates them, close() lets go of the rest.
The flow-matching maths and the learning-rate schedule are in training_utils.py.
"""

from __future__ import annotations

import functools
import logging
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..api.training import Stage, TrainingSpec
from ..data.loader import (
    SampleError, StepLoader, StepRequest, SubjectVideoDataset, TrainSample, describe_subjects, stage_view, step_batches,
    unpack,
)
from ..data.precomputed import EncodedSample, PrecomputedReader
from ..storage import ArtifactStore, StorageError, open_store, with_retries
from .checkpoint import CheckpointError, Checkpoints
from .parallel import DistEnv, all_reduce_mean, any_rank, init_distributed, parallelize, set_gradient_sync
from .progress import ProgressReporter
from .training_utils import scheduled_lr, velocity_loss

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
        return self.stage.resolution_of(self.low_res)


def plan_step(spec: TrainingSpec, step: int) -> StepPlan:
    offset = 0
    for index, stage in enumerate(spec.stages):
        if step < offset + stage.steps:
            return StepPlan(step, index, stage, step - offset)
        offset += stage.steps
    raise IndexError(step)


def learning_rate(spec: TrainingSpec, step: int) -> float:
    opt = spec.optimizer
    return scheduled_lr(step, opt.learning_rate, spec.total_steps, opt.warmup_steps, opt.schedule)


def sample_generator(seed: int, position: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + position)


def scheduler_shift(spec: TrainingSpec) -> float:
    """The flow-matching shift of the base's scheduler, read without building the pipeline."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ..model.presets import get_preset
    from ..storage import materialize_dir

    if spec.model.preset:
        return FlowMatchEulerDiscreteScheduler(**get_preset(spec.model.preset).scheduler).config.shift
    return FlowMatchEulerDiscreteScheduler.from_pretrained(materialize_dir(spec.model.hunyuanvideo) / "scheduler").config.shift


def build_pipeline(spec: TrainingSpec):
    """The whole pipeline as inference builds it (evaluation; training builds its transformer sharded)."""
    from ..model.pipeline import PolyVividPipeline

    if spec.model.preset:
        return PolyVividPipeline.from_preset(spec.model.preset, seed=spec.model.seed, **spec.transformer_options())
    return PolyVividPipeline.from_hunyuanvideo(spec.model.hunyuanvideo, spec.model.llava, **spec.transformer_options())


def build_transformer(spec: TrainingSpec, env: DistEnv, frozen_dtype: torch.dtype):
    """(transformer, the module to call) for a real base, without ever holding a whole copy of it: built on
    the meta device, frozen weights in `frozen_dtype` (bf16 on GPUs) and PolyVivid's own parameters in fp32
    (master weights: autocast / FSDP2's param_dtype computes in bf16, AdamW updates fp32), sharded by FSDP2
    while still on meta, then each rank allocates and reads only its own rows of every base weight from
    the safetensors files (model.loading). DDP replicates, so there every rank reads everything, then wraps.
    The caller seeds the RNG: PolyVivid's fresh LoRA and zero FCs are drawn alike on every rank."""
    from ..model.loading import SafetensorsDir, load_weights, materialize
    from ..model.transformer import PolyVividTransformer
    from ..storage import materialize_dir

    base_dir = materialize_dir(spec.model.hunyuanvideo) / "transformer"
    source = SafetensorsDir(base_dir)
    transformer = PolyVividTransformer.build_on_meta(base_dir, **spec.transformer_options())
    torch.nn.Module.to(transformer, dtype=frozen_dtype)
    own = transformer.materialize_polyvivid_parameters(torch.float32)
    transformer.freeze_base(spec.trainable)
    if spec.activation_checkpointing:
        transformer.enable_gradient_checkpointing()
    sharded = spec.parallelism == "fsdp" and env.distributed
    if sharded:  # FSDP2 shards the meta model: each rank then allocates and reads only its own rows
        model = parallelize(transformer, spec.parallelism, env, frozen_dtype)
    materialize(transformer, env.device, keep=own)
    load_weights(transformer, source, transformer.base_weights_from(source))
    if not sharded:
        model = parallelize(transformer, spec.parallelism, env, frozen_dtype)
    return transformer, model


def draw_latents(posterior, generator: torch.Generator, scaling_factor: float) -> torch.Tensor:
    """A sample's scaled latents, drawn from its VAE posterior with the sample's generator: the VAE's own
    (raw clips) or one rebuilt from precomputed parameters, the same draw either way."""
    return (posterior.sample(generator) * scaling_factor).float()


def encode_sample(pipe, sample: TrainSample, generator: torch.Generator, device: torch.device,
                  dtype: torch.dtype | None = None) -> tuple[torch.Tensor, dict]:
    """A decoded sample's latents (draw_latents) and its conditioning inputs (in `dtype`: the frozen weights')."""
    vae = pipe.vae
    with torch.no_grad():
        x0 = draw_latents(vae.encode(sample.video[None].to(device, vae.dtype)).latent_dist, generator,
                          vae.config.scaling_factor)
        cond = pipe.encode_conditions(sample.caption, sample.subjects, device, dtype)
    return x0, cond


def load_encoded(sample: EncodedSample, generator: torch.Generator, device: torch.device,
                 scaling_factor: float) -> tuple[torch.Tensor, dict]:
    """A precomputed sample's latents (draw_latents) and conditioning inputs, on `device`."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    x0 = draw_latents(DiagonalGaussianDistribution(sample.moments.to(device)), generator, scaling_factor)
    return x0, {name: t.to(device) for name, t in sample.cond.items()}


def flow_matching_loss(pipe, model, sample: TrainSample, generator: torch.Generator, env: DistEnv,
                       autocast_dtype: torch.dtype | None, shift: float) -> torch.Tensor:
    """The velocity loss (training_utils.velocity_loss) of one sample, encoded first."""
    x0, cond = encode_sample(pipe, sample, generator, env.device)
    return velocity_loss(model, x0, cond, generator, env.device, autocast_dtype, shift,
                         pipe.transformer.config.guidance_embeds)


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


@dataclass
class MicroBatch:
    """One sample of this rank's share of a step, ready for the loss."""
    x0: torch.Tensor  # scaled latents [1, C, F, H, W]
    cond: dict  # the transformer's conditioning inputs
    generator: torch.Generator  # the sample's own: its noise and noise level are drawn from it next


class Trainer:
    """This rank's part of one training run. Every rank makes the same calls in the same order: under a
    process group most of them are collectives (parallelize, checkpoint load and save, the loss's
    all-reduce, the export)."""

    def __init__(self, spec: TrainingSpec, store: ArtifactStore, metrics_addr: str = "127.0.0.1",
                 precompute_only: bool = False):
        self.spec, self.store, self.metrics_addr = spec, store, metrics_addr
        self.precompute_only = precompute_only  # `polyvivid precompute`: setup() stops after the inputs are encoded
        self.precomputed: PrecomputedReader | None = None
        self.reporter: ProgressReporter | None = None  # close() also runs after a setup() that failed early
        self.scratch: Path | None = None
        self.start = 0  # the first step to run: a resumed run's checkpoint step
        self.loaded: Iterator | None = None  # LoadedStep of each step from self.start (start_loading)
        self.last_checkpoint: str | None = None

    # ----------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """The process group and logging, the data, progress reporting, the precompute phase (spec.precompute),
        the model and optimizer, and the state of the newest good checkpoint if there is one."""
        spec = self.spec
        try:
            self.env = env = init_distributed(spec.context_parallel)
        except ValueError as e:
            raise TrainingError(f"{e} (nodes x processes per node)") from None
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{env.rank} %(name)s: %(message)s")
        self.preemption = _Preemption()
        self.per_rank, rest = divmod(spec.global_batch_size, env.dp_size)
        if rest or self.per_rank == 0:
            replicas = "the world size" if env.context_parallel == 1 else "the data-parallel size (world / contextParallel)"
            raise TrainingError(f"globalBatchSize {spec.global_batch_size} is not a multiple of {replicas} "
                                f"{env.dp_size} (nodes x processes per node)")
        use_bf16 = spec.precision == "bf16" and env.device.type == "cuda"
        if spec.precision == "bf16" and not use_bf16 and env.is_main:
            log.info("precision bf16 asked, but no GPU: training in fp32 on CPU")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        self.frozen_dtype = torch.bfloat16 if use_bf16 else torch.float32
        self.dataset = SubjectVideoDataset(spec.dataset.uri, frame_windows=spec.dataset.frame_windows)
        stage_data = self._select_stage_data()  # before the model: a stage without samples stops the run at once
        self.reporter = ProgressReporter(self.store, spec.total_steps, spec.metrics_port, self.metrics_addr,
                                         enabled=env.is_main)
        self.reporter.state["stage_data"] = stage_data
        if spec.precompute is not None:
            self._precompute()
        if self.precompute_only:
            return
        try:
            self._build_model()
        except ValueError as e:  # a model that does not fit the spec (heads for contextParallel, a foreign base)
            raise TrainingError(str(e)) from None
        self.scratch = Path(tempfile.mkdtemp(prefix="polyvivid-train-"))
        self.checkpoints = Checkpoints(self.store, self.env, self.scratch, spec.keep_checkpoints)
        self._resume()

    def _precompute(self) -> None:
        """Encode the inputs every view reads (train/precompute.py), or find them encoded; from then on the
        views read them instead of the clips."""
        from .precompute import precompute_inputs

        def report(done: int, total: int) -> None:
            self.reporter.write(status="precomputing", precompute={"samples": total, "done": done})

        self.precomputed = precompute_inputs(self.spec, self.env, self.dataset, self.views, self.store.uri(""),
                                             self.frozen_dtype, report)
        for view in (self.dataset, *self.views.values()):
            view.precomputed = self.precomputed
        done = sum("file" in entry for entry in self.precomputed.index["samples"].values())
        self.reporter.state["precomputed"] = {"uri": self.precomputed.uri, "samples": done,
                                             "errors": len(self.precomputed.index["samples"]) - done}
        if self.precompute_only:
            self.reporter.write(status="precomputed")

    def _select_stage_data(self) -> dict[str, dict]:
        """Each stage part's view of the dataset (loader.stage_view) into self.views, keyed by (stage index,
        low_res); returns what progress.json's stage_data says about them."""
        self.views: dict[tuple[int, bool], SubjectVideoDataset] = {}
        summary = {}
        for index, stage in enumerate(self.spec.stages):
            for low_res, res in stage.parts():
                view, fallback = stage_view(self.dataset, stage, res.frames)
                self.views[index, low_res] = view
                part = f"{stage.name}/{'low' if low_res else 'full'}"
                summary[part] = {"samples": len(view), "frames": res.frames, "fallback": fallback}
                if not self.env.is_main:
                    continue
                if fallback:
                    log.warning("stage %s: %s", part, fallback)
                else:
                    log.info("stage %s: %d of %d samples (%s, at least %d frames)", part, len(view), len(self.dataset),
                             describe_subjects(stage.min_subjects, stage.max_subjects), res.frames)
        return summary

    def _build_model(self) -> None:
        """The model on this rank: the transformer with only spec.trainable left trainable and wrapped for DDP
        or FSDP2, AdamW over what trains, and (reading raw clips) the pipeline's frozen VAE and text encoders on
        the device, VAE tiling on. Reading precomputed inputs, no encoder is built (a preset's tiny ones are
        dropped)."""
        spec, env, frozen_dtype = self.spec, self.env, self.frozen_dtype
        torch.manual_seed(spec.seed)  # the same fresh PolyVivid weights on every rank
        pipe = None
        if spec.model.preset:  # random weights: nothing to load, and small
            pipe = build_pipeline(spec)
            self.transformer = transformer = pipe.transformer
            transformer.freeze_base(spec.trainable)
            for param in transformer.parameters():
                if not param.requires_grad:
                    param.data = param.data.to(env.device, frozen_dtype)
            transformer.to(env.device)
            if spec.activation_checkpointing:
                transformer.enable_gradient_checkpointing()
            self.model = parallelize(transformer, spec.parallelism, env, frozen_dtype)
        else:
            from ..model.pipeline import PolyVividPipeline

            transformer, self.model = build_transformer(spec, env, frozen_dtype)
            self.transformer = transformer
            if self.precomputed is None:
                pipe = PolyVividPipeline.from_hunyuanvideo(spec.model.hunyuanvideo, spec.model.llava,
                                                           torch_dtype=frozen_dtype, transformer=transformer)
        self.own = {n for n, p in transformer.named_parameters() if p.requires_grad}  # what checkpoints hold
        if not self.own:
            raise TrainingError(f"nothing to train: this model has no parameters in {spec.trainable}")
        if env.is_main:
            counts: dict[str, int] = {}
            for name, param in transformer.named_parameters():
                if param.requires_grad:
                    group = transformer.parameter_group(name)
                    counts[group] = counts.get(group, 0) + param.numel()
            total = sum(p.numel() for p in transformer.parameters())
            log.info("trainable parameters: %s = %d of %d (%.3f%%)",
                     ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())), sum(counts.values()), total,
                     100 * sum(counts.values()) / total)
        self.shift = pipe.scheduler.config.shift if pipe else scheduler_shift(spec)
        if self.precomputed is not None:
            self.pipe, self.scaling_factor = None, self.precomputed.scaling_factor
        else:
            pipe.freeze_encoders(env.device, frozen_dtype)  # as the precompute phase encodes
            self.pipe, self.scaling_factor = pipe, pipe.vae.config.scaling_factor
        transformer.train()
        self.trainable = [p for p in transformer.parameters() if p.requires_grad]
        opt = spec.optimizer
        self.optimizer = torch.optim.AdamW(self.trainable, lr=opt.learning_rate, weight_decay=opt.weight_decay,
                                           betas=(opt.beta1, opt.beta2))

    def _resume(self) -> None:
        try:
            resumed = self.checkpoints.load(self.model, self.optimizer, self.own)
        except CheckpointError as e:
            raise TrainingError(str(e)) from None
        self.reporter.restore(resumed)
        if resumed:
            self.start, self.last_checkpoint = resumed["step"], resumed.get("checkpoint")
            if self.env.is_main:
                log.info("resumed from %s at step %d", self.last_checkpoint, self.start)

    # ----------------------------------------------------------------------------- one step
    def start_loading(self) -> None:
        """Loader workers (spec.dataLoader) start reading this rank's samples of every step from self.start."""
        spec, requests = self.spec, []
        for step in range(self.start, spec.total_steps):
            plan, first = plan_step(spec, step), step * spec.global_batch_size + self.env.dp_rank * self.per_rank
            res = plan.resolution
            requests.append(StepRequest(step, (plan.stage_index, plan.low_res), tuple(range(first, first + self.per_rank)),
                                        res.frames, res.height, res.width, plan.stage.max_subjects))
        loader = StepLoader(self.views, requests, spec.seed, functools.partial(sample_generator, spec.seed))
        self.loaded = step_batches(loader, spec.data_loader.workers, spec.data_loader.prefetch_steps)

    def batch(self, plan: StepPlan) -> Iterator[MicroBatch]:
        """This rank's share of the step's global batch, loaded ahead by the loader workers, one encoded sample
        at a time (encoded as the step asks for it: one sample's activations in memory at once)."""
        loaded = next(self.loaded, None)
        if loaded is None or loaded.step != plan.step:  # a loader that lost its place: never train on other data
            raise TrainingError(f"the data loader gave step {loaded and loaded.step}, not step {plan.step}")
        for index, reason in loaded.skipped:  # skipped in a worker: counted here, for progress.json
            self.dataset._skip(index, reason)
        if loaded.error:
            raise SampleError(loaded.error)
        for sample, state in loaded.samples:
            sample = unpack(sample)
            generator = torch.Generator()
            generator.set_state(state)  # where loading left it: the latents and noise are drawn next
            if isinstance(sample, EncodedSample):
                x0, cond = load_encoded(sample, generator, self.env.device, self.scaling_factor)
            else:
                x0, cond = encode_sample(self.pipe, sample, generator, self.env.device, self.frozen_dtype)
            yield MicroBatch(x0, cond, generator)

    def train_step(self, plan: StepPlan) -> float:
        """One optimizer step: the scheduled learning rate, gradients accumulated over this rank's micro-batches
        (synchronised between ranks on the last one), clipping, AdamW. Returns the loss, the mean over ranks."""
        spec = self.spec
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(spec, plan.step)
        guidance_embeds = self.transformer.config.guidance_embeds
        losses = []
        for j, micro in enumerate(self.batch(plan)):
            with set_gradient_sync(self.model, j == self.per_rank - 1):
                loss = velocity_loss(self.model, micro.x0, micro.cond, micro.generator, self.env.device,
                                     self.autocast_dtype, self.shift, guidance_embeds)
                (loss / self.per_rank).backward()
            losses.append(loss.item())
        if spec.optimizer.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.trainable, spec.optimizer.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return all_reduce_mean(sum(losses) / len(losses), self.env)

    def _report(self, plan: StepPlan, loss: float, seconds: float) -> None:
        spec, env, res = self.spec, self.env, plan.resolution
        done = plan.step + 1
        self.reporter.step(done, loss, seconds, spec.global_batch_size, stage=plan.stage.name,
                           stage_index=plan.stage_index, stage_step=plan.stage_step + 1, stage_steps=plan.stage.steps,
                           world_size=env.world_size,
                           resolution="low" if plan.low_res else "full",
                           size=f"{res.frames}x{res.height}x{res.width}", lr=learning_rate(spec, plan.step),
                           samples_skipped=sum(self.dataset.skipped.values()))
        if env.is_main:
            log.info("step %d/%d stage %s (%s %dx%dx%d) loss %.5f %.2fs", done, spec.total_steps, plan.stage.name,
                     "low" if plan.low_res else "full", res.frames, res.height, res.width, loss, seconds)

    def checkpoint(self, step: int) -> str:
        """Save the state after `step` steps (every rank takes part); it becomes the last checkpoint. A save
        that fails stops the run, naming the last good one."""
        spec = self.spec
        state = {"step": step, "stage": plan_step(spec, min(step, spec.total_steps - 1)).stage.name,
                 "data_position": step * spec.global_batch_size, "seed": spec.seed,
                 "history": self.reporter.state["history"], "checkpoint": f"checkpoints/step-{step:08d}"}
        try:
            self.last_checkpoint = self.checkpoints.save(self.model, self.optimizer, self.own, state, step)
        except StorageError as e:
            raise TrainingError(f"checkpoint at step {step} not saved ({e}); the last good one is "
                                f"{self.last_checkpoint or 'none'}") from None
        return self.last_checkpoint

    # ----------------------------------------------------------------------------- the run
    def train(self) -> int:
        """The steps from the resume point to the end, then finish(): 0. After a SIGTERM on any rank the
        current step ends with a checkpoint and every rank leaves: EXIT_PREEMPTED, for a restart to resume."""
        spec = self.spec
        self.start_loading()
        for step in range(self.start, spec.total_steps):
            plan = plan_step(spec, step)
            started = time.perf_counter()
            loss = self.train_step(plan)
            self._report(plan, loss, time.perf_counter() - started)
            done = step + 1
            stop = any_rank(self.preemption.requested, self.env)
            if done % spec.checkpoint_interval == 0 or stop or done == spec.total_steps:
                self.checkpoint(done)
            if done % spec.progress_interval == 0 or stop or done == spec.total_steps:
                self.reporter.write(status="preempted" if stop else "running", last_checkpoint=self.last_checkpoint)
            if stop:
                self.loaded = None  # the loader workers stop
                log.info("SIGTERM: checkpoint %s saved at step %d; exiting for a restart", self.last_checkpoint, done)
                self.close()
                _leave_process_group(self.env)
                return EXIT_PREEMPTED
        self.loaded = None  # the loader workers stop before export and evaluation
        self.finish()
        return 0

    def finish(self) -> None:
        """After the last step: the final weights into the store, every rank leaves the process group, then
        rank 0 runs spec.evaluation on the stored weights."""
        self._export()
        shutil.rmtree(self.scratch, ignore_errors=True)
        _leave_process_group(self.env)
        if self.spec.evaluation and self.env.is_main:
            self._evaluate()

    def _export(self) -> None:
        # All of PolyVivid's own weights (trained or not, so the artifact loads on its own) and the card
        # that says which base they go on.
        transformer = self.transformer
        weights = _own_state_for_export(transformer, transformer.polyvivid_parameter_names())
        if not self.env.is_main:
            return
        final = self.scratch / "final"
        transformer.save_polyvivid_weights(final, state_dict=weights)
        from ..model.pipeline import write_polyvivid_card

        write_polyvivid_card(final, self.spec.model.base_card(), dict(transformer.config))
        try:
            for path in sorted(final.iterdir()):
                with_retries(self.store.upload_file, path, f"final/{path.name}", what=f"upload final/{path.name}")
        except StorageError as e:
            raise TrainingError(f"final weights not uploaded ({e}); checkpoint {self.last_checkpoint} "
                                "is kept") from None
        status = "evaluating" if self.spec.evaluation else "succeeded"
        self.reporter.write(status=status, last_checkpoint=self.last_checkpoint, final=self.store.uri("final"))
        log.info("final weights: %s", self.store.uri("final"))

    def _evaluate(self) -> None:
        # the training's memory given back first: evaluation loads the stored weights as a user would
        self.model = self.optimizer = self.trainable = self.transformer = self.pipe = None
        if self.env.device.type == "cuda":
            torch.cuda.empty_cache()
        from .evaluation import run_evaluation

        self.reporter.write(status="succeeded", last_checkpoint=self.last_checkpoint, final=self.store.uri("final"),
                            evaluation=run_evaluation(self.spec, self.store, self.env.device))

    def close(self) -> None:
        """Stop the metrics endpoint and remove the scratch directory. Idempotent; runs after a failure too
        (but never leaves the process group then: the other ranks may not be there to leave with)."""
        self.loaded = None  # the loader workers stop
        if self.reporter is not None:
            self.reporter.close()
            self.reporter = None
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


def train(spec: TrainingSpec, output: str | None = None, metrics_addr: str = "127.0.0.1",
          precompute_only: bool = False) -> int:
    """This rank's run of `spec` (`polyvivid train`, alone or under torchrun), stored under `output` (default
    spec.output): 0 when done, EXIT_PREEMPTED after a SIGTERM's checkpoint. precompute_only (`polyvivid
    precompute`): only the precompute phase."""
    trainer = Trainer(spec, open_store(output or spec.output), metrics_addr, precompute_only)
    try:
        trainer.setup()
        if precompute_only:
            _leave_process_group(trainer.env)
            return 0
        return trainer.train()
    finally:
        trainer.close()
