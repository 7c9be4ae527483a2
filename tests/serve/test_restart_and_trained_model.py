"""Job records outlive the server process, and a model trained by `polyvivid train` can be served."""

from __future__ import annotations

import numpy as np
import torch

from polyvivid.data.synthetic import write_synthetic_dataset
from polyvivid.model.pipeline import load_pipeline
from polyvivid.samples import draw_subject
from polyvivid.serve.jobs import JobStore
from polyvivid.serve.schema import Generation, Subject
from polyvivid.storage import open_store
from polyvivid.video import decode_mp4, encode_mp4, png_bytes

from ..train.conftest import polyvivid, training_manifest, write_spec
from .conftest import running_server, service_manifest, write_manifest

PROMPT = "A man plays the guitar"


def test_records_survive_a_restart_unfinished_jobs_resume_and_a_trained_model_serves(tmp_path):
    dataset, run, jobs_root = tmp_path / "data", tmp_path / "run", tmp_path / "jobs"
    write_synthetic_dataset(open_store(str(dataset)), videos=4, seed=0, size=32, frames=9)
    spec = write_spec(tmp_path / "train.yaml", training_manifest(str(dataset), str(run), steps=(1, 1), low_res=0))
    trained = polyvivid("train", str(spec))
    assert trained.returncode == 0, trained.stderr[-2000:]
    final = run / "final"
    assert (final / "polyvivid_weights.safetensors").exists()

    images = {w: png_bytes(draw_subject(w)) for w in ("man", "guitar")}
    settings = dict(num_frames=5, height=32, width=32, steps=2, seed=11)
    service = write_manifest(tmp_path / "service.yaml", service_manifest(str(jobs_root)))

    with running_server(service) as first:  # the tiny preset's random weights
        # No token given: the server made one, 0600, said where (not what) it is, and requires it.
        token_file = tmp_path / "config" / "polyvivid" / "api-token"
        assert first.token and token_file.stat().st_mode & 0o777 == 0o600
        assert f"API token: in {token_file}" in first.log() and first.token not in first.log()
        assert first.client("not-it").request("GET", "/v1/videos/" + "0" * 32)[0] == 401
        client = first.client()
        before = client.submit(PROMPT, images, **settings)
        assert client.wait(before["id"], poll_s=0.1, timeout_s=120)["status"] == "completed"
        video_before = client.download(before["id"])

    # A job accepted by a server that died before handing it to a generator: only its record exists.
    store = JobStore(open_store(str(jobs_root)))
    orphan = JobStore.new_id()
    store.create(orphan, Generation(PROMPT, tuple(Subject(w, b, "png") for w, b in images.items()),
                                    guidance=6.0, **settings))

    with running_server(service, extra_args=("--model", str(final))) as second:
        assert second.token == first.token  # the same token across restarts: clients keep working
        client = second.client()
        ready = client._json("GET", "/readyz")
        assert ready["model"] == str(final)
        old = client.status(before["id"])  # written by the first process, answered by the second
        assert old["status"] == "completed" and client.download(before["id"]) == video_before
        assert client.wait(orphan, poll_s=0.2, timeout_s=120)["status"] == "completed"  # resumed, not lost
        after = client.submit(PROMPT, images, **settings)
        assert client.wait(after["id"], poll_s=0.1, timeout_s=120)["status"] == "completed"
        served = decode_mp4(client.download(after["id"])).astype(np.float32)

    # The served video is the trained model's (same request in-process, through the same codec), not the
    # preset's. (libx264 output wobbles slightly between processes, hence a tolerance.)
    pipe = load_pipeline(str(final))
    direct = pipe(PROMPT, [(w, draw_subject(w)) for w in images], num_frames=5, height=32, width=32,
                  num_inference_steps=2, guidance_scale=6.0, generator=torch.Generator().manual_seed(11))
    direct = decode_mp4(encode_mp4(direct)).astype(np.float32)
    preset = decode_mp4(video_before).astype(np.float32)
    to_direct, to_preset = np.abs(served - direct).mean(), np.abs(served - preset).mean()
    print(f"served vs trained in-process {to_direct:.2f}, vs preset {to_preset:.2f}")
    assert to_direct < 2.0 and to_preset > 2 * to_direct
