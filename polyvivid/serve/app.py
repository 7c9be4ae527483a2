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
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from ray import serve
from ray.serve.exceptions import RequestCancelledError
from ray.serve.handle import DeploymentHandle

from ..api.common import field_path
from ..api.service import ServiceSpec
from ..storage import S3Store, StorageError, open_store
from ..telemetry import SERVING
from .config import TOKEN_ENV
from .jobs import JobNotFound, JobStore
from .schema import TERMINAL, JobAccepted, JobView, RequestRejected, VideoRequest, check_request, parse_body

log = logging.getLogger("polyvivid.serve")

FPS = 24
RETRY_AFTER_S = 5
MAX_WAIT_S = 60  # longest long poll on GET /v1/videos/{id}?wait=


def _spec(args: dict) -> ServiceSpec:
    return ServiceSpec.model_validate(args["spec"])


# --------------------------------------------------------------------------------------------- generator

class JobCancelled(Exception):
    pass


@serve.deployment(max_ongoing_requests=1, health_check_period_s=10)
class Generator:
    """Holds one pipeline; runs one job at a time per max_ongoing_requests slot, off the event loop."""

    def __init__(self, args: dict):
        import torch
        from ray.serve.metrics import Counter, Histogram

        from ..model.pipeline import load_pipeline

        spec = _spec(args)
        self.model_ref = args["model"]
        self.jobs = JobStore(open_store(spec.output))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        if self.device == "cpu":  # Ray sets no thread limit; take what the replica reserved
            torch.set_num_threads(max(1, int(spec.replicas.cpus_per_replica)))
        self.pipe = load_pipeline(self.model_ref, torch_dtype=dtype, base=spec.model.base_model)
        self.pipe.to(device=self.device)
        self.pipe.set_progress_bar_config(disable=True)  # progress goes to the job record instead
        self.generated = Counter(SERVING["generated"].name, SERVING["generated"].help)
        self.seconds = Histogram(SERVING["seconds"].name, SERVING["seconds"].help,
                                 boundaries=[0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 3600])
        log.info("generator ready: %s on %s", self.model_ref, self.device)

    async def ready(self) -> str:
        return self.model_ref

    async def generate(self, job_id: str) -> str:
        return await asyncio.to_thread(self._generate, job_id)

    def _generate(self, job_id: str) -> str:
        import io

        import torch
        from PIL import Image

        from ..model.request import InvalidRequest
        from ..video import encode_mp4

        jobs = self.jobs
        record = jobs.read(job_id)
        if record["status"] in TERMINAL:
            return record["status"]
        if jobs.cancel_requested(job_id):
            return jobs.update(job_id, status="cancelled")["status"]
        record.update(status="running", started_at=time.time(), progress=0.0)
        jobs.write(record)
        req = record["request"]

        def on_step(step: int, total: int) -> None:
            if jobs.cancel_requested(job_id):
                raise JobCancelled
            record["progress"] = round(0.99 * step / total, 4)  # 1.0 only once the video is stored
            jobs.write(record)

        start = time.perf_counter()
        try:
            subjects = [(s.name, Image.open(io.BytesIO(s.image)).convert("RGB")) for s in jobs.subject_images(record)]
            frames = self.pipe(req["prompt"], subjects, num_frames=req["num_frames"], height=req["height"],
                               width=req["width"], num_inference_steps=req["steps"], guidance_scale=req["guidance"],
                               generator=torch.Generator().manual_seed(req["seed"]), callback=on_step)
            jobs.store.write_bytes(jobs.video_key(job_id), encode_mp4(frames, fps=FPS))
            record.update(status="succeeded", progress=1.0)
            self.generated.inc()
            self.seconds.observe(time.perf_counter() - start)
        except JobCancelled:
            record["status"] = "cancelled"
        except InvalidRequest as e:  # what only the model knows, e.g. its own subject limit
            record.update(status="failed", error=str(e))
        except Exception as e:  # the job ends failed with the reason; the replica lives on
            log.exception("job %s failed", job_id)
            record.update(status="failed", error=f"{e.__class__.__name__}: {e}"[:1000])
            if self.device == "cuda":
                torch.cuda.empty_cache()
        record["finished_at"] = time.time()
        jobs.write(record)
        return record["status"]


