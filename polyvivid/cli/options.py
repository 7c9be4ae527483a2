"""What several commands share: the error type and parser that turn bad input into one line and exit 2,
the argparse types with the documented bounds (polyvivid/api/common.py), the prompt/subject and Ray auth
flags, and reading a manifest with the command-line overrides applied.

Light on purpose (no torch, no pydantic models until a command runs): `polyvivid --help` imports it.
"""

from __future__ import annotations

import argparse
import os

from ..api.common import MAX_FRAMES, MAX_GUIDANCE, MAX_SEED, MAX_SIDE, MAX_STEPS


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(message)


def _in_range(convert, what: str, low, high):
    """An argparse type: `convert(text)` within [low, high] (the documented bounds; NaN and infinity are
    outside every range), else a one-line error."""
    show = (lambda v: f"{v:g}") if convert is float else str

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not low <= value <= high:  # False for NaN
            raise argparse.ArgumentTypeError(f"{text} is outside {show(low)}..{show(high)}")
        return value
    return parse


def int_in(low: int, high: int):
    return _in_range(int, "an integer", low, high)


def number_in(low: float, high: float):
    return _in_range(float, "a number", low, high)


# The types of the options several commands share, with the documented bounds (polyvivid/api/common.py).
FRAMES, SIDE, STEPS = int_in(1, MAX_FRAMES), int_in(16, MAX_SIDE), int_in(1, MAX_STEPS)
GUIDANCE, SEED = number_in(0, MAX_GUIDANCE), int_in(0, MAX_SEED)


def output_uri(text: str) -> str:
    """An argparse type: where to write, without '..' segments (an S3 key would take them literally, a
    path would leave the directory it names)."""
    from ..storage import has_dot_segments

    if has_dot_segments(text):
        raise argparse.ArgumentTypeError(f"{text!r}: '..' is not allowed in an output; give the path without it")
    return text


def _subject(value: str) -> tuple[str, str]:
    word, sep, image = value.partition("=")
    if not sep or not word.strip() or not image:
        raise argparse.ArgumentTypeError(f"expected WORD=IMAGE, got {value!r}")
    return word.strip(), image


def add_prompt_and_subjects(parser: argparse.ArgumentParser) -> None:
    """--prompt and --subject WORD=IMAGE (generate, request); `existing_subject_file` checks an IMAGE."""
    parser.add_argument("--prompt", required=True, help="what happens; every subject WORD must appear in it")
    parser.add_argument("--subject", action="append", type=_subject, default=[], metavar="WORD=IMAGE",
                        help="a subject: its word in the prompt and an image file (PNG/JPEG); repeat per subject")


def existing_subject_file(word: str, path: str) -> str:
    if not os.path.isfile(path):
        raise UsageError(f"subject {word!r}: image not found: {path}")
    return path


def add_ray_auth_flag(parser: argparse.ArgumentParser) -> None:
    """--insecure-ray-no-auth (curate, serve): the command passes it to polyvivid.ray_local."""
    parser.add_argument("--insecure-ray-no-auth", action="store_true",
                        help="with --local: start Ray without its token authentication (a warning says so); "
                             "Ray listens on 127.0.0.1 either way")


def load_spec(args, kind, **updates):
    """The manifest's spec (`args.spec`) with the command-line overrides applied (`--store` for every kind),
    and the artifact store pointed at its S3 endpoint. Bad manifests exit 2 naming the field."""
    from ..api import SpecError, load_resource

    try:
        spec = load_resource(args.spec, kind).spec
    except SpecError as e:
        raise UsageError(f"{args.spec}: {e}") from None
    if args.store:
        updates["storage"] = spec.storage.model_copy(update={"endpoint": args.store})
    spec = spec.model_copy(update=updates)
    try:
        output_uri(spec.output)
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"{args.spec}: spec.output: {e}") from None
    os.environ.update(spec.storage.environment())
    return spec
