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
    415: "the body is not application/json", 422: "a field is invalid or outside the service's limits",
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
    image: str = Field(min_length=1, description="the subject's image, base64 PNG or JPEG")


class VideoRequest(_Body):
    """POST /v1/videos. Omitted settings take the service's defaults."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    subjects: list[SubjectIn] = Field(default_factory=list)
    num_frames: int | None = Field(None, description="of the form 4k+1")
    height: int | None = Field(None, description="pixels, a multiple of 16")
    width: int | None = Field(None, description="pixels, a multiple of 16")
    steps: int | None = None
    guidance: float | None = Field(None, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    step_cache_threshold: float | None = Field(None, ge=0, le=1, allow_inf_nan=False,
                                               description="first-block cache threshold (0: off); default the service's")


class JobAccepted(BaseModel):
    id: str
    status: JobState


class JobView(BaseModel):
    """GET /v1/videos/{id}."""

    id: str
    status: JobState
    progress: float = Field(ge=0, le=1)
    error: str | None = None
    video_url: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None


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


def parse_body(raw: bytes) -> VideoRequest:
    try:
        return VideoRequest.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors()[0]
        field = field_path(first["loc"]) or None
        if first["type"] == "json_invalid":
            raise RequestRejected(400, "invalid_json", f"body is not valid JSON: {first['msg']}") from None
        raise RequestRejected(422, "invalid_request", f"{field or 'body'}: {first['msg']}", field) from None


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
    gen = dict(num_frames=given(req.num_frames, defaults.num_frames), height=given(req.height, defaults.height),
               width=given(req.width, defaults.width), steps=given(req.steps, defaults.steps))
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
