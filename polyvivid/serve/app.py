"""The Ray Serve application a PolyVividService runs: an HTTP ingress and a generator holding the model.

    client --HTTP--> Ingress (FastAPI, 1 replica, no model) --handle--> Generator (N replicas, GPUs)
                        |  checks, job records, 429 when full          |  denoises, writes progress
                        +---------------- artifact store: jobs/ID/... --+

`build_app(args)` is the application builder named in a RayService's serveConfigV2
(`import_path: polyvivid.serve.app:build_app`, `args` from `serve_config_args`); `polyvivid serve
--local` calls the same builder. Job state lives in the store, so any replica (or a restarted one)
answers for any job; the ingress hands unfinished jobs over again when it (re)starts.

Metrics (ray.serve.metrics, named in polyvivid/telemetry.py SERVING; Ray exports them with a `ray_` prefix
next to its own `ray_serve_*`): ray_polyvivid_videos_generated_total, ray_polyvivid_generation_seconds,
ray_polyvivid_jobs_inflight, ray_polyvivid_request_rejections_total{reason}.
"""

# No `from __future__ import annotations`: Serve rebuilds the route signatures and FastAPI must see
# real classes (Request), not strings.
import asyncio
import hmac
import logging
import os
import time
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from ray import serve
from ray.serve.exceptions import RequestCancelledError
from ray.serve.handle import DeploymentHandle

from ..api.common import MAX_GUIDANCE, field_path
from ..api.service import Limits, ServiceSpec
from ..storage import ObjectNotFound, S3Store, StorageError, open_store, with_retries
from ..telemetry import SERVING
from . import page
from .config import TOKEN_ENV
from .jobs import RECORD_WITHIN_S, JobNotFound, JobRecord, JobStore
from .schema import (OPENAI_STATUS, JobView, RequestRejected, VideoDeleted, VideoList, VideoRequest, check_request,
                     error_responses, job_view, parse_body)
from .sequence_parallel import JobCancelled, SequenceGroup, job_inputs, load_replica_pipeline, run_request

log = logging.getLogger("polyvivid.serve")

FPS = 24
RETRY_AFTER_S = 5
MAX_WAIT_S = 60  # longest long poll on GET /v1/videos/{id}?wait=


def _spec(args: dict) -> ServiceSpec:
    return ServiceSpec.model_validate(args["spec"])


# --------------------------------------------------------------------------------------------- generator

