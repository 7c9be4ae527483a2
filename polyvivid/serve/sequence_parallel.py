"""A generator replica's processes: one, or N that run each request together (sequence parallelism).

With `replicas.sequenceParallel` (or `gpusPerReplica`) N > 1, a replica is a group of N processes, one
per GPU, placed together: Serve reserves a STRICT_PACK placement group of N bundles for each replica
(generator_options in app.py); the replica's own actor is rank 0 and starts N-1 SequenceWorker actors in
the other bundles. They form a torch.distributed group (NCCL on GPUs, gloo on CPU) whose store rank 0
serves on 127.0.0.1 (one node: the placement group packs it).

Every rank holds the whole pipeline and runs the whole request: the encoders (LLaVA and CLIP cost a
fraction of a step), then the denoising loop with the transformer's sequence split N ways by the
Ulysses attention of context-parallel training (polyvivid/train/context_parallel.py): each rank keeps
1/N of the video and text tokens, and the all-to-alls around attention give each rank every token for
H/N heads. The transformer's output is all-gathered, so every rank steps the same latents; rank 0
alone decodes them (VAE tiling keeps the decode within one GPU). The result equals one process's up to
float reordering (tests: tests/serve/test_sequence_parallel.py).

A request's ranks stop together: after every step rank 0 broadcasts whether the job was cancelled. A
fault inside the group (a worker died, a rank failed alone, a collective timed out) fails the job and
marks the group broken; the replica's health check then fails, and Serve replaces the replica with a
fresh group.
"""

from __future__ import annotations

import io
import logging
import os
from datetime import timedelta

import ray

from ..api.service import ServiceSpec
from ..processes import LOOPBACK, loopback_interface, loopback_store

log = logging.getLogger("polyvivid.serve")

# longest wait inside one collective: a 720p step on 8 GPUs takes seconds; a peer gone for this long is dead
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


class JobCancelled(Exception):
    pass


class GroupFailed(RuntimeError):
    """A job's group failed under it: a process stopped, a rank failed alone, or a collective timed out."""


def load_replica_pipeline(spec: ServiceSpec, model_ref: str):
    """The pipeline one process of a replica serves, placed as spec.memory says; and its device."""
    import torch

    from ..model.pipeline import load_pipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if device == "cpu":  # Ray sets no thread limit; take what this process reserved
        torch.set_num_threads(max(1, int(spec.replicas.cpus_per_process)))
    pipe = load_pipeline(model_ref, torch_dtype=dtype, base=spec.model.base_model)
    pipe.place(device, **spec.memory.model_dump())
    pipe.set_progress_bar_config(disable=True)  # progress goes to the job record instead
    return pipe, device


def run_request(pipe, inputs: dict, callback=None, output_type: str = "np"):
    """One job's generation from `inputs` (job_inputs: plain values and image bytes, so that they travel to
    the other ranks as they are)."""
    import torch
    from PIL import Image

    subjects = [(word, Image.open(io.BytesIO(data)).convert("RGB")) for word, data in inputs["subjects"]]
    return pipe(inputs["prompt"], subjects, num_frames=inputs["num_frames"], height=inputs["height"],
                width=inputs["width"], num_inference_steps=inputs["steps"], guidance_scale=inputs["guidance"],
                generator=torch.Generator().manual_seed(inputs["seed"]), callback=callback,
                step_cache_threshold=inputs["step_cache_threshold"], output_type=output_type)


def job_inputs(request, subject_images) -> dict:
    """What every rank needs of a job: its request's generation fields and its subjects' (word, image bytes)."""
    return {"prompt": request.prompt, "subjects": [(s.name, s.image) for s in subject_images],
            "num_frames": request.num_frames, "height": request.height, "width": request.width,
            "steps": request.steps, "guidance": request.guidance, "seed": request.seed,
            "step_cache_threshold": request.step_cache_threshold}


def _join(store, rank: int, world_size: int, pipe, device: str) -> None:
    """This process into the replica's group, and its transformer split over it."""
    import torch.distributed as dist

    from ..train.context_parallel import apply_context_parallel

    os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback_interface())  # the group's traffic stays on loopback
    os.environ.setdefault("NCCL_SOCKET_IFNAME", loopback_interface())
    dist.init_process_group("nccl" if device == "cuda" else "gloo", store=store, rank=rank, world_size=world_size,
                            timeout=COLLECTIVE_TIMEOUT)
    apply_context_parallel(pipe.transformer, dist.group.WORLD)


