"""`polyvivid synth-data`: a synthetic multi-subject dataset in the training format."""

from __future__ import annotations

import argparse

from ..api.common import MAX_FRAMES
from .options import FRAMES, SEED, UsageError, int_in


def register(subparsers) -> None:
    synth = subparsers.add_parser(
        "synth-data", help="write a synthetic multi-subject dataset",
        description="Write N clips of textured shapes moving and interacting, with captions naming them "
                    "and a reference image per subject, in the training dataset format (manifest.jsonl); "
                    "or, with --raw, raw videos with a caption file beside each: input for `polyvivid curate`.",
        epilog="examples:\n  polyvivid synth-data --out out/synth\n"
               "  polyvivid synth-data --raw --out out/raw-videos --videos 4   # then: polyvivid curate "
               "manifests/local/curation.yaml --local",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    synth.add_argument("--out", required=True, help="dataset URI: a path, file:// or s3://")
    synth.add_argument("--videos", type=int_in(1, 100_000), default=32, help="number of clips, 1..100000 (default 32)")
    synth.add_argument("--size", type=int_in(16, 1024), default=96, help="clip side in pixels, 16..1024 (default 96)")
    synth.add_argument("--frames", type=FRAMES, default=None,
                       help=f"frames per clip, 1..{MAX_FRAMES} (default 17; 48 with --raw: 2 s at 24 fps)")
    synth.add_argument("--raw", action="store_true",
                       help="write raw videos (VIDEO.mp4 at 24 fps + VIDEO.json, a structured caption) to curate, "
                            "not a dataset")
    synth.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    synth.set_defaults(run=run)


def run(args) -> int:
    from tqdm import tqdm

    from ..data.synthetic import write_raw_videos, write_synthetic_dataset
    from ..storage import StorageError, open_store

    try:
        store = open_store(args.out)
        with tqdm(total=args.videos, desc="videos" if args.raw else "clips", unit="video" if args.raw else "clip") as bar:
            if args.raw:
                write_raw_videos(store, args.videos, seed=args.seed, size=args.size, frames=args.frames or 48,
                                 progress=bar)
            else:
                write_synthetic_dataset(store, args.videos, seed=args.seed, size=args.size, frames=args.frames or 17,
                                        progress=bar)
    except StorageError as e:
        raise UsageError(f"out: {e}") from None
    if args.raw:
        print(f"raw videos: {store.uri('')} ({args.videos} videos with caption files)")
    else:
        print(f"dataset: {store.uri('manifest.jsonl')} ({args.videos} clips)")
    return 0