@serve.deployment(max_ongoing_requests=1, health_check_period_s=10)
class Generator:
    """Holds one pipeline; runs one job at a time per max_ongoing_requests slot, off the event loop."""

    def __init__(self, args: dict):
        from ray.serve.metrics import Counter, Histogram

        spec = _spec(args)
        self.model_ref = args["model"]
        self.jobs = JobStore(open_store(spec.output))
        self.pipe, self.device = load_replica_pipeline(spec, self.model_ref)
        # N > 1: this actor is rank 0 of N processes that run each request together (serve/sequence_parallel.py)
        self.group = SequenceGroup(args, spec, self.pipe, self.device) if spec.replicas.degree > 1 else None
        self.generated = Counter(SERVING["generated"].name, SERVING["generated"].help)
        self.seconds = Histogram(SERVING["seconds"].name, SERVING["seconds"].help,
                                 boundaries=[0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 3600])
        log.info("generator ready: %s on %s x%d", self.model_ref, self.device, spec.replicas.degree)

    def check_health(self) -> None:
        if self.group is not None and self.group.broken:  # Serve replaces this replica with a fresh group
            raise RuntimeError("the sequence-parallel group failed during a job")

    async def ready(self) -> dict:
        """What it serves, and on how many processes (the sequence-parallel group's world size)."""
        import torch.distributed as dist

        return {"model": self.model_ref, "processes": dist.get_world_size() if self.group is not None else 1}

    async def generate(self, job_id: str) -> dict:
        return await asyncio.to_thread(self._generate, job_id)

    def _generate(self, job_id: str) -> dict:
        """Run one job. Returns {"status"}, plus "recorded": False with the error when the store took no
        end record (the ingress writes it once the store is back), or {"status": "not_started"} when
        the store could not even be read or this replica's group is broken (the ingress hands the job over
        again later)."""
        import torch

        from ..model.request import InvalidRequest
        from ..video import encode_mp4

        jobs = self.jobs
        if self.group is not None and self.group.broken:  # left queued: the ingress hands it to the replacement
            return {"status": "not_started"}
        try:
            record = with_retries(jobs.read, job_id, what=f"read job {job_id}")
            if record.ended:
                return {"status": record.status}
            inputs = job_inputs(record.request, with_retries(jobs.subject_images, record,
                                                             what=f"read the images of job {job_id}"))
            if jobs.cancel_requested(job_id):
                record.status, record.finished_at = "cancelled", time.time()
                return self._record_end(record)
            record.status, record.started_at, record.progress = "running", time.time(), 0.0
            with_retries(jobs.write, record, what=f"write job {job_id}")
        except JobNotFound:
            return {"status": "not_found"}
        except StorageError as e:
            log.warning("job %s not started, the store is unavailable: %s", job_id, e)
            return {"status": "not_started"}
        warned = False  # progress and cancel checks are best effort: an outage must not fail the job

        def on_step(step: int, total: int) -> None:
            nonlocal warned
            record.progress = round(0.99 * step / total, 4)  # 1.0 only once the video is stored
            try:
                if jobs.cancel_requested(job_id):
                    raise JobCancelled
                jobs.write(record)
            except StorageError as e:
                if not warned:
                    log.warning("job %s: progress not stored (%s); generating on", job_id, e)
                    warned = True

        start = time.perf_counter()
        try:
            frames = run_request(self.pipe, inputs, on_step) if self.group is None else \
                self.group.generate(inputs, on_step)
            video = encode_mp4(frames, fps=FPS)
            with_retries(jobs.store.write_bytes, jobs.video_key(job_id), video, within_s=RECORD_WITHIN_S,
                         what=f"store the video of job {job_id}")
            record.status, record.progress = "succeeded", 1.0
            self.generated.inc()
            self.seconds.observe(time.perf_counter() - start)
        except JobCancelled:
            record.status = "cancelled"
        except InvalidRequest as e:  # what only the model knows, e.g. its own subject limit
            record.status, record.error = "failed", str(e)
        except StorageError as e:
            log.error("job %s: video not stored: %s", job_id, e)
            record.status = "failed"
            record.error = (f"the video could not be stored (the store was unavailable for {RECORD_WITHIN_S:g} s); "
                            "submit the job again")
        except Exception as e:  # the job ends failed with the reason; the replica lives on
            log.exception("job %s failed", job_id)
            first_line = (str(e).splitlines() or [""])[0]
            record.status, record.error = "failed", f"{e.__class__.__name__}: {first_line}"[:500]
            if self.device == "cuda":
                torch.cuda.empty_cache()
        record.finished_at = time.time()
        return self._record_end(record)

    def _record_end(self, record: JobRecord) -> dict:
        try:
            self.jobs.write_lasting(record)
        except StorageError as e:
            log.error("job %s ended %s but the store took no record: %s", record.id, record.status, e)
            return {"status": record.status, "error": record.error, "recorded": False}
        return {"status": record.status}


# --------------------------------------------------------------------------------------------- ingress

api = FastAPI(
    title="PolyVivid",
    description="Multi-subject video customization: POST a prompt and subject images, poll the job, "
                "download the mp4. Every subject name must appear in the prompt.",
    version="v1",
    openapi_url=None, docs_url=None, redoc_url=None,  # served by the Ingress, which knows its limits and token
)


def openapi_document(routes, limits: Limits, bearer: bool) -> dict:
    """The OpenAPI document: FastAPI's, plus the request body's schema (the route reads the raw body itself,
    to count its bytes, so FastAPI does not see the model) under components, where its $refs point, with
    the service's limits as the bounds of its fields, and the bearer token when /v1 takes one."""
    from fastapi.openapi.utils import get_openapi

    document = get_openapi(title=api.title, version=api.version, description=api.description, routes=routes)
    body = VideoRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    fields = body["properties"]
    fields["subjects"]["maxItems"] = limits.max_subjects
    for name, low, high in (("num_frames", 1, limits.max_frames), ("height", 16, limits.max_height),
                            ("width", 16, limits.max_width), ("steps", 1, limits.max_steps),
                            ("guidance", 0, MAX_GUIDANCE)):
        fields[name]["anyOf"][0].update(minimum=low, maximum=high)
    for name in ("height", "width"):
        fields[name]["anyOf"][0]["multipleOf"] = 16
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update({**body.pop("$defs", {}), "VideoRequest": body})
    if bearer:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, operations in document["paths"].items():
            if path.startswith("/v1/"):
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
    return document


