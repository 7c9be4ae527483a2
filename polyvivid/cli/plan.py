"""`polyvivid plan`: the memory planner's estimate, per GPU, for each stage and resolution of a training, or
for each phase of a service's largest request."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict

from .options import UsageError

COLUMNS = ("stage", "resolution", "size", "video_tokens", "params_gib", "grads_gib", "optimizer_gib", "gathered_gib",
           "encoders_gib", "activations_gib", "reserved_gib", "per_gpu_gib", "fits")
SERVICE_COLUMNS = ("phase", "size", "subjects", "processes", "transformer_gib", "encoders_gib", "vae_gib",
                   "activations_gib", "reserved_gib", "per_gpu_gib", "fits")


def gib(text: str) -> float:
    """'80GiB', '141 GiB', '80Gi' or '80' -> 80.0 (GiB); '80GB' is 10^9 bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(GiB|Gi|GB|G)?\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a memory size: {text!r} (e.g. 80GiB)")
    value = float(match.group(1))
    return value * 1e9 / 2**30 if match.group(2) == "GB" else value


def register(subparsers) -> None:
    plan = subparsers.add_parser(
        "plan", help="estimate a training's or a service's GPU memory before it runs",
        description="For a PolyVividTraining, per GPU, for each stage and resolution: the estimated parameters, "
                    "gradients, optimizer state, all-gathered blocks (FSDP), frozen encoders, activations, a "
                    "reserve, the peak, and whether it fits. For a PolyVividService, per GPU of a replica, for "
                    "its largest request (spec.limits): the transformer, the encoders, the VAE and the working "
                    "memory while the request is encoded, denoised and decoded, with spec.memory's choices. "
                    "The operator refuses a spec that does not fit. The model is analytic "
                    "(polyvivid/memory_plan.py); README \"Training at scale\" and \"Serving at scale\" say how it "
                    "was validated.",
        epilog="examples:\n  polyvivid plan manifests/examples/training.yaml\n"
               "  polyvivid plan manifests/examples/training.yaml --gpu-memory 141GiB --json\n"
               "  polyvivid plan manifests/examples/service.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plan.add_argument("spec", help="a PolyVividTraining or PolyVividService manifest (YAML)")
    plan.add_argument("--gpu-memory", type=gib, default=None,
                      help="memory of one GPU, e.g. 80GiB or 141GiB (default: the spec's resources.gpuMemoryGib "
                           "or worker.gpuMemoryGib, 80)")
    plan.add_argument("--json", action="store_true", help="one JSON object per row instead of the table")
    plan.set_defaults(run=run)


def _print_rows(rows, columns: tuple[str, ...], title: str, as_json: bool) -> None:
    """One JSON object per row, or the title and a table of `columns` (GiB without the suffix)."""
    if as_json:
        for row in rows:
            print(json.dumps(asdict(row)))
        return
    print(title)
    table = [[str(getattr(row, c)) if c != "fits" else ("yes" if row.fits else "NO") for c in columns] for row in rows]
    headers = [c.removesuffix("_gib") for c in columns]
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    for line in [headers, *table]:
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))


def run(args) -> int:
    from ..api import PolyVividService, PolyVividTraining, SpecError, load_resource
    from ..api.common import read_manifest_documents
    from ..memory_plan import plan

    try:
        documents = read_manifest_documents(args.spec)
        kind = documents[0].get("kind") if len(documents) == 1 and isinstance(documents[0], dict) else None
        if kind == "PolyVividService":
            return _plan_service(load_resource(args.spec, PolyVividService).spec, args)
        spec = load_resource(args.spec, PolyVividTraining).spec
    except SpecError as e:
        raise UsageError(f"{args.spec}: {e}") from None
    if spec.resources.gpus_per_node == 0:
        print("CPU training (resources.gpusPerNode 0): host memory is not planned")
        return 0
    rows = plan(spec, args.gpu_memory)
    world = spec.resources.world_size
    split = f", contextParallel {spec.context_parallel}" if spec.context_parallel > 1 else ""
    _print_rows(rows, COLUMNS, f"{spec.parallelism} over {world} GPU{'s' * (world > 1)}{split}, "
                f"{rows[0].gpu_memory_gib:g} GiB each; GiB per GPU:", args.json)
    fits = all(row.fits for row in rows)
    if not fits and not args.json:
        from ..memory_plan import smallest_context_parallel

        cp = smallest_context_parallel(spec.model_copy(update={"resources": spec.resources.model_copy(
            update={"gpu_memory_gib": rows[0].gpu_memory_gib})}))
        print(f"does not fit; with contextParallel {cp} it would" if cp else
              "does not fit at any contextParallel: more memory per GPU, or a smaller resolution")
    return 0 if fits else 1


def _plan_service(spec, args) -> int:
    from ..memory_plan import sequence_parallel_refusal, service_plan

    if spec.replicas.gpus_per_replica == 0:
        print("CPU replicas (replicas.gpusPerReplica 0): host memory is not planned")
        return 0
    rows = service_plan(spec, args.gpu_memory)
    n = spec.replicas.degree
    _print_rows(rows, SERVICE_COLUMNS, f"a replica of {n} process{'es' * (n > 1)}, one GPU of "
                f"{rows[0].gpu_memory_gib:g} GiB each; the largest request; GiB per GPU (decode: rank 0):", args.json)
    fits = all(row.fits for row in rows)
    if not fits and not args.json:
        print("does not fit: turn on memory.vaeTiling / offloadEncoders / fp8Weights / groupOffload, or lower "
              "spec.limits")
    unsplittable = sequence_parallel_refusal(spec)
    if unsplittable:
        print(unsplittable)
    return 0 if fits and not unsplittable else 1
