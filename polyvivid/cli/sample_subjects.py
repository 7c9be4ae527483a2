"""`polyvivid sample-subjects`: drawn subject images for the demo."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    samples = subparsers.add_parser("sample-subjects", help="write drawn sample subject images (for the demo)",
                                    description="Write PNG drawings of a man, a guitar, a tiger and a dog to DIR.")
    samples.add_argument("--out", required=True, help="directory to write WORD.png files into")
    samples.set_defaults(run=run)


def run(args) -> int:
    from ..samples import SAMPLES, draw_subject

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for word in SAMPLES:
        draw_subject(word).save(out / f"{word}.png")
        print(out / f"{word}.png")
    return 0
