"""The HTTP API's bodies and every check a request passes before it becomes a job.

No torch and no Ray here: the ingress runs these checks, and the tests call them directly.
Every failure is a `RequestRejected` naming the field, which the ingress turns into a 4xx JSON body.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..api.common import MAX_GUIDANCE, MAX_SEED, field_path
from ..api.service import GenerationDefaults, Limits
from ..model.request import InvalidRequest, validate_request

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
MAX_PROMPT_CHARS = 2000
FPS = 24  # frames per second of every video: what `seconds` converts with
MODEL_NAME = "polyvivid"  # the `model` a video object names (requests may name it, or leave it out)
# OpenAI's video statuses for ours (the API speaks OpenAI's; job records keep ours)
OPENAI_STATUS = {"queued": "queued", "running": "in_progress", "succeeded": "completed", "failed": "failed",
                 "cancelled": "cancelled"}
OpenAIStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]


class RequestRejected(Exception):
    """A request the API refuses: HTTP status, a machine-readable code, the field at fault, a message."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.field, self.message, self.headers = status, code, field, message, headers

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. invalid_request, out_of_limits, queue_full")
    message: str
    field: str | None = Field(None, description="the request field at fault, e.g. subjects[0].image")


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer."""

    error: ErrorDetail


ERROR_STATUSES = {
    400: "the body is not valid JSON", 401: "missing or wrong bearer token", 404: "no such job or route",
    409: "the job is not in a state that allows this", 413: "the body or an image is too large",
    415: "the body is neither application/json nor multipart/form-data",
    422: "a field is invalid or outside the service's limits",
    429: "the queue is full; retry after Retry-After seconds",
    503: "the job store is unavailable; retry after Retry-After seconds",
}


def error_responses(*statuses: int) -> dict[int, dict]:
    """OpenAPI `responses` for a route: each status with the error body and what it means."""
    return {status: {"model": ErrorBody, "description": ERROR_STATUSES[status]} for status in statuses}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SubjectIn(_Body):
    name: str = Field(min_length=1, max_length=100, description="the subject's word or phrase in the prompt")
    image: str = Field(min_length=1, description="the subject's image, base64 PNG or JPEG (in a multipart form it "
                       "may come as an input_reference file instead)")


class VideoRequest(_Body):
    """POST /v1/videos, as JSON or multipart/form-data (OpenAI's create). Omitted settings take the service's
    defaults. OpenAI's fields: model, size, seconds, input_reference (multipart files); ours: the rest."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = Field(None, max_length=200, description=f"any name; the videos say {MODEL_NAME!r}")
    size: str | None = Field(None, pattern=r"^[0-9]{1,5}x[0-9]{1,5}$", description="WIDTHxHEIGHT, e.g. 960x544 "
                             "(or width and height)")
    seconds: float | None = Field(None, gt=0, le=60, description=f"duration, at {FPS} fps rounded to 4k+1 frames "
                                  "(or num_frames)")
    subjects: list[SubjectIn] = Field(default_factory=list, description="each subject's word and image; in a "
                                      "multipart form a JSON-encoded string, and an entry without `image` takes "
                                      "the next input_reference file")
    num_frames: int | None = Field(None, description="of the form 4k+1")
    height: int | None = Field(None, description="pixels, a multiple of 16")
    width: int | None = Field(None, description="pixels, a multiple of 16")
    steps: int | None = None
    guidance: float | None = Field(None, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    step_cache_threshold: float | None = Field(None, ge=0, le=1, allow_inf_nan=False,
                                               description="first-block cache threshold (0: off); default the service's")


class VideoError(BaseModel):
    code: str
    message: str


class JobView(BaseModel):
    """A video job as OpenAI's video object (GET /v1/videos/{id}, and what create, list and cancel answer),
    with our own fields after OpenAI's."""

    id: str
    object: Literal["video"] = "video"
    model: str = MODEL_NAME
    status: OpenAIStatus
    progress: int = Field(ge=0, le=100, description="percent")
    created_at: int = Field(description="Unix seconds")
    completed_at: int | None = Field(None, description="Unix seconds, once the job ended")
    expires_at: int | None = None
    prompt: str
    size: str = Field(description="WIDTHxHEIGHT")
    seconds: str = Field(description=f"duration at {FPS} fps")
    error: VideoError | None = None
    # ours
    video_url: str | None = Field(None, description="where the mp4 is, once completed")
    started_at: float | None = None
    finished_at: float | None = None
    num_frames: int
    steps: int
    seed: int
    subjects: list[str] = Field(description="the subjects' words")


def job_view(record, video_url: str | None) -> dict:
    """A job record (jobs.JobRecord) as the API shows it (JobView)."""
    req = record.request
    error = None
    if record.status == "failed":
        error = VideoError(code="generation_failed", message=record.error or "the generation failed")
    ended = record.finished_at if record.ended else None
    return JobView(id=record.id, status=OPENAI_STATUS[record.status], progress=int(round(100 * record.progress)),
                   created_at=int(record.created_at), completed_at=int(ended) if ended else None, prompt=req.prompt,
                   size=f"{req.width}x{req.height}", seconds=f"{req.num_frames / FPS:.2f}".rstrip("0").rstrip("."),
                   error=error, video_url=video_url, started_at=record.started_at, finished_at=record.finished_at,
                   num_frames=req.num_frames, steps=req.steps, seed=req.seed,
                   subjects=[s.name for s in req.subjects]).model_dump()


class VideoList(BaseModel):
    """GET /v1/videos: OpenAI's list page."""

    object: Literal["list"] = "list"
    data: list[JobView]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool


@dataclass(frozen=True)
class Subject:
    name: str
    image: bytes   # the client's bytes as sent, checked to be a PNG or JPEG
    extension: str  # png | jpg


@dataclass(frozen=True)
class Generation:
    """A checked request with the defaults filled in: what a job record stores."""

    prompt: str
    subjects: tuple[Subject, ...]
    num_frames: int
    height: int
    width: int
    steps: int
    guidance: float
    seed: int
    step_cache_threshold: float = 0.0

    def settings(self) -> dict:
        return {"prompt": self.prompt, "subjects": [s.name for s in self.subjects], "num_frames": self.num_frames,
                "height": self.height, "width": self.width, "steps": self.steps, "guidance": self.guidance,
                "seed": self.seed, "step_cache_threshold": self.step_cache_threshold}


def parse_body(raw: bytes, content_type: str = "application/json") -> VideoRequest:
    """The request from a JSON body or a multipart form (parse_form)."""
    try:
        if content_type.startswith("multipart/form-data"):
            return VideoRequest.model_validate(parse_form(raw, content_type))
        return VideoRequest.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors()[0]
        field = field_path(first["loc"]) or None
        if first["type"] == "json_invalid":
            raise RequestRejected(400, "invalid_json", f"body is not valid JSON: {first['msg']}") from None
        raise RequestRejected(422, "invalid_request", f"{field or 'body'}: {first['msg']}", field) from None


_FORM_NUMBERS = {"num_frames": int, "height": int, "width": int, "steps": int, "seed": int, "guidance": float,
                 "seconds": float, "step_cache_threshold": float}


def parse_form(raw: bytes, content_type: str) -> dict:
    """A multipart/form-data body (OpenAI's SDK sends create as one) as the JSON body it stands for: fields
    are text (numbers converted, `subjects` a JSON-encoded array), and the input_reference files fill, in
    order, the subjects given without an image (base64, as in JSON)."""
    import json
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    if not message.is_multipart():
        raise RequestRejected(400, "invalid_form", "body is not a multipart form")
    fields, files = {}, []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            raise RequestRejected(400, "invalid_form", "a form part has no name")
        data = part.get_payload(decode=True) or b""
        if name.removesuffix("[]") == "input_reference":
            files.append(data)
            continue
        text = data.decode("utf-8", "replace")
        try:
            fields[name] = _FORM_NUMBERS[name](text) if name in _FORM_NUMBERS else text
        except ValueError:
            raise RequestRejected(422, "invalid_request", f"{name}: not a number: {text[:40]!r}", name) from None
    subjects = fields.get("subjects")
    if subjects is not None:
        try:
            subjects = json.loads(subjects)
        except json.JSONDecodeError:
            raise RequestRejected(422, "invalid_request", "subjects: a JSON-encoded array of {name, image?} in a "
                                  "form", "subjects") from None
        if not isinstance(subjects, list) or not all(isinstance(s, dict) for s in subjects):
            raise RequestRejected(422, "invalid_request", "subjects: a JSON-encoded array of {name, image?}", "subjects")
    subjects = subjects or []
    pending = iter(files)
    for i, subject in enumerate(subjects):
        if "image" not in subject:
            data = next(pending, None)
            if data is None:
                raise RequestRejected(422, "invalid_request", f"subjects[{i}].image: no image, and no input_reference "
                                      "file left for it", f"subjects[{i}].image")
            subject["image"] = base64.b64encode(data).decode()
    if next(pending, None) is not None:
        raise RequestRejected(422, "invalid_request", "input_reference: more files than subjects without an image; "
                              "name each file's subject in `subjects`", "input_reference")
    if subjects:
        fields["subjects"] = subjects
    return fields


def check_image(data: str, field: str) -> tuple[bytes, str]:
    """Base64 -> bytes, accepted only if the bytes are a PNG or JPEG of sane dimensions."""
    from ..images import ImageRejected, read_image

    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestRejected(422, "invalid_image", f"{field}: not valid base64", field) from None
    try:
        _, extension = read_image(raw)
    except ImageRejected as e:
        raise RequestRejected(413 if e.too_large else 422, "image_too_large" if e.too_large else "invalid_image",
                              f"{field}: {e}", field) from None
    return raw, extension


def check_request(req: VideoRequest, limits: Limits, defaults: GenerationDefaults, seed: int) -> Generation:
    """The request against the service's limits, with defaults filled in (seed: used when none given)."""
    if len(req.subjects) > limits.max_subjects:
        raise RequestRejected(422, "too_many_subjects",
                              f"subjects: {len(req.subjects)} given, this service accepts at most {limits.max_subjects}",
                              "subjects")
    names = [s.name.strip().lower() for s in req.subjects]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise RequestRejected(422, "invalid_request", f"subjects[{i}].name: {req.subjects[i].name!r} given twice",
                                  f"subjects[{i}].name")
    given = lambda value, default: default if value is None else value  # noqa: E731 (0 is given, not left out)
    width, height, frames = req.width, req.height, req.num_frames
    if req.size is not None:  # OpenAI's "WIDTHxHEIGHT"
        if width is not None or height is not None:
            raise RequestRejected(422, "invalid_request", "size: give size or width and height, not both", "size")
        width, height = (int(v) for v in req.size.split("x"))
    if req.seconds is not None:
        if frames is not None:
            raise RequestRejected(422, "invalid_request", "seconds: give seconds or num_frames, not both", "seconds")
        frames = 4 * round(req.seconds * FPS / 4) + 1
    gen = dict(num_frames=given(frames, defaults.num_frames), height=given(height, defaults.height),
               width=given(width, defaults.width), steps=given(req.steps, defaults.steps))
    for name, value, bound in (("num_frames", gen["num_frames"], limits.max_frames),
                               ("height", gen["height"], limits.max_height), ("width", gen["width"], limits.max_width),
                               ("steps", gen["steps"], limits.max_steps)):
        if value < 1 or value > bound:
            raise RequestRejected(422, "out_of_limits", f"{name}: {value} is outside 1..{bound}", name)
    guidance = given(req.guidance, defaults.guidance)
    if not 0 <= guidance <= MAX_GUIDANCE:  # NaN fails this too
        raise RequestRejected(422, "out_of_limits", f"guidance: {guidance} is outside 0..{MAX_GUIDANCE:g}", "guidance")
    try:
        validate_request(req.prompt, [s.name for s in req.subjects], gen["num_frames"], gen["height"], gen["width"],
                         limits.max_subjects)
    except InvalidRequest as e:
        message = str(e) if str(e).startswith(e.field) else f"{e.field}: {e}"
        raise RequestRejected(422, "invalid_request", message, e.field) from None
    subjects = tuple(Subject(s.name.strip(), *check_image(s.image, f"subjects[{i}].image"))
                     for i, s in enumerate(req.subjects))
    chosen_seed = req.seed if req.seed is not None else (defaults.seed if defaults.seed is not None else seed)
    return Generation(prompt=req.prompt, subjects=subjects, guidance=float(guidance), seed=chosen_seed,
                      step_cache_threshold=float(given(req.step_cache_threshold, defaults.step_cache_threshold)), **gen)
