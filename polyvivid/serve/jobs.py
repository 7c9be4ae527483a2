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

import json
import os
import re
import time
import uuid

from ..storage import ArtifactStore, ObjectNotFound, with_retries
from .schema import TERMINAL, Generation, Subject

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
# How long the generator keeps trying to store a job's video and final record through a store outage.
RECORD_WITHIN_S = float(os.environ.get("POLYVIVID_JOB_RECORD_WITHIN_S", "60"))


class JobNotFound(KeyError):
    pass


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

    def create(self, job_id: str, gen: Generation) -> dict:
        subjects = []
        for k, s in enumerate(gen.subjects):
            key = self._key(job_id, f"subjects/{k}.{s.extension}")
            self.store.write_bytes(key, s.image)
            subjects.append({"name": s.name, "image": key})
        now = time.time()
        record = {"id": job_id, "status": "queued", "progress": 0.0, "error": None, "created_at": now,
                  "updated_at": now, "started_at": None, "finished_at": None,
                  "request": {**gen.settings(), "subjects": subjects}}
        self.write(record)
        return record

    def write(self, record: dict) -> None:
        record["updated_at"] = time.time()
        self.store.write_text(self._key(record["id"], "job.json"), json.dumps(record))

    def read(self, job_id: str) -> dict:
        try:
            return json.loads(self.store.read_text(self._key(job_id, "job.json")))
        except ObjectNotFound:
            raise JobNotFound(job_id) from None

    def update(self, job_id: str, **fields) -> dict:
        record = self.read(job_id)
        record.update(fields)
        if fields.get("status") in TERMINAL:
            record["finished_at"] = time.time()
        self.write(record)
        return record

    def end_if_open(self, job_id: str, status: str, error: str | None) -> None:
        """Record an end unless the record has one already (or is gone)."""
        try:
            if self.read(job_id)["status"] not in TERMINAL:
                self.update(job_id, status=status, error=error)
        except JobNotFound:
            pass

    def write_lasting(self, record: dict) -> None:
        """Write a record that must not be lost to a short outage (retried for RECORD_WITHIN_S)."""
        with_retries(self.write, record, within_s=RECORD_WITHIN_S, what=f"write the record of job {record['id']}")

    def subject_images(self, record: dict) -> list[Subject]:
        return [Subject(s["name"], self.store.read_bytes(s["image"]), s["image"].rsplit(".", 1)[1])
                for s in record["request"]["subjects"]]

    def request_cancel(self, job_id: str) -> None:
        self.store.write_text(self._key(job_id, "cancel"), str(time.time()))

    def cancel_requested(self, job_id: str) -> bool:
        return self.store.exists(self._key(job_id, "cancel"))

    def unfinished(self) -> list[dict]:
        """Records not yet in a final state, oldest first (what a restarted ingress hands over again)."""
        records = []
        for key in self.store.list("jobs/"):
            if key.endswith("/job.json"):
                try:
                    record = self.read(key.split("/")[1])
                except JobNotFound:
                    continue
                if record["status"] not in TERMINAL:
                    records.append(record)
        return sorted(records, key=lambda r: r["created_at"])