_rejections = None  # the counter of refused requests, made in the ingress replica on first use


def _count_rejection(code: str) -> None:
    global _rejections
    if _rejections is None:
        from ray.serve.metrics import Counter

        _rejections = Counter(SERVING["rejections"].name, SERVING["rejections"].help,
                              tag_keys=SERVING["rejections"].labels)
    _rejections.inc(tags={"reason": code})


@api.exception_handler(RequestRejected)
async def _rejected(request: Request, exc: RequestRejected):
    _count_rejection(exc.code)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError):
    first = exc.errors()[0]
    field = field_path(first["loc"][1:]) or None  # loc[0] is where: path or query
    return await _rejected(request, RequestRejected(422, "invalid_request", f"{field}: {first['msg']}", field))


@api.exception_handler(StorageError)
async def _store_unavailable(request: Request, exc: StorageError):
    """The job store is down (an outage): try again later; nothing accepted is lost meanwhile."""
    if isinstance(exc, ObjectNotFound):
        return await _rejected(request, RequestRejected(404, "not_found", "no such object in the job store"))
    log.warning("job store unavailable: %s", exc)
    return await _rejected(request, RequestRejected(503, "storage_unavailable", "the job store is unavailable; retry "
                                                    "later", headers={"Retry-After": str(RETRY_AFTER_S)}))


@api.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception):  # same shape, and no internals in the body
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": {"code": "internal_error", "message": "internal error (see the server log)",
                                   "field": None}}, status_code=500)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):  # unknown routes and methods, same shape
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:  # every method of the path (Starlette names the first matching route's only)
        path = request.url.path
        methods = {m for r in request.app.routes if isinstance(r, APIRoute) and r.path_regex.match(path)
                   for m in r.methods}
        headers["Allow"] = ", ".join(sorted(methods))
    return JSONResponse({"error": {"code": code, "message": str(exc.detail), "field": None}},
                        status_code=exc.status_code, headers=headers)


