"""`polyvivid render`: the Kubernetes objects the operator would create for manifests, through its own
renderers (polyvivid_operator, imported only when the command runs)."""

from __future__ import annotations

from .options import UsageError, int_in


def register(subparsers) -> None:
    render = subparsers.add_parser(
        "render", help="print the Kubernetes objects the operator would create for manifests",
        description="Print, as YAML, the children the operator creates for each PolyVividTraining (ConfigMap + "
                    "TrainJob, or PyTorchJob with spec.backend pytorchjob), CurationJob (ConfigMap + RayJob) and "
                    "PolyVividService (RayService) in FILE(s), through the operator's own renderers and checks. A "
                    "training's curationJob and a service's training resolve against the other documents given. "
                    "Other kinds are skipped. What is valid but likely a mistake (GPUs a pod reserves and cannot use, "
                    "an RDMA fabric without its device) is printed to stderr as a warning.")
    render.add_argument("files", nargs="+", metavar="FILE", help="manifest YAML (several documents allowed)")
    render.add_argument("--image", default=None, help="workload image (default: the operator's default image)")
    render.add_argument("--namespace", "-n", default="default", help="namespace of documents that name none")
    render.add_argument("--max-gpus-per-node", type=int_in(0, 16), default=8, help="the largest node's GPUs (default 8)")
    render.set_defaults(run=run)


def run(args) -> int:
    import sys

    import yaml
    from polyvivid_operator.children.common import DEFAULT_IMAGE
    from polyvivid_operator.render import render
    from polyvivid_operator.validation import InvalidSpec

    from ..api import SpecError
    from ..api.common import read_manifest_documents

    docs = []
    for name in args.files:
        try:
            docs += [d for d in read_manifest_documents(name) if isinstance(d, dict)]
        except SpecError as e:
            raise UsageError(f"{name}: {e}") from None
    try:
        children = render(docs, args.image or DEFAULT_IMAGE, args.max_gpus_per_node, args.namespace,
                          on_warning=lambda w: print(f"polyvivid: warning: {w}", file=sys.stderr))
    except InvalidSpec as e:
        raise UsageError(str(e)) from None
    if not children:
        raise UsageError("no PolyVividTraining, CurationJob or PolyVividService in the files given")
    print(yaml.safe_dump_all(children, sort_keys=False), end="")
    return 0
