"""`polyvivid` command line: one module per command, each with `register(subparsers)` (its flags) and
`run(args) -> int`; the flags and types several commands share are in options.py.

Bad input exits 2 with one line on stderr (no traceback). torch and the model load only inside
the commands that need them (in their `run`), so `polyvivid --help` stays fast and the operator-side
commands (crds, render) need no torch.
"""

from __future__ import annotations

import argparse
import sys

from . import (crds, curate, eval, eval_cases, generate, plan, precompute, render, request, sample_subjects,
               serve, synth_data, train)
from .options import Parser, UsageError

__all__ = ["COMMANDS", "EXIT_USAGE", "Parser", "UsageError", "build_parser", "main"]

EXIT_USAGE = 2

# The commands, in the order `polyvivid --help` lists them.
COMMANDS = (generate, train, precompute, plan, curate, synth_data, serve, request, crds, render, eval, eval_cases, sample_subjects)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="polyvivid",
        description="PolyVivid: multi-subject video customization: generation, training, data curation "
                    "and serving.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "run", None):
            parser.print_help()
            return EXIT_USAGE
        return args.run(args)
    except UsageError as e:
        print(f"polyvivid: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("polyvivid: interrupted", file=sys.stderr)
        return 130