@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress:
    """Checks requests, writes job records, hands jobs to the generator, answers for any job."""

    def __init__(self, generator: DeploymentHandle, args: dict):
        from ray.serve.metrics import Gauge

        self.spec = _spec(args)
        self.generator = generator
        self.jobs = JobStore(open_store(self.spec.output))
        self.token = os.environ.get(TOKEN_ENV) or None
        if self.token is None and not self.spec.allow_unauthenticated:  # open only when the spec says so
            raise RuntimeError(f"no API token: {TOKEN_ENV} is not set in this replica (set spec.apiTokenSecretRef, "
                               "or spec.allowUnauthenticated to serve without one)")
        # job id -> (its DeploymentResponse, the task following it), until the generator answered
        self.inflight: dict[str, tuple[Any, asyncio.Task]] = {}
        # job id -> (status, error): ends the store did not take yet; written once it is back
        self.unrecorded: dict[str, tuple[str, str | None]] = {}
        self._accepting = 0  # requests past the queue check whose record is being written
        self._scan_needed = True  # hand over unfinished jobs from the store: at start, and after an outage
        self._model: dict | None = None  # what a generator answered it serves (model, processes), once one did
        self.inflight_gauge = Gauge(SERVING["inflight"].name, SERVING["inflight"].help)
        self._openapi: dict | None = None

    # -- job hand-over ------------------------------------------------------------------------
    #
    # Every accepted job ends succeeded, failed or cancelled, whatever stops on the way:
    # - the generator records the end itself; if the store takes no record (an outage longer than
    #   RECORD_WITHIN_S), the ingress keeps the end in `unrecorded` and writes it once the store is back;
    # - a job the generator could not start (the store unreadable) stays queued in the store, and so
    #   does every job of an ingress that restarted: `_reconcile` hands them over again;
    # - a generator call that fails (its replica died, or cancelled in the queue) is ended by the
    #   ingress, with a reason that names no Ray internals.
    # `_reconcile` runs on Serve's health checks (every 10 s) and before a request when a scan is due.

    def _dispatch(self, job_id: str) -> None:
        response = self.generator.generate.remote(job_id)
        task = asyncio.get_running_loop().create_task(self._follow(job_id, response))
        self.inflight[job_id] = (response, task)
        self.inflight_gauge.set(len(self.inflight))
        task.add_done_callback(lambda _: self._finished(job_id))

    def _finished(self, job_id: str) -> None:
        self.inflight.pop(job_id, None)
        self.inflight_gauge.set(len(self.inflight))

    async def _follow(self, job_id: str, response) -> None:
        try:
            outcome = await response
        except (RequestCancelledError, asyncio.CancelledError):
            outcome = {"status": "cancelled", "recorded": False}
        except Exception:
            log.exception("job %s: generator call failed", job_id)  # the details stay in the log
            outcome = {"status": "failed", "recorded": False,
                       "error": "the generator replica stopped before finishing this job; submit it again"}
        if outcome["status"] == "not_started":
            self._scan_needed = True
        elif outcome.get("recorded") is False:
            self.unrecorded[job_id] = (outcome["status"], outcome.get("error"))
            await self._write_unrecorded()

    async def _write_unrecorded(self) -> bool:
        """Write the ends the store did not take; False while it still takes none."""
        for job_id, (status, error) in list(self.unrecorded.items()):
            try:
                await asyncio.to_thread(self.jobs.end_if_open, job_id, status, error)
            except StorageError:
                return False
            self.unrecorded.pop(job_id, None)
        return True

    async def _reconcile(self) -> None:
        """Write pending ends, then hand over unfinished jobs that nobody runs. Never raises."""
        try:
            if not await self._write_unrecorded() or not self._scan_needed:
                return
            self._scan_needed = False
            records = await asyncio.to_thread(self.jobs.unfinished)
        except StorageError as e:
            self._scan_needed = True
            log.warning("job store unavailable, will retry: %s", e)
            return
        except Exception:
            self._scan_needed = True
            log.exception("job reconciliation failed")
            return
        for record in records:
            if record.id not in self.inflight and record.id not in self.unrecorded:
                log.info("handing over job %s (%s)", record.id, record.status)
                self._dispatch(record.id)

    async def check_health(self) -> None:  # Serve calls this every few seconds: recovery needs no request
        await self._reconcile()

    # -- request checks -----------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise RequestRejected(401, "unauthorized", "missing or wrong bearer token",
                                  headers={"WWW-Authenticate": "Bearer"})

    async def _body(self, request: Request) -> bytes:
        limit = self.spec.limits.max_request_bytes
        content_type = request.headers.get("content-type", "")
        if "application/json" not in content_type and not content_type.startswith("multipart/form-data"):
            raise RequestRejected(415, "unsupported_media_type", "send the request as application/json or "
                                  "multipart/form-data")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestRejected(413, "request_too_large", f"request body of {declared} bytes; at most {limit}")
        body = bytearray()
        async for chunk in request.stream():  # counted as it arrives: no trust in content-length
            body += chunk
            if len(body) > limit:
                raise RequestRejected(413, "request_too_large", f"request body over {limit} bytes")
        return bytes(body)

    def _record(self, job_id: str) -> JobRecord:
        try:
            return self.jobs.read(job_id)
        except JobNotFound:
            raise RequestRejected(404, "not_found", f"no job {job_id!r}", "id") from None

    def _view(self, record: JobRecord, request: Request) -> dict:
        url = None
        if record.status == "succeeded":
            key = self.jobs.video_key(record.id)
            url = self.jobs.store.url(key) if isinstance(self.jobs.store, S3Store) else \
                str(request.url_for("video_content", job_id=record.id))
        return job_view(record, url)

    # -- routes -------------------------------------------------------------------------------

    @api.post("/v1/videos", status_code=202, response_model=JobView,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"$ref": "#/components/schemas/VideoRequest"}},
                  "multipart/form-data": {"schema": {"$ref": "#/components/schemas/VideoRequest"}}}}},
              responses=error_responses(400, 401, 413, 415, 422, 429, 503))
    async def create_video(self, request: Request):
        """Queue a generation; poll GET /v1/videos/{id} for its progress."""
        self._authorize(request)
        if self._scan_needed:
            await self._reconcile()
        raw = await self._body(request)
        gen = check_request(parse_body(raw, request.headers.get("content-type", "")), self.spec.limits,
                            self.spec.defaults, seed=int.from_bytes(os.urandom(4), "little"))
        taken = len(self.inflight) + self._accepting
        if taken >= self.spec.limits.queue_length:
            raise RequestRejected(429, "queue_full", f"{taken} jobs queued or running; retry later",
                                  headers={"Retry-After": str(RETRY_AFTER_S)})
        job_id = JobStore.new_id()
        self._accepting += 1  # holds the slot while the record is written (other requests run meanwhile)
        try:
            record = await asyncio.to_thread(self.jobs.create, job_id, gen)
            self._dispatch(job_id)
        except StorageError as e:
            log.warning("job %s not accepted, the store is unavailable: %s", job_id, e)
            raise RequestRejected(503, "storage_unavailable", "cannot store the job: the job store is unavailable; "
                                  "retry later", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        finally:
            self._accepting -= 1
        return JSONResponse(self._view(record, request), status_code=202, headers={"Location": f"/v1/videos/{job_id}"})

    @api.get("/v1/videos", response_model=VideoList, responses=error_responses(401, 422, 503))
    async def list_videos(self, request: Request,
                          after: str | None = Query(None, description="the last id of the previous page"),
                          limit: int = Query(20, ge=1, le=100), order: str = Query("desc", pattern="^(asc|desc)$")):
        """The service's videos, newest first (order=asc: oldest first), a page at a time."""
        self._authorize(request)
        records = sorted(await asyncio.to_thread(self.jobs.all), key=lambda r: (r.created_at, r.id),
                         reverse=order == "desc")
        ids = [r.id for r in records]
        start = ids.index(after) + 1 if after in ids else 0
        shown = records[start:start + limit]
        return {"object": "list", "data": [self._view(r, request) for r in shown],
                "first_id": shown[0].id if shown else None, "last_id": shown[-1].id if shown else None,
                "has_more": start + limit < len(records)}

    @api.get("/v1/videos/{job_id}", response_model=JobView, responses=error_responses(401, 404, 422, 503))
    async def get_video(self, job_id: str, request: Request,
                        wait: float = Query(0, ge=0, le=MAX_WAIT_S, description="seconds to wait for the job "
                                            "to end before answering (long poll); 0 answers at once")):
        """Status, progress (0..1), error, and video_url once succeeded."""
        self._authorize(request)
        dispatched = self.inflight.get(job_id)
        if wait and dispatched is not None:  # answer the moment it ends, not at the client's next poll
            try:
                await asyncio.wait_for(asyncio.shield(dispatched[1]), timeout=wait)
            except asyncio.TimeoutError:
                pass
        record = await asyncio.to_thread(self._record, job_id)
        return self._view(record, request)

    @api.get("/v1/videos/{job_id}/content", name="video_content",
             responses={200: {"content": {"video/mp4": {}, "image/png": {}},
                              "description": "the mp4, or with variant=spritesheet a PNG of every frame"},
                        **error_responses(401, 404, 409, 422, 503)})
    async def video_content(self, job_id: str, request: Request,
                            variant: str = Query("video", pattern="^(video|spritesheet)$",
                                                 description="video: the mp4; spritesheet: every frame on one PNG")):
        """The mp4 of a completed job, or its contact sheet (OpenAI's spritesheet variant)."""
        self._authorize(request)
        record = await asyncio.to_thread(self._record, job_id)
        if record.status != "succeeded":
            raise RequestRejected(409, "not_ready", f"job is {OPENAI_STATUS[record.status]}; the video exists once it "
                                  "completed")
        data = await asyncio.to_thread(self.jobs.store.read_bytes, self.jobs.video_key(job_id))
        if variant == "spritesheet":
            from ..video import contact_sheet, decode_mp4, png_bytes

            sheet = await asyncio.to_thread(lambda: png_bytes(contact_sheet(decode_mp4(data))))
            return Response(sheet, media_type="image/png")
        return Response(data, media_type="video/mp4",
                        headers={"Content-Disposition": f'attachment; filename="{job_id}.mp4"'})

    @api.delete("/v1/videos/{job_id}", status_code=202, response_model=JobView,
                responses={200: {"model": VideoDeleted, "description": "an ended job, deleted"},
                           **error_responses(401, 404, 422, 503)})
    async def cancel_video(self, job_id: str, request: Request):
        """Cancel a queued or running job (a running one stops after its current denoising step): 202 with the
        video. An ended job is deleted, its video and images with it, as OpenAI's delete: 200 video.deleted."""
        self._authorize(request)
        record = await asyncio.to_thread(self._record, job_id)
        if record.ended:
            await asyncio.to_thread(self.jobs.delete, job_id)
            return JSONResponse({"id": job_id, "object": "video.deleted", "deleted": True})
        await asyncio.to_thread(self.jobs.request_cancel, job_id)
        if record.status == "queued":  # not started: take it out of the queue now
            dispatched = self.inflight.get(job_id)
            if dispatched is not None:
                dispatched[0].cancel()
            await asyncio.to_thread(self.jobs.end_if_open, job_id, "cancelled", None)
            record = await asyncio.to_thread(self._record, job_id)
        return JSONResponse(self._view(record, request), status_code=202)

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request):
        if self._openapi is None:
            self._openapi = openapi_document(request.app.routes, self.spec.limits, bearer=self.token is not None)
        return JSONResponse(self._openapi)

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request):
        """The API description as a page of its own (no CDN: page.docs_html)."""
        if self._openapi is None:
            self._openapi = openapi_document(request.app.routes, self.spec.limits, bearer=self.token is not None)
        return HTMLResponse(page.docs_html(self._openapi), headers={"Content-Security-Policy": page.CSP})

    @api.get("/", include_in_schema=False)
    async def index(self):
        """A page to try the service: prompt, subjects, size and steps; progress; the video and its frames."""
        return HTMLResponse(page.read("index.html"), headers={"Content-Security-Policy": page.CSP})

    @api.get("/ui/{name}", include_in_schema=False)
    async def ui_file(self, name: str):
        if name not in page.STATIC:
            raise RequestRejected(404, "not_found", f"no file {name!r}")
        return Response(page.read(name), media_type=page.STATIC[name], headers={"Cache-Control": "no-cache"})

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok"}

    @api.get("/readyz", responses={503: {}})
    async def readyz(self):
        """Ready once a generator replica has its model loaded."""
        if self._model is None:
            try:
                self._model = await asyncio.wait_for(self.generator.ready.remote(), timeout=5)
            except Exception:
                return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True, **self._model, "inflight": len(self.inflight),
                "queue_length": self.spec.limits.queue_length}


