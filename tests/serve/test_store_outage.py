"""The job store (a real S3 server) dies in the middle of a job and comes back: every accepted job ends,
reads answer 503 with Retry-After meanwhile, and nothing stays running or queued for good."""

from __future__ import annotations

import json
import time

from polyvivid.samples import draw_subject
from polyvivid.serve.client import ENDED
from polyvivid.video import png_bytes

from ..conftest import SeaweedS3
from .conftest import running_server, service_manifest, write_manifest

PROMPT = "A man plays the guitar"


def test_every_accepted_job_ends_across_a_store_outage(tmp_path):
    s3 = SeaweedS3(tmp_path / "s3")
    s3.start()
    try:
        s3.client().make_bucket("outage")
        spec = write_manifest(tmp_path / "service.yaml", service_manifest("s3://outage/svc"))
        env = {"POLYVIVID_S3_ENDPOINT": s3.endpoint, "AWS_ACCESS_KEY_ID": s3.info["access_key"],
               "AWS_SECRET_ACCESS_KEY": s3.info["secret_key"],
               # short bounds, so that the outage outlasts them: the generator gives up on the store
               "POLYVIVID_JOB_RECORD_WITHIN_S": "4", "POLYVIVID_RETRY_ATTEMPTS": "2", "POLYVIVID_RETRY_DELAY_S": "0.2"}
        with running_server(spec, env, extra_args=("--insecure-no-auth",)) as server:
            assert "the HTTP API runs without authentication" in server.log()
            client = server.client(None)  # open, as asked
            images = {w: png_bytes(draw_subject(w)) for w in ("man", "guitar")}
            settings = dict(num_frames=17, height=64, width=64, steps=8, seed=3)
            running = client.submit(PROMPT, images, **settings)
            queued = client.submit(PROMPT, images, **settings)
            deadline = time.time() + 120
            while client.status(running["id"])["status"] != "in_progress":
                assert time.time() < deadline, "the first job never started"
                time.sleep(0.1)

            s3.kill()
            status, body, headers = client.request("GET", f"/v1/videos/{running['id']}")
            assert status == 503 and json.loads(body)["error"]["code"] == "storage_unavailable", body
            assert int(headers["retry-after"]) > 0
            time.sleep(10)  # the running job finishes generating and cannot store its end; the queued one cannot start
            s3.start()

            ends = {}
            deadline = time.time() + 120
            while len(ends) < 2:
                assert time.time() < deadline, f"jobs not ended after the store came back: {ends}\n{server.log()}"
                for job in (running, queued):
                    view = client.status(job["id"])
                    if view["status"] in ENDED:
                        ends[job["id"]] = view
                time.sleep(0.5)
            first = ends[running["id"]]
            assert first["status"] == "completed" or "could not be stored" in first["error"]["message"], first
            assert ends[queued["id"]]["status"] == "completed", ends[queued["id"]]  # handed over again
            assert client._json("GET", "/readyz")["inflight"] == 0
            for view in ends.values():  # no Ray actor ids, pids or addresses in what clients see
                message = (view["error"] or {}).get("message", "")
                assert "Actor" not in message and "pid=" not in message
    finally:
        s3.kill()
