"""`polyvivid-operator`: run the operator (kopf) on the current cluster."""

from __future__ import annotations

import argparse
import asyncio
import logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polyvivid-operator",
        description="Reconcile PolyVividTraining, CurationJob and PolyVividService resources into TrainJobs "
                    "(or PyTorchJobs), RayJobs and RayServices. Settings from the environment: POLYVIVID_IMAGE "
                    "(workload image), POLYVIVID_METRICS_PORT (default 8080), POLYVIVID_SYNC_INTERVAL (seconds, "
                    "default 30), POLYVIVID_MAX_GPUS_PER_NODE (default 8), POLYVIVID_TRAINING_RUNTIME (the "
                    "ClusterTrainingRuntime of TrainJobs, default polyvivid-torch), POLYVIVID_S3_ENDPOINT (the object "
                    "store of specs that name no storage.endpoint), POLYVIVID_ALLOWED_S3_ENDPOINTS (comma-separated: "
                    "other endpoints a spec may name).")
    parser.add_argument("--namespace", "-n", action="append", default=[],
                        help="watch only this namespace (repeatable; default: all namespaces)")
    parser.add_argument("--peering", default=None,
                        help="kopf peering object name, for several operator replicas (default: standalone)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="liveness probe endpoint")
    parser.add_argument("--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)

    import kopf

    from . import handlers  # noqa: F401  (registers the handlers)

    asyncio.run(kopf.operator(
        clusterwide=not args.namespace, namespaces=args.namespace or None,
        standalone=args.peering is None, peering_name=args.peering, liveness_endpoint=args.liveness))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
