"""`polyvivid synth-data`: a synthetic multi-subject dataset in the training format."""

from __future__ import annotations

from ..api.common import MAX_FRAMES
from .options import FRAMES, SEED, UsageError, int_in


def register(subparsers) -> None:
    synth = subparsers.add_parser(
        "synth-data", help="write a synthetic multi-subject dataset",
        description="Write N clips of textured shapes moving and interacting, with captions naming them "
                    "and a reference image per subject, in the training dataset format (manifest.jsonl).",
    )
    synth.add_argument("--out", required=True, help="dataset URI: a path, file:// or s3://")
    synth.add_argument("--videos", type=int_in(1, 100_000), default=32, help="number of clips, 1..100000 (default 32)")
    synth.add_argument("--size", type=int_in(16, 1024), default=96, help="clip side in pixels, 16..1024 (default 96)")
    synth.add_argument("--frames", type=FRAMES, default=17,
                       help=f"frames per clip, 1..{MAX_FRAMES} (default 17)")
    synth.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    synth.set_defaults(run=run)


def run(args) -> int:
    from tqdm import tqdm

    from ..data.synthetic import write_synthetic_dataset
    from ..storage import StorageError, open_store

    try:
        store = open_store(args.out)
        with tqdm(total=args.videos, desc="clips", unit="clip") as bar:
            write_synthetic_dataset(store, args.videos, seed=args.seed, size=args.size, frames=args.frames,
                                    progress=bar)
    except StorageError as e:
        raise UsageError(f"out: {e}") from None
    print(f"dataset: {store.uri('manifest.jsonl')} ({args.videos} clips)")
    return 0
