"""Job records and results in the artifact store, so that any replica, or a restarted one, can answer.

    jobs/ID/job.json          the record: status, progress, error, times, the settings asked for
    jobs/ID/subjects/K.EXT    the subject images as the client sent them
    jobs/ID/cancel            present once a client asked to cancel (the generator polls it every step)
    jobs/ID/video.mp4         the result

Who writes the record: the ingress creates it (queued) and may mark a job it has not handed over
cancelled; the generator writes running, progress and the final state. A cancel is a separate
object so that the two never race on one field: the generator checks it before starting and after
every denoising step, and ends the job as cancelled.

When the store is down (polyvivid/serve/app.py has the whole story): progress writes and cancel checks
are best effort, a job's end is retried for RECORD_WITHIN_S, and what still could not be written is
kept by the ingress and written once the store is back, so that every accepted job ends.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..storage import ArtifactStore, ObjectNotFound, with_retries
from .schema import TERMINAL, Generation, JobState, Subject

log = logging.getLogger("polyvivid.serve")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
# How long the generator keeps trying to store a job's video and final record through a store outage.
RECORD_WITHIN_S = float(os.environ.get("POLYVIVID_JOB_RECORD_WITHIN_S", "60"))


class JobNotFound(KeyError):
    pass


class _Record(BaseModel):
    # assignments are checked too: a record is changed field by field as the job goes on
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StoredSubject(_Record):
    name: str
    image: str  # its key in the store: jobs/ID/subjects/K.EXT


class JobSettings(_Record):
    """What was asked for, with the service's defaults filled in (schema.Generation, as stored)."""

    prompt: str
    subjects: list[StoredSubject]
    num_frames: int
    height: int
    width: int
    steps: int
    guidance: float
    seed: int
    step_cache_threshold: float = 0.0  # records written before step caching have none


class JobRecord(_Record):
    """jobs/ID/job.json."""

    id: str
    status: JobState = "queued"
    progress: float = Field(0.0, ge=0, le=1)
    error: str | None = None
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    request: JobSettings

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


class JobStore:
    def __init__(self, store: ArtifactStore):
        self.store = store

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    @staticmethod
    def _key(job_id: str, name: str) -> str:
        if not JOB_ID.match(job_id):  # ids come from URLs: never let one address another key
            raise JobNotFound(job_id)
        return f"jobs/{job_id}/{name}"

    def video_key(self, job_id: str) -> str:
        return self._key(job_id, "video.mp4")

    def create(self, job_id: str, gen: Generation) -> JobRecord:
        subjects = []
        for k, s in enumerate(gen.subjects):
            key = self._key(job_id, f"subjects/{k}.{s.extension}")
            self.store.write_bytes(key, s.image)
            subjects.append(StoredSubject(name=s.name, image=key))
        now = time.time()
        record = JobRecord(id=job_id, created_at=now, updated_at=now,
                           request=JobSettings(**{**gen.settings(), "subjects": subjects}))
        self.write(record)
        return record

    def write(self, record: JobRecord) -> None:
        record.updated_at = time.time()
        self.store.write_text(self._key(record.id, "job.json"), record.model_dump_json())

    def read(self, job_id: str) -> JobRecord:
        try:
            return JobRecord.model_validate_json(self.store.read_text(self._key(job_id, "job.json")))
        except ObjectNotFound:
            raise JobNotFound(job_id) from None
        except ValidationError as e:  # a damaged record must not stop the scan of the others, or the API
            log.warning("job %s: job.json is damaged, treated as missing: %s", job_id, str(e).splitlines()[0])
            raise JobNotFound(job_id) from None

    def update(self, job_id: str, **fields) -> JobRecord:
        record = self.read(job_id)
        for name, value in fields.items():
            setattr(record, name, value)
        if record.ended:
            record.finished_at = time.time()
        self.write(record)
        return record

    def end_if_open(self, job_id: str, status: str, error: str | None) -> None:
        """Record an end unless the record has one already (or is gone)."""
        try:
            if not self.read(job_id).ended:
                self.update(job_id, status=status, error=error)
        except JobNotFound:
            pass

    def write_lasting(self, record: JobRecord) -> None:
        """Write a record that must not be lost to a short outage (retried for RECORD_WITHIN_S)."""
        with_retries(self.write, record, within_s=RECORD_WITHIN_S, what=f"write the record of job {record.id}")

    def subject_images(self, record: JobRecord) -> list[Subject]:
        return [Subject(s.name, self.store.read_bytes(s.image), s.image.rsplit(".", 1)[1])
                for s in record.request.subjects]

    def request_cancel(self, job_id: str) -> None:
        self.store.write_text(self._key(job_id, "cancel"), str(time.time()))

    def cancel_requested(self, job_id: str) -> bool:
        return self.store.exists(self._key(job_id, "cancel"))

    def all(self) -> list[JobRecord]:
        """Every readable record (GET /v1/videos); a damaged one is left out, as read() leaves it."""
        records = []
        for key in self.store.list("jobs/"):
            if key.endswith("/job.json"):
                try:
                    records.append(self.read(key.split("/")[1]))
                except JobNotFound:
                    continue
        return records

    def delete(self, job_id: str) -> None:
        """An ended job's record, video and images, gone (the record last: a failure leaves it listed)."""
        keys = [k for k in self.store.list(f"jobs/{job_id}/") if not k.endswith("/job.json")]
        for key in keys:
            self.store.delete(key)
        self.store.delete(self._key(job_id, "job.json"))

    def unfinished(self) -> list[JobRecord]:
        """Records not yet in a final state, oldest first (what a restarted ingress hands over again)."""
        return sorted((r for r in self.all() if not r.ended), key=lambda r: r.created_at)
