"""The evaluation test set: cases of subject images with an interaction prompt, as JSON lines.

    {"id": "0007", "prompt": "A man plays the guitar", "seed": 7,
     "subjects": [{"name": "man", "image": "subjects/human/man.png", "kind": "human"},
                  {"name": "guitar", "image": "subjects/object/guitar.png", "kind": "object"}],
     "reference_video": null}

Image paths are relative to the cases file (or absolute, or s3:// URIs). `kind` picks the metric:
Face-sim for humans, DINO-sim for animals and objects. `build_cases` makes a set like the paper's 100
pairs from a directory of subject images, one folder per kind.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from ..model.request import word_in_prompt

KINDS = ("human", "animal", "object")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

# Interaction prompts per pair of kinds ({a} and {b} are the subject words; humans come first).
INTERACTIONS: dict[tuple[str, str], list[str]] = {
    ("human", "object"): ["A {a} plays the {b} on a sunny street", "A {a} lifts the {b} and smiles",
                          "A {a} carries the {b} across a park", "A {a} sits beside the {b} and looks at it",
                          "A {a} holds the {b} up to the camera"],
    ("human", "animal"): ["A {a} pets the {b} in a garden", "A {a} walks with the {b} along the beach",
                          "A {a} feeds the {b} at sunset", "A {a} plays with the {b} on the grass"],
    ("human", "human"): ["A {a} and a {b} dance together in a hall", "A {a} shakes hands with a {b}",
                         "A {a} talks with a {b} in a cafe"],
    ("animal", "object"): ["A {a} sniffs the {b} on the floor", "A {a} runs past the {b}",
                           "A {a} sleeps next to the {b}"],
    ("animal", "animal"): ["A {a} chases a {b} across a field", "A {a} and a {b} rest side by side"],
}


class InvalidCases(ValueError):
    """A cases file that cannot be evaluated; the message names the line and the field."""


@dataclass
class EvalSubject:
    name: str  # its word in the prompt
    image: str  # path (relative to the cases file) or URI
    kind: str = "object"  # human | animal | object


@dataclass
class EvalCase:
    id: str
    prompt: str
    subjects: list[EvalSubject]
    seed: int = 0
    reference_video: str | None = None  # a real video of this case, for FVD (optional)
    base: str = field(default="", repr=False, compare=False)  # where relative image paths start

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("base")
        return data

    def resolve(self, path: str) -> str:
        if "://" in path or Path(path).is_absolute() or not self.base:
            return path
        return f"{self.base.rstrip('/')}/{path}"

    def image(self, subject: EvalSubject) -> Image.Image:
        return load_image(self.resolve(subject.image))


def load_image(uri: str) -> Image.Image:
    from ..images import ImageRejected, read_image
    from ..storage import open_store, split_uri

    directory, name = split_uri(uri)
    try:
        return read_image(open_store(directory).read_bytes(name))[0]
    except ImageRejected as e:
        raise InvalidCases(f"{uri}: {e}") from None


def read_cases(uri: str) -> list[EvalCase]:
    """Cases from a .jsonl file (path or s3:// URI); InvalidCases names the first problem."""
    from ..storage import StorageError, open_store, split_uri

    directory, name = split_uri(uri)
    try:
        text = open_store(directory).read_text(name)
    except (StorageError, OSError) as e:
        raise InvalidCases(f"{uri}: cannot read it ({e})") from None
    cases, seen = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{uri} line {number}"
        try:
            row = json.loads(line)
            subjects = [EvalSubject(**s) for s in row.pop("subjects")]
            case = EvalCase(subjects=subjects, base=directory, **row)
        except (ValueError, TypeError, KeyError) as e:
            raise InvalidCases(f"{where}: not a case ({e})") from None
        if case.id in seen:
            raise InvalidCases(f"{where}: id {case.id!r} appears twice")
        seen.add(case.id)
        for i, subject in enumerate(case.subjects):
            if subject.kind not in KINDS:
                raise InvalidCases(f"{where}: subjects[{i}].kind must be one of {', '.join(KINDS)}")
        if not case.prompt.strip() or not case.subjects:
            raise InvalidCases(f"{where}: a case needs a prompt and at least one subject")
        for i, subject in enumerate(case.subjects):
            if not word_in_prompt(subject.name, case.prompt):
                raise InvalidCases(f"{where}: subjects[{i}].name {subject.name!r} does not appear in the prompt")
        cases.append(case)
    if not cases:
        raise InvalidCases(f"{uri}: no cases")
    return cases


def write_cases(cases: list[EvalCase], path: str | Path) -> None:
    Path(path).write_text("".join(json.dumps(c.to_json()) + "\n" for c in cases))


def subject_library(root: str | Path) -> dict[str, list[tuple[str, str]]]:
    """kind -> [(word, image path relative to root)] from ROOT/{human,animal,object}/WORD.png."""
    root = Path(root)
    library = {kind: sorted((p.stem.replace("_", " "), str(p.relative_to(root)))
                            for p in (root / kind).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
               for kind in KINDS if (root / kind).is_dir()}
    if not any(library.values()):
        raise InvalidCases(f"{root}: no subject images (expected {'/, '.join(KINDS)}/ folders of WORD.png)")
    return library


def build_cases(library: dict[str, list[tuple[str, str]]], count: int = 100, seed: int = 0,
                image_prefix: str = "") -> list[EvalCase]:
    """`count` two-subject cases spread over the pair types the library allows, each with an interaction
    prompt; deterministic for a seed. image_prefix: prepended to the library's relative image paths."""
    rng = random.Random(seed)
    pair_types = [(a, b) for (a, b) in INTERACTIONS
                  if library.get(a) and library.get(b) and (a != b or len(library[a]) >= 2)]
    if not pair_types:
        raise InvalidCases("the subject library has no two subjects to pair")
    cases = []
    for i in range(count):
        kind_a, kind_b = pair_types[i % len(pair_types)]
        (word_a, image_a), (word_b, image_b) = (rng.sample(library[kind_a], 2) if kind_a == kind_b
                                                else (rng.choice(library[kind_a]), rng.choice(library[kind_b])))
        prompt = rng.choice(INTERACTIONS[(kind_a, kind_b)]).format(a=word_a, b=word_b)
        cases.append(EvalCase(id=f"{i:04d}", prompt=prompt, seed=seed * 100_000 + i, subjects=[
            EvalSubject(word_a, f"{image_prefix}{image_a}", kind_a),
            EvalSubject(word_b, f"{image_prefix}{image_b}", kind_b)]))
    return cases