# --------------------------------------------------------------------------------------------- builder

def generator_options(spec: ServiceSpec) -> dict[str, Any]:
    """Serve deployment options of the generator: resources per replica (a placement group of one bundle per
    process when it runs requests sequence-parallel), and a fixed count or autoscaling bounds (Serve scales
    on queued + running requests per replica)."""
    r = spec.replicas
    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": r.cpus_per_process, "num_gpus": r.gpus_per_process},
                               "max_ongoing_requests": r.max_ongoing_requests}
    if r.degree > 1:  # the replica's N processes, one bundle each, on one node (sequence_parallel.SequenceGroup)
        bundle = {"CPU": r.cpus_per_process, **({"GPU": r.gpus_per_process} if r.gpus_per_process else {})}
        options.update(placement_group_bundles=[bundle] * r.degree, placement_group_strategy="STRICT_PACK")
    if r.min == r.max:
        options["num_replicas"] = r.max
    else:
        options["autoscaling_config"] = {"min_replicas": r.min, "max_replicas": r.max,
                                         "target_ongoing_requests": r.max_ongoing_requests}
    return options


def build_app(args: dict) -> serve.Application:
    """The application for `args` (see config.serve_config_args)."""
    generator = Generator.options(**generator_options(_spec(args))).bind(args)
    return Ingress.bind(generator, args)
