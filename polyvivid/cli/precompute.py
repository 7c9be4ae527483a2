"""`polyvivid precompute`: only the precompute phase of a PolyVividTraining (train/precompute.py).

`polyvivid train` runs it anyway before the first step when spec.precompute is set; this command runs it
alone, ahead of time (say on other machines), and exits. Training with the same spec, output and
precompute.output then finds the encodings and starts at once.
"""

from __future__ import annotations

import argparse

from . import train
from .options import int_in


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "precompute", help="encode a training's inputs once (latents, LLaVA and CLIP embeddings) into the store",
        description="Encode every input the PolyVividTraining in SPEC reads: each sample's VAE latents at every "
                    "stage size and frame window (spec.dataset.frameWindows), LLaVA's z_T with the subjects' token "
                    "spans and CLIP's pooled embedding for every caption variant, and the subjects' latents, as "
                    "safetensors shards with an index under spec.precompute.output (default OUTPUT/precomputed), "
                    "in a directory per configuration. Resumable: a rerun encodes only what is missing, and a "
                    "finished configuration is reused. Under torchrun every rank encodes its share.",
        epilog="example: polyvivid precompute training.yaml --local --nproc 2 --output file:///tmp/run1",
    )
    train.add_run_options(parser, "PolyVividTraining YAML (spec.precompute optional: its defaults apply)",
                          "the training's output (file:// path or s3://), overriding spec.output; the encodings go "
                          "under OUTPUT/precomputed unless spec.precompute.output says")
    # what `train` forwards to its --local workers; no metrics endpoint here (progress.json says how far it got)
    parser.add_argument("--metrics-addr", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--metrics-port", type=int_in(0, 0), default=0, help=argparse.SUPPRESS)
    parser.set_defaults(run=run)


def run(args) -> int:
    return train.run(args, precompute_only=True)
