"""The multi-subject dataset format (what curation writes and training reads).

A dataset is a directory or S3 prefix with `manifest.jsonl`, one sample per line, every path
relative to the dataset root:

    {"id": "000001", "video": "clips/000001.mp4", "caption": "A striped red circle chases ...",
     "subjects": [{"word": "circle", "image": "subjects/000001_0.png", "mask": "masks/000001_0.png"}],
     "fps": 8, "num_frames": 17, "width": 96, "height": 96}

`word` appears in the caption; `image` is the subject cut out on a clean background; `mask` is
optional. Optional too: the rest of the structured caption (`short_caption`, `background`, `style`,
`camera`), which training combines with `caption`, and `unmatched_subjects`, phrases the caption
names without an image. `num_frames` lets training drop clips too short for a stage before reading
them; fps/width/height are informational.
"""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ..storage import ArtifactStore, has_dot_segments

MANIFEST = "manifest.jsonl"


def _inside_dataset(path: str | None) -> str | None:
    """A dataset path is relative to the dataset root and stays inside it."""
    if path is not None and (path.startswith(("/", "\\")) or "://" in path or has_dot_segments(path)):
        raise ValueError(f"{path!r} must be a path inside the dataset (relative, no '..')")
    return path


InsidePath = Annotated[str, Field(min_length=1), AfterValidator(_inside_dataset)]


def _blank_is_none(value):
    return (value.strip() or None) if isinstance(value, str) else value


OptionalText = Annotated[str | None, BeforeValidator(_blank_is_none)]  # "" and "  " mean not given


class SubjectRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    word: str = Field(min_length=1)  # the caption's phrase for it, what the fusion template names
    image: InsidePath
    mask: Annotated[str | None, AfterValidator(_inside_dataset)] = None
    # unique within the sample: two subjects the caption calls by one word ("man") are "man" and "man 2"
    name: str | None = Field(None, min_length=1)

    @property
    def key(self) -> str:
        return self.name or self.word


class SampleRecord(BaseModel):
    model_config = ConfigDict(extra="allow")  # curation may add scores and provenance
    id: str = Field(min_length=1)
    video: InsidePath
    caption: str = Field(min_length=1)
    subjects: list[SubjectRecord] = Field(min_length=1)
    # the rest of the structured caption (paper A.3), combined with `caption` during training
    # (sampling.compose_caption); curation writes "" for a part the captioner did not give
    short_caption: OptionalText = None
    background: OptionalText = None
    style: OptionalText = None
    camera: OptionalText = None
    # phrases the caption names that curation could not ground to an image: such a clip is not single-subject data
    unmatched_subjects: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    fps: float | None = None
    num_frames: int | None = None
    width: int | None = None
    height: int | None = None

    @model_validator(mode="after")
    def _words_in_caption(self):
        names = [s.key.lower() for s in self.subjects]
        if len(set(names)) != len(names):
            raise ValueError(f"subject names must be distinct (give look-alikes a `name`), got {names}")
        missing = [s.word for s in self.subjects if s.word.lower() not in self.caption.lower()]
        if missing:
            raise ValueError(f"subject words not in the caption: {missing}")
        return self


def write_manifest(store: ArtifactStore, samples: list[SampleRecord]) -> None:
    store.write_text(MANIFEST, "".join(s.model_dump_json(exclude_defaults=True) + "\n" for s in samples))


def read_manifest(store: ArtifactStore) -> tuple[list[SampleRecord], list[tuple[int, str]]]:
    """Valid samples, and (line number, reason) for every line that is not one."""
    samples, rejected = [], []
    for number, line in enumerate(store.read_text(MANIFEST).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            samples.append(SampleRecord.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as e:
            reason = str(e).splitlines()[0] if isinstance(e, json.JSONDecodeError) else \
                "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
            rejected.append((number, reason))
    return samples, rejected
