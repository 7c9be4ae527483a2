"""`polyvivid train`: run a PolyVividTraining manifest, under torchrun or as a --local launch of it.

The operator's pods run `torchrun --module polyvivid.cli train /etc/polyvivid/training.yaml` (each rank
runs this command); `--local --nproc N` starts N such workers here (polyvivid.train.launcher), passing
them the spec and the overrides in `_forwarded`.
"""

from __future__ import annotations

from .options import UsageError, int_in, load_spec, output_uri


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train PolyVivid from a PolyVividTraining manifest",
        description="Run the PolyVividTraining in SPEC (the manifest you would `kubectl apply`). Inside "
                    "torchrun (a TrainJob or PyTorchJob pod) it reads torchrun's environment; with --local --nproc N it starts "
                    "N processes on this machine, their rendezvous on 127.0.0.1 (Ctrl-C or SIGTERM: they "
                    "checkpoint and stop). A run resumes from its newest good checkpoint.",
        epilog="example: polyvivid train training.yaml --local --nproc 2 --output file:///tmp/run1",
    )
    add_run_options(train, "PolyVividTraining YAML", "where artifacts go (file:// path or s3://), overriding spec.output")
    train.add_argument("--metrics-addr", default="127.0.0.1",
                       help="address of rank 0's Prometheus endpoint (default 127.0.0.1; in a pod, 0.0.0.0 so that "
                            "Prometheus can scrape it: the operator passes that)")
    train.add_argument("--metrics-port", type=int_in(0, 65535), help="port of rank 0's Prometheus endpoint (0: off)")
    train.set_defaults(run=run)


def add_run_options(parser, spec_help: str, output_help: str) -> None:
    """SPEC and the options `train` and `precompute` share: where it runs and what it overrides."""
    parser.add_argument("spec", help=spec_help)
    parser.add_argument("--local", action="store_true", help="launch torchrun here with --nproc processes")
    parser.add_argument("--nproc", type=int_in(1, 64), default=1, help="processes for --local, 1..64 (default 1)")
    parser.add_argument("--output", type=output_uri, help=output_help)
    parser.add_argument("--store", metavar="ENDPOINT", help="S3 endpoint, overriding spec.storage.endpoint")
    parser.add_argument("--dataset", help="dataset URI, overriding spec.dataset")


def _load_training(args):
    from ..api import PolyVividTraining

    updates = {"metrics_port": args.metrics_port} if args.metrics_port is not None else {}
    spec = load_spec(args, PolyVividTraining, **updates)
    if args.dataset:
        spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(
            update={"uri": args.dataset, "curation_job": None})})
    if spec.dataset.uri is None:
        raise UsageError(f"{args.spec}: spec.dataset names CurationJob {spec.dataset.curation_job!r}; outside the "
                         "cluster give its output with --dataset URI")
    return spec


def _forwarded(args) -> list[str]:
    """The options a --local launch passes on to each torchrun worker."""
    extra = []
    for flag, value in (("--output", args.output), ("--store", args.store), ("--dataset", args.dataset),
                        ("--metrics-addr", args.metrics_addr), ("--metrics-port", args.metrics_port)):
        if value is not None:
            extra += [flag, str(value)]
    return extra


def run(args, precompute_only: bool = False) -> int:
    if args.nproc > 1 and not args.local:
        raise UsageError("--nproc N needs --local (under torchrun, torchrun sets the processes)")
    spec = _load_training(args)
    if precompute_only and spec.precompute is None:  # the defaults (api.training.PrecomputeSpec)
        from ..api.training import PrecomputeSpec

        if spec.dataset.frame_windows == 0:
            raise UsageError(f"{args.spec}: precompute encodes every frame window a sample can read: it needs "
                             "spec.dataset.frameWindows >= 1")
        spec = spec.model_copy(update={"precompute": PrecomputeSpec()})
    if args.local and args.nproc > 1:
        from ..train.launcher import launch

        return launch([args.spec, *_forwarded(args)], args.nproc, "precompute" if precompute_only else "train")
    from ..data.loader import SampleError
    from ..storage import StorageError
    from ..train.trainer import TrainingError, train

    try:
        return train(spec, args.output, args.metrics_addr, precompute_only)
    except (TrainingError, SampleError, StorageError) as e:
        raise UsageError(str(e)) from None

