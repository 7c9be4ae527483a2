"""`polyvivid eval-cases`: an evaluation test set (subject pairs with interaction prompts) for `polyvivid eval`."""

from __future__ import annotations

import os
from pathlib import Path

from .options import SEED, UsageError, int_in


def register(subparsers) -> None:
    cases = subparsers.add_parser(
        "eval-cases", help="build an evaluation test set: subject pairs with interaction prompts",
        description="Write COUNT two-subject cases (as the paper's 100 pairs: human-object, human-animal, "
                    "human-human, animal-object, animal-animal) with an interaction prompt each, from a directory "
                    "of subject images SUBJECTS/{human,animal,object}/WORD.png, or from drawn sample subjects.")
    source = cases.add_mutually_exclusive_group(required=True)
    source.add_argument("--subjects", metavar="DIR", help="human/, animal/, object/ folders of WORD.png images")
    source.add_argument("--drawn", action="store_true",
                        help="draw sample subjects (man, tiger, dog, guitar) beside OUT and use them")
    cases.add_argument("--out", required=True, metavar="CASES.jsonl", help="where to write the cases")
    cases.add_argument("--count", type=int_in(1, 100_000), default=100, help="how many cases (default 100)")
    cases.add_argument("--seed", type=SEED, default=0, help="which pairs and prompts (default 0)")
    cases.set_defaults(run=run)


def run(args) -> int:
    from ..eval.cases import InvalidCases, build_cases, subject_library, write_cases

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.drawn:
        from ..samples import draw_subject

        root = out.parent / "subjects"
        for kind, words in (("human", ["man"]), ("animal", ["tiger", "dog"]), ("object", ["guitar"])):
            (root / kind).mkdir(parents=True, exist_ok=True)
            for word in words:
                draw_subject(word).save(root / kind / f"{word}.png")
    else:
        root = Path(args.subjects)
        if not root.is_dir():
            raise UsageError(f"--subjects: not a directory: {root}")
    try:
        library = subject_library(root)
        # image paths relative to the cases file, so the set moves as one directory
        cases = build_cases(library, count=args.count, seed=args.seed,
                            image_prefix=f"{os.path.relpath(root, out.parent)}/")
    except InvalidCases as e:
        raise UsageError(str(e)) from None
    write_cases(cases, out)
    kinds = {}
    for case in cases:
        key = "-".join(s.kind for s in case.subjects)
        kinds[key] = kinds.get(key, 0) + 1
    print(f"wrote {len(cases)} cases to {out} ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})")
    return 0
