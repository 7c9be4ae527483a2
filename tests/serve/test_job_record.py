"""The job record (serve/jobs.py JobRecord) as stored: the documented job.json, read back typed; a
damaged record reads as missing and does not stop the scan for unfinished jobs."""

import json

import pytest

from polyvivid.samples import draw_subject
from polyvivid.serve.jobs import JobNotFound, JobRecord, JobStore
from polyvivid.serve.schema import Generation, Subject
from polyvivid.storage import open_store
from polyvivid.video import png_bytes


def _generation() -> Generation:
    return Generation("A man plays the guitar", (Subject("man", png_bytes(draw_subject("man")), "png"),),
                      num_frames=5, height=32, width=32, steps=2, guidance=6.0, seed=3)


def test_a_record_is_stored_as_documented_and_read_back_typed(tmp_path):
    jobs = JobStore(open_store(str(tmp_path)))
    job_id = JobStore.new_id()
    created = jobs.create(job_id, _generation())
    stored = json.loads((tmp_path / "jobs" / job_id / "job.json").read_text())
    assert set(stored) == {"id", "status", "progress", "error", "created_at", "updated_at", "started_at",
                           "finished_at", "request"}
    assert stored["request"]["subjects"] == [{"name": "man", "image": f"jobs/{job_id}/subjects/0.png"}]
    assert stored["status"] == "queued" and stored["request"]["seed"] == 3

    record = jobs.read(job_id)
    assert isinstance(record, JobRecord) and record == created and not record.ended
    assert jobs.subject_images(record)[0].image == _generation().subjects[0].image
    ended = jobs.update(job_id, status="cancelled")
    assert ended.ended and ended.finished_at is not None and jobs.read(job_id).status == "cancelled"


def test_a_damaged_record_reads_as_missing_and_the_others_are_still_found(tmp_path):
    jobs = JobStore(open_store(str(tmp_path)))
    good, damaged = JobStore.new_id(), JobStore.new_id()
    jobs.create(good, _generation())
    jobs.create(damaged, _generation())
    path = tmp_path / "jobs" / damaged / "job.json"
    path.write_text(path.read_text()[:40])
    with pytest.raises(JobNotFound):
        jobs.read(damaged)
    assert [r.id for r in jobs.unfinished()] == [good]