def _stop_together(on_step, device: str):
    """A step callback that every rank runs: rank 0 runs `on_step` (progress; JobCancelled to stop), then
    tells every rank whether to stop, so that none is left waiting in a collective."""
    import torch
    import torch.distributed as dist

    def callback(step: int, total: int) -> None:
        stop = torch.zeros(1, device=device)
        if on_step is not None:
            try:
                on_step(step, total)
            except JobCancelled:
                stop += 1
        dist.broadcast(stop, src=0)
        if stop.item():
            raise JobCancelled

    return callback


@ray.remote
class SequenceWorker:
    """Rank 1..N-1 of a sequence-parallel replica (placed in its bundle by SequenceGroup)."""

    def __init__(self, args: dict, rank: int):
        self.spec = ServiceSpec.model_validate(args["spec"])
        self.rank = rank
        self.pipe, self.device = load_replica_pipeline(self.spec, args["model"])

    def join(self, port: int) -> None:
        import torch.distributed as dist

        store = dist.TCPStore(LOOPBACK, port, is_master=False, timeout=COLLECTIVE_TIMEOUT)
        _join(store, self.rank, self.spec.replicas.degree, self.pipe, self.device)

    def generate(self, inputs: dict) -> str:
        """Its share of one job; the frames are rank 0's. 'ok', or 'cancelled' when rank 0 said stop."""
        try:
            run_request(self.pipe, inputs, _stop_together(None, self.device), output_type="latent")
        except JobCancelled:
            return "cancelled"
        return "ok"


class SequenceGroup:
    """Rank 0's side of a sequence-parallel replica: its workers, and the group they share."""

    def __init__(self, args: dict, spec: ServiceSpec, pipe, device: str):
        from ray.util import get_current_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        n, replicas = spec.replicas.degree, spec.replicas
        self.pipe, self.device, self.broken = pipe, device, False
        group = get_current_placement_group()  # Serve's, for this replica: bundle 0 is this actor's
        if group is None:
            raise RuntimeError("a sequence-parallel replica needs its placement group (generator_options)")
        self.workers = [
            SequenceWorker.options(
                num_cpus=replicas.cpus_per_process, num_gpus=replicas.gpus_per_process,
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank),
            ).remote(args, rank)
            for rank in range(1, n)]
        ray.get([w.__ray_ready__.remote() for w in self.workers])  # a worker's load error surfaces here
        store, port = loopback_store(n, COLLECTIVE_TIMEOUT)
        joined = [w.join.remote(port) for w in self.workers]
        _join(store, 0, n, pipe, device)
        ray.get(joined)
        self._store = store  # served from this process for the group's life
        log.info("sequence-parallel replica ready: %d processes", n)

    def generate(self, inputs: dict, on_step):
        """The frames of one job, generated by every rank together. A JobCancelled from on_step stops all
        of them; any other failure marks the group broken (the replica is then replaced)."""
        shares = [w.generate.remote(inputs) for w in self.workers]
        try:
            frames = run_request(self.pipe, inputs, _stop_together(on_step, self.device))
        except JobCancelled:
            ray.get(shares)
            raise
        except Exception as e:
            if _same_failure_everywhere(shares, e):
                raise
            self.broken = True
            log.exception("sequence-parallel group failed")
            raise GroupFailed("a process of this sequence-parallel replica failed during the job; the replica is "
                              "being replaced: submit the job again") from None
        ray.get(shares)
        return frames


def _same_failure_everywhere(shares, error: Exception) -> bool:
    """Whether every worker failed with the same kind of error before any collective went astray (bad
    input that every rank refuses alike, e.g. the model's own subject limit): the group is still sound."""
    from ..model.request import InvalidRequest

    if not isinstance(error, InvalidRequest):
        return False
    ready, _ = ray.wait(shares, num_returns=len(shares), timeout=COLLECTIVE_TIMEOUT.total_seconds())
    if len(ready) < len(shares):
        return False
    for share in ready:
        try:
            ray.get(share)
            return False
        except ray.exceptions.RayTaskError as e:
            if not isinstance(e.cause, InvalidRequest):
                return False
    return True