# --------------------------------------------------------------------------------------------- ingress

api = FastAPI(
    title="PolyVivid",
    description="Multi-subject video customization: POST a prompt and subject images, poll the job, "
                "download the mp4. Every subject name must appear in the prompt.",
    version="v1",
)


@api.exception_handler(RequestRejected)
async def _rejected(request: Request, exc: RequestRejected):
    ingress = getattr(request.app.state, "ingress", None)
    if ingress is not None:
        ingress.rejections.inc(tags={"reason": exc.code})
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError):
    first = exc.errors()[0]
    field = field_path(first["loc"][1:]) or None  # loc[0] is where: path or query
    return await _rejected(request, RequestRejected(422, "invalid_request", f"{field}: {first['msg']}", field))


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):  # unknown routes and methods, same shape
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse({"error": {"code": code, "message": str(exc.detail), "field": None}},
                        status_code=exc.status_code, headers=getattr(exc, "headers", None))


@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress:
    """Checks requests, writes job records, hands jobs to the generator, answers for any job."""

    def __init__(self, generator: DeploymentHandle, args: dict):
        from ray.serve.metrics import Counter, Gauge

        self.spec = _spec(args)
        self.generator = generator
        self.jobs = JobStore(open_store(self.spec.output))
        self.token = os.environ.get(TOKEN_ENV) or None
        if self.spec.api_token_secret_ref is not None and not self.token:
            raise RuntimeError(f"the spec names an API token Secret but {TOKEN_ENV} is not set in this replica")
        # job id -> (its DeploymentResponse, the task following it), until the job's end is recorded
        self.inflight: dict[str, tuple[Any, asyncio.Task]] = {}
        self._accepting = 0  # requests past the queue check whose record is being written
        self._recovered = False
        self._model: str | None = None  # what a generator answered it serves, once one did
        self.inflight_gauge = Gauge(SERVING["inflight"].name, SERVING["inflight"].help)
        self.rejections = Counter(SERVING["rejections"].name, SERVING["rejections"].help,
                                  tag_keys=SERVING["rejections"].labels)
        api.state.ingress = self

    # -- job hand-over ------------------------------------------------------------------------

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
        """Wait for the generator; if it never recorded an end (cancelled in the queue, replica died),
        record one, so that every accepted job ends succeeded, failed or cancelled."""
        outcome = None
        try:
            await response
        except (RequestCancelledError, asyncio.CancelledError):
            outcome = ("cancelled", None)
        except Exception as e:
            log.exception("job %s: generator call failed", job_id)
            outcome = ("failed", f"generator: {e.__class__.__name__}: {e}"[:1000])
        if outcome:
            await asyncio.to_thread(self._end_if_open, job_id, *outcome)

    def _end_if_open(self, job_id: str, status: str, error: str | None) -> None:
        if self.jobs.read(job_id)["status"] not in TERMINAL:
            self.jobs.update(job_id, status=status, error=error)

    async def _recover(self) -> None:
        """Hand over again what a previous ingress accepted and nobody finished."""
        if self._recovered:
            return
        self._recovered = True
        for record in await asyncio.to_thread(self.jobs.unfinished):
            if record["id"] not in self.inflight:
                log.info("resuming job %s (%s)", record["id"], record["status"])
                self._dispatch(record["id"])

    async def check_health(self) -> None:  # Serve calls this every few seconds: recovery needs no request
        await self._recover()

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
        if "application/json" not in request.headers.get("content-type", ""):
            raise RequestRejected(415, "unsupported_media_type", "send the request as application/json")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestRejected(413, "request_too_large", f"request body of {declared} bytes; at most {limit}")
        body = bytearray()
        async for chunk in request.stream():  # counted as it arrives: no trust in content-length
            body += chunk
            if len(body) > limit:
                raise RequestRejected(413, "request_too_large", f"request body over {limit} bytes")
        return bytes(body)

    def _record(self, job_id: str) -> dict:
        try:
            return self.jobs.read(job_id)
        except JobNotFound:
            raise RequestRejected(404, "not_found", f"no job {job_id!r}", "id") from None

    def _view(self, record: dict, request: Request) -> dict:
        url = None
        if record["status"] == "succeeded":
            key = self.jobs.video_key(record["id"])
            url = self.jobs.store.url(key) if isinstance(self.jobs.store, S3Store) else \
                str(request.url_for("video_content", job_id=record["id"]))
        return JobView(id=record["id"], status=record["status"], progress=record["progress"], error=record["error"],
                       video_url=url, created_at=record["created_at"], started_at=record.get("started_at"),
                       finished_at=record.get("finished_at")).model_dump()

    # -- routes -------------------------------------------------------------------------------

    @api.post("/v1/videos", status_code=202, response_model=JobAccepted,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": VideoRequest.model_json_schema()}}}},
              responses={401: {}, 413: {}, 415: {}, 422: {}, 429: {"description": "queue full; retry later"}})
    async def create_video(self, request: Request):
        """Queue a generation; poll GET /v1/videos/{id} for its progress."""
        await self._recover()
        self._authorize(request)
        raw = await self._body(request)
        gen = check_request(parse_body(raw), self.spec.limits, self.spec.defaults,
                            seed=int.from_bytes(os.urandom(4), "little"))
        taken = len(self.inflight) + self._accepting
        if taken >= self.spec.limits.queue_length:
            raise RequestRejected(429, "queue_full", f"{taken} jobs queued or running; retry later",
                                  headers={"Retry-After": str(RETRY_AFTER_S)})
        job_id = JobStore.new_id()
        self._accepting += 1  # holds the slot while the record is written (other requests run meanwhile)
        try:
            await asyncio.to_thread(self.jobs.create, job_id, gen)
            self._dispatch(job_id)
        except StorageError as e:
            raise RequestRejected(503, "storage_unavailable", f"cannot store the job: {e}",
                                  headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        finally:
            self._accepting -= 1
        return JSONResponse({"id": job_id, "status": "queued"}, status_code=202,
                            headers={"Location": f"/v1/videos/{job_id}"})

    @api.get("/v1/videos/{job_id}", response_model=JobView, responses={401: {}, 404: {}})
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
             responses={200: {"content": {"video/mp4": {}}}, 401: {}, 404: {}, 409: {}})
    async def video_content(self, job_id: str, request: Request):
        """The mp4 of a succeeded job."""
        self._authorize(request)
        record = await asyncio.to_thread(self._record, job_id)
        if record["status"] != "succeeded":
            raise RequestRejected(409, "not_ready", f"job is {record['status']}; the video exists once it succeeded")
        data = await asyncio.to_thread(self.jobs.store.read_bytes, self.jobs.video_key(job_id))
        return Response(data, media_type="video/mp4",
                        headers={"Content-Disposition": f'attachment; filename="{job_id}.mp4"'})

    @api.delete("/v1/videos/{job_id}", status_code=202, response_model=JobView, responses={401: {}, 404: {}, 409: {}})
    async def cancel_video(self, job_id: str, request: Request):
        """Cancel a queued or running job (a running one stops after its current denoising step)."""
        self._authorize(request)
        record = await asyncio.to_thread(self._record, job_id)
        if record["status"] in TERMINAL:
            raise RequestRejected(409, "finished", f"job already {record['status']}")
        await asyncio.to_thread(self.jobs.request_cancel, job_id)
        if record["status"] == "queued":  # not started: take it out of the queue now
            dispatched = self.inflight.get(job_id)
            if dispatched is not None:
                dispatched[0].cancel()
            await asyncio.to_thread(self._end_if_open, job_id, "cancelled", None)
            record = await asyncio.to_thread(self._record, job_id)
        return JSONResponse(self._view(record, request), status_code=202)

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
        return {"ready": True, "model": self._model, "inflight": len(self.inflight),
                "queue_length": self.spec.limits.queue_length}


# --------------------------------------------------------------------------------------------- builder

def generator_options(spec: ServiceSpec) -> dict[str, Any]:
    """Serve deployment options of the generator: resources per replica, and a fixed count or
    autoscaling bounds (Serve scales on queued + running requests per replica)."""
    r = spec.replicas
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": r.cpus_per_replica, "num_gpus": r.gpus_per_replica},
        "max_ongoing_requests": r.max_ongoing_requests,
    }
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
