"""`polyvivid curate`: run a CurationJob manifest on Ray (raw videos to a multi-subject dataset)."""

from __future__ import annotations

import argparse

from ..api.curation import CURATION_STAGES
from .options import UsageError, add_ray_auth_flag, load_spec, output_uri


def _stages() -> str:
    width = max(len(stage.name) for stage in CURATION_STAGES)
    return "\n".join(f"  {stage.name:{width}s}  {stage.what}" for stage in CURATION_STAGES)


def register(subparsers) -> None:
    curate = subparsers.add_parser(
        "curate", help="turn raw videos into a multi-subject dataset (a CurationJob)",
        description="Run the CurationJob in SPEC on Ray: split into clips, filter, caption, ground each subject\n"
                    "phrase (Florence-2), segment it (SAM2), check it (CLIP) and consolidate (cliques); writes\n"
                    "clips, subject images, manifest.jsonl and summary.json. A re-run skips finished videos\n"
                    "and retries those rejected for a fixable reason (no caption, an unreadable file, a stage\n"
                    "whose model may do better). Every model stage needs a model: `uri:` (a directory or s3://\n"
                    "URI in the model's layout) or, for a smoke test with random weights, `preset: tiny`.\n\n"
                    "stages (their names in summary.json; each is configured by the spec field of that name):\n"
                    + _stages(),
        epilog="example: polyvivid curate curation.yaml --local",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    curate.add_argument("spec", help="CurationJob YAML")
    curate.add_argument("--local", action="store_true", help="start Ray on this machine (default: spec.rayAddress or the cluster)")
    curate.add_argument("--input", help="video URI prefix, overriding spec.input")
    curate.add_argument("--output", type=output_uri, help="dataset URI, overriding spec.output")
    curate.add_argument("--store", metavar="ENDPOINT", help="S3 endpoint, overriding spec.storage.endpoint")
    add_ray_auth_flag(curate)
    curate.set_defaults(run=run)


def run(args) -> int:
    from ..api import CurationJob

    spec = load_spec(args, CurationJob, **{k: v for k, v in (("input", args.input), ("output", args.output)) if v})
    from ..data.curation import curate
    from ..ray_local import RayAuthOff
    from ..storage import StorageError

    try:
        summary = curate(spec, local=args.local, allow_ray_no_auth=args.insecure_ray_no_auth)
    except (StorageError, RayAuthOff) as e:
        raise UsageError(str(e)) from None
    for stage, c in summary["stages"].items():
        print(f"{stage:12s} in {c['in']:5d}  out {c['out']:5d}  rejected {c['rejected']}")
    print(f"dataset: {spec.output.rstrip('/')}/manifest.jsonl ({summary['clips_written']} clips; "
          f"summary.json lists {len(summary['rejects'])} rejects with reasons)")
    if summary["videos_retried"]:
        print(f"retried {summary['videos_retried']} videos rejected earlier for a fixable reason")
    if summary["random_models"]:
        print(f"warning: random weights (preset: tiny) for {', '.join(summary['random_models'])}: "
              "the dataset is for smoke tests only")
    return 0
