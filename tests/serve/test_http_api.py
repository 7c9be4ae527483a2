"""The HTTP API of a real local Ray Serve deployment (tiny preset, SeaweedFS S3 as the store).

One server process for the module; the requests go over HTTP to it, exactly as a user's would.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.request

import pytest
from minio import Minio

from polyvivid.samples import draw_subject
from polyvivid.serve.client import ApiError
from polyvivid.storage import S3Settings, open_store
from polyvivid.video import decode_mp4, png_bytes

from ..observability.promql import queried_names
from ..sockets import listening_sockets
from ..test_bad_input import png_claiming
from .conftest import running_server, service_manifest, write_manifest

TOKEN = "s3cr3t-token-for-tests"


@pytest.fixture(scope="module")
def server(s3_server, tmp_path_factory):
    s3 = s3_server
    Minio(s3["endpoint"].split("://")[1], s3["access_key"], s3["secret_key"], secure=False).make_bucket("serving")
    spec = write_manifest(tmp_path_factory.mktemp("serve") / "service.yaml", service_manifest(
        "s3://serving/svc", apiTokenSecretRef={"name": "polyvivid-api", "key": "token"}))
    env = {"POLYVIVID_S3_ENDPOINT": s3["endpoint"], "AWS_ACCESS_KEY_ID": s3["access_key"],
           "AWS_SECRET_ACCESS_KEY": s3["secret_key"], "POLYVIVID_API_TOKEN": TOKEN}
    with running_server(spec, env) as srv:
        yield srv


@pytest.fixture(scope="module")
def images():
    return {word: png_bytes(draw_subject(word)) for word in ("man", "guitar")}


@pytest.fixture(scope="module")
def store(s3_server):
    settings = S3Settings.from_env(s3_server["endpoint"], s3_server["access_key"], s3_server["secret_key"])
    return open_store("s3://serving/svc", settings=settings)


PROMPT = "A man plays the guitar on a stage"


def test_submit_poll_and_download_an_mp4_of_the_requested_size(server, images, store):
    client = server.client(TOKEN)
    job = client.submit(PROMPT, images, num_frames=9, height=48, width=64, steps=3, seed=1)
    assert job["status"] == "queued" and len(job["id"]) == 32
    seen = []
    final = client.wait(job["id"], poll_s=0.1, timeout_s=120, on_progress=lambda s: seen.append(s["progress"]))
    assert final["status"] == "completed" and final["progress"] == 100 and final["error"] is None, final
    assert seen == sorted(seen) and 0 <= seen[0] < 100 and all(isinstance(p, int) for p in seen)  # percent
    frames = decode_mp4(client.download(job["id"]))
    assert frames.shape == (9, 48, 64, 3)
    # video_url is presigned: fetchable with no credentials at all
    assert "X-Amz-Signature=" in final["video_url"]
    with urllib.request.urlopen(final["video_url"]) as resp:
        assert decode_mp4(resp.read()).shape == (9, 48, 64, 3)
    # a long poll answers when the job ends, not before
    again = client.submit(PROMPT, images, num_frames=9, height=48, width=64, steps=3, seed=1)
    assert client.status(again["id"], wait_s=60)["status"] == "completed"
    # the record and the inputs live in the store, not in a replica
    record = json.loads(store.read_text(f"jobs/{job['id']}/job.json"))
    assert record["status"] == "succeeded" and record["request"]["steps"] == 3 and record["request"]["seed"] == 1
    assert store.read_bytes(record["request"]["subjects"][1]["image"]) == images["guitar"]


def test_defaults_apply_and_the_openapi_document_describes_the_body(server, images):
    client = server.client(TOKEN)
    job = client.submit("A man waves", {"man": images["man"]}, steps=2)
    final = client.wait(job["id"], poll_s=0.1, timeout_s=120)
    assert decode_mp4(client.download(job["id"])).shape == (9, 64, 64, 3), final  # defaults: 9 frames, 64x64
    status, raw, _ = client.request("GET", "/openapi.json")
    schema = json.loads(raw)
    ref = schema["paths"]["/v1/videos"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert {"prompt", "subjects", "num_frames", "seed"} <= set(body["properties"])
    assert body["properties"]["steps"]["anyOf"][0]["maximum"] == 8  # this service's limits.maxSteps
    assert client.request("GET", "/docs")[0] == 200


def _post(client, body, content_type="application/json"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, data, headers = client.request("POST", "/v1/videos", raw, headers={"Content-Type": content_type})
    return status, json.loads(data), headers


def test_bad_inputs_get_4xx_json_naming_the_field_and_create_no_job(server, images, store):
    client = server.client(TOKEN)
    before = [k for k in store.list("jobs/") if k.endswith("job.json")]
    good = lambda **c: {"prompt": PROMPT, "subjects": [{"name": "man", "image": base64.b64encode(
        images["man"]).decode()}], **c}
    cases = [
        (b"{oops", 400, "invalid_json", None),
        (good(subjects=[{"name": "man", "image": base64.b64encode(b"GIF89a....").decode()}]), 422, "invalid_image",
         "subjects[0].image"),
        (good(subjects=[{"name": "man", "image": "not base64!"}]), 422, "invalid_image", "subjects[0].image"),
        (good(prompt="a man, a dog and a guitar", subjects=[{"name": n, "image": base64.b64encode(
            images["man"]).decode()} for n in ("man", "dog", "guitar")]), 422, "too_many_subjects", "subjects"),
        (good(prompt="A tiger sleeps"), 422, "invalid_request", "subjects[0].name"),
        (good(num_frames=33), 422, "out_of_limits", "num_frames"),
        (good(height=128), 422, "out_of_limits", "height"),
        (good(width=50), 422, "invalid_request", "width"),
        (good(steps=100), 422, "out_of_limits", "steps"),
        (good(url="http://example.com/man.png"), 422, "invalid_request", "url"),  # no URL fetching, ever
        (json.dumps(good(prompt="x" * 250_000)).encode(), 413, "request_too_large", None),
        # a PNG whose header claims 100000 x 100000 pixels: refused from the header, never decoded
        (good(subjects=[{"name": "man", "image": base64.b64encode(png_claiming(100_000, 100_000)).decode()}]), 413,
         "image_too_large", "subjects[0].image"),
        (good(steps=0), 422, "out_of_limits", "steps"),  # 0 is a value, not "use the default"
        (good(num_frames=2**70), 422, "out_of_limits", "num_frames"),
        (good(seed=2**64), 422, "invalid_request", "seed"),
        (good(seed=-1), 422, "invalid_request", "seed"),
        (good(guidance=float("nan")), 422, "invalid_request", "guidance"),
        (good(guidance=float("inf")), 422, "invalid_request", "guidance"),
        (good(guidance=31), 422, "out_of_limits", "guidance"),
    ]
    for body, status, code, field in cases:
        got, error, _ = _post(client, body)
        assert (got, error["error"]["code"], error["error"]["field"]) == (status, code, field), (body[:80], error)
    got, error, _ = _post(client, good(), content_type="text/plain")
    assert got == 415 and error["error"]["code"] == "unsupported_media_type"
    for path in ("/v1/videos/0123456789abcdef0123456789abcdef", "/v1/videos/..%2F..%2Fsecrets"):
        status, data, _ = client.request("GET", path)
        assert status == 404 and json.loads(data)["error"]["code"] == "not_found"
    after = [k for k in store.list("jobs/") if k.endswith("job.json")]
    assert after == before


def test_every_process_of_the_server_listens_on_loopback_only(server):
    """Ray's GCS, raylet, object manager, workers, agents and Serve's proxy: nothing on another address."""
    listeners = listening_sockets(server.proc.pid)
    processes = {listener.process for listener in listeners}
    assert {"gcs_server", "raylet"} <= processes, processes  # the whole tree is seen, not only the CLI
    assert int(server.url.rsplit(":", 1)[1]) in {listener.port for listener in listeners}
    assert [str(listener) for listener in listeners if not listener.loopback] == []


def test_a_token_is_required_on_v1_routes(server, images):
    job = server.client(TOKEN).submit(PROMPT, images, steps=1)
    for client in (server.client(None), server.client("wrong-token")):
        for method, path, body in (("POST", "/v1/videos", {"prompt": PROMPT}), ("GET", f"/v1/videos/{job['id']}", None),
                                   ("GET", f"/v1/videos/{job['id']}/content", None),
                                   ("DELETE", f"/v1/videos/{job['id']}", None)):
            status, data, headers = client.request(method, path, body)
            assert status == 401 and json.loads(data)["error"]["code"] == "unauthorized", (method, path)
            assert headers["www-authenticate"] == "Bearer"
        assert client.request("GET", "/healthz")[0] == 200  # probes need no token
    assert server.client(TOKEN).wait(job["id"], timeout_s=120)["status"] == "completed"


def test_cancel_a_running_and_a_queued_job(server, images):
    client = server.client(TOKEN)
    running = client.submit(PROMPT, images, num_frames=17, steps=8)
    queued = client.submit(PROMPT, images, num_frames=17, steps=8)
    while client.status(running["id"])["status"] == "queued":
        time.sleep(0.05)
    assert client.cancel(queued["id"])["status"] == "cancelled"  # not started: cancelled at once
    client.cancel(running["id"])
    final = client.wait(running["id"], poll_s=0.1, timeout_s=60)
    assert final["status"] == "cancelled" and final["progress"] < 100 and final["video_url"] is None
    assert client.wait(queued["id"], timeout_s=60)["status"] == "cancelled"
    status, data, _ = client.request("GET", f"/v1/videos/{queued['id']}/content")
    assert status == 409 and json.loads(data)["error"]["code"] == "not_ready"
    # DELETE on an ended job deletes it, as OpenAI's delete does
    assert client.cancel(queued["id"]) == {"id": queued["id"], "object": "video.deleted", "deleted": True}
    assert client.request("GET", f"/v1/videos/{queued['id']}")[0] == 404


def _scrape(url: str) -> dict[str, float]:
    """Series name with labels -> value (summed over replicas' processes)."""
    out: dict[str, float] = {}
    with urllib.request.urlopen(url) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("ray_polyvivid_"):
                name, labels = line.split("{")[0], line[line.find("{"):line.rfind("}") + 1]
                reason = [kv for kv in labels.strip("{}").split(",") if kv.startswith("reason=")]
                key = name + (f"[{reason[0]}]" if reason else "")
                out[key] = out.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return out


def test_eight_concurrent_clients_past_a_queue_of_four_lose_nothing(server, images, store):
    """Each client submits once; a 429 (queue full) makes it retry after a pause. All eight jobs end
    succeeded, no accepted job is lost, and the refusals show in the metrics."""
    client_for = lambda: server.client(TOKEN)
    results, refusals, lock = {}, [], threading.Lock()

    def one_client(i: int):
        client = client_for()
        while True:
            try:
                job = client.submit(PROMPT, images, num_frames=17, steps=6, seed=i)
                break
            except ApiError as e:
                assert e.status == 429 and e.code == "queue_full" and e.retry_after, e
                with lock:
                    refusals.append(i)
                time.sleep(0.5)
        results[i] = client.wait(job["id"], poll_s=0.2, timeout_s=300)

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=400)
    assert sorted(results) == list(range(8))
    assert all(r["status"] == "completed" for r in results.values()), results
    assert refusals, "with 8 clients and a queue of 4, some submissions must have been refused"
    ids = {r["id"] for r in results.values()}
    assert len(ids) == 8 and all(store.exists(f"jobs/{i}/video.mp4") for i in ids)

    assert server.metrics_url, server.log()
    deadline, metrics = time.time() + 60, {}
    while time.time() < deadline:  # Ray exports custom metrics every few seconds
        metrics = _scrape(server.metrics_url)
        if metrics.get('ray_polyvivid_request_rejections_total[reason="queue_full"]', 0) >= len(refusals) \
                and metrics.get("ray_polyvivid_videos_generated_total", 0) >= 8:
            break
        time.sleep(2)
    assert metrics.get('ray_polyvivid_request_rejections_total[reason="queue_full"]', 0) >= len(refusals), metrics
    assert metrics.get("ray_polyvivid_videos_generated_total", 0) >= 8, metrics
    assert metrics.get("ray_polyvivid_generation_seconds_count", 0) >= 8, metrics
    assert "ray_polyvivid_jobs_inflight" in metrics, metrics

    # every serving series the Grafana dashboard and the alert rules query is in a real scrape
    with urllib.request.urlopen(server.metrics_url) as resp:
        scraped = {line.split("{")[0].split(" ")[0] for line in resp.read().decode().splitlines()
                   if line and not line.startswith("#")}
    serving = {n for n in queried_names() if n.startswith("ray_serve_")
               or (n.startswith("ray_polyvivid_") and not n.startswith("ray_polyvivid_curate_"))}
    assert serving and serving <= scraped, sorted(serving - scraped)


def test_request_command_follows_the_job_and_writes_the_mp4(server, images, tmp_path):
    import os
    import subprocess
    import sys

    for word, data in images.items():
        (tmp_path / f"{word}.png").write_bytes(data)
    args = [sys.executable, "-m", "polyvivid.cli", "request", server.url, "--prompt", PROMPT, "--subject",
            f"man={tmp_path / 'man.png'}", "--subject", f"guitar={tmp_path / 'guitar.png'}", "--num-frames", "5",
            "--height", "32", "--width", "48", "--steps", "2", "--output", str(tmp_path / "v.mp4")]
    env = {k: v for k, v in os.environ.items() if k != "POLYVIVID_API_TOKEN"}
    env["XDG_CONFIG_HOME"] = str(tmp_path)  # no token file of `serve --local` either
    done = subprocess.run(args, capture_output=True, text=True, env={**env, "POLYVIVID_API_TOKEN": TOKEN}, timeout=180)
    assert done.returncode == 0, done.stderr
    assert decode_mp4((tmp_path / "v.mp4").read_bytes()).shape == (5, 32, 48, 3)
    refused = subprocess.run(args[:-1] + [str(tmp_path / "w.mp4")], capture_output=True, text=True, env=env,
                             timeout=60)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"polyvivid: error: {server.url}: HTTP 401: missing or wrong bearer token"]


def test_the_openapi_document_holds_what_the_server_does(server, tmp_path):
    """schemathesis (bounded) fuzzes every route from the served /openapi.json: no 5xx, every status,
    content type, header and body as documented, the token enforced, no dangling $ref (it refuses those).
    Left out: positive_data_acceptance (4k+1 frames and subject names in the prompt are rules JSON
    Schema cannot state, so schema-valid bodies are rightly refused) and use_after_free (DELETE of a
    queued or running job cancels it, and its record stays readable as cancelled)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    binary = Path(sys.executable).parent / "schemathesis"
    binary = str(binary) if binary.exists() else shutil.which("schemathesis")
    assert binary, "schemathesis not installed: install the test extra"
    document = json.loads(server.client(TOKEN).request("GET", "/openapi.json")[1])
    errors = {status for operation in document["paths"]["/v1/videos"].values()
              for status in operation["responses"]}
    assert {"400", "401", "413", "415", "422", "429", "503"} <= errors
    run = subprocess.run([binary, "run", f"{server.url}/openapi.json", "-H", f"Authorization: Bearer {TOKEN}",
                          "--checks", "all", "--exclude-checks", "positive_data_acceptance,use_after_free",
                          "--max-examples", "25", "--seed", "7", "--no-color", "--generation-database", "none",
                          "--request-timeout", "30"], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)  # its cache (.schemathesis/) goes there, not into the checkout
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout
    client = server.client(TOKEN)  # what it queued ends before the next module's tests
    deadline = time.time() + 180
    while client._json("GET", "/readyz")["inflight"]:
        assert time.time() < deadline, "the fuzzer's jobs did not end"
        time.sleep(1)


def test_the_official_openai_sdk_creates_retrieves_lists_downloads_and_deletes(server, images):
    """OpenAI's Python SDK as is: create sends multipart with an input_reference file; our subjects ride in
    extra_body as a JSON-encoded string naming the file's subject."""
    import warnings

    from openai import OpenAI

    sdk = OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0)
    with warnings.catch_warnings():  # the SDK marks its video methods deprecated (Sora's shutdown), not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        video = sdk.videos.create(prompt="A man waves", model="polyvivid", size="64x48", seconds="0.4",
                                  input_reference=("man.png", images["man"], "image/png"),
                                  extra_body={"subjects": json.dumps([{"name": "man"}]), "steps": 2, "seed": 5})
        assert video.status == "queued" and video.object == "video" and video.size == "64x48"
        deadline = time.time() + 120
        while (video := sdk.videos.retrieve(video.id)).status in ("queued", "in_progress") and time.time() < deadline:
            assert 0 <= video.progress <= 100
            time.sleep(0.2)
        assert video.status == "completed" and video.progress == 100 and video.completed_at >= video.created_at
        assert video.seconds == "0.38" and video.num_frames == 9 and video.subjects == ["man"]  # 9 frames at 24 fps
        assert video.id in [v.id for v in sdk.videos.list(limit=100).data]
        content = sdk.videos.download_content(video.id).read()
        assert decode_mp4(content).shape == (9, 48, 64, 3)
        deleted = sdk.videos.delete(video.id)
        assert deleted.deleted and deleted.object == "video.deleted"


def test_multipart_files_fill_the_named_subjects_in_order_and_the_list_pages(server, images, store):
    client = server.client(TOKEN)
    boundary = "polyvividboundary"
    parts = [("prompt", None, PROMPT.encode()), ("subjects", None, json.dumps([{"name": "man"}, {"name": "guitar"}]).encode()),
             ("steps", None, b"2"), ("num_frames", None, b"9"), ("size", None, b"64x48"),
             ("input_reference[]", "man.png", images["man"]), ("input_reference[]", "guitar.jpg", images["guitar"])]
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'.encode()
                    + (f'; filename="{filename}"\r\nContent-Type: application/octet-stream'.encode() if filename else b"")
                    + b"\r\n\r\n" + data + b"\r\n" for name, filename, data in parts) + f"--{boundary}--\r\n".encode()
    status, data, _ = client.request("POST", "/v1/videos", body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    job = json.loads(data)
    assert status == 202 and job["subjects"] == ["man", "guitar"], job
    record = json.loads(store.read_text(f"jobs/{job['id']}/job.json"))
    assert store.read_bytes(record["request"]["subjects"][1]["image"]) == images["guitar"]  # the second file
    assert client.wait(job["id"], timeout_s=120)["status"] == "completed"
    # one file too many: refused, naming the field
    extra = body.replace(f"--{boundary}--".encode(), f'--{boundary}\r\nContent-Disposition: form-data; name="input_reference"; '
                         f'filename="x.png"\r\n\r\n'.encode() + images["man"] + f"\r\n--{boundary}--".encode())
    status, data, _ = client.request("POST", "/v1/videos", extra,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 422 and json.loads(data)["error"]["field"] == "input_reference"
    # the list, a page of one at a time (a second job of this test's own: other tests, schemathesis's stateful
    # phase included, may have deleted theirs)
    newer = client.submit(PROMPT, images, num_frames=9, steps=1)
    first = json.loads(client.request("GET", "/v1/videos?limit=1")[1])
    assert first["data"][0]["id"] == newer["id"]
    assert first["object"] == "list" and len(first["data"]) == 1 and first["has_more"]
    second = json.loads(client.request("GET", f"/v1/videos?limit=1&after={first['last_id']}")[1])
    assert second["data"][0]["id"] != first["data"][0]["id"]
    assert first["data"][0]["created_at"] >= second["data"][0]["created_at"]  # newest first
    assert client.wait(newer["id"], timeout_s=120)["status"] == "completed"


def test_the_page_makes_a_video_in_a_real_browser_and_the_docs_need_no_cdn(server, images, tmp_path):
    """Debian's chromium, headless: the page at / submits a tiny request with a subject image, shows the
    progress, then plays the video and shows its contact sheet. Every file comes from the service."""
    from ..browser import Chromium, chromium_binary

    if chromium_binary() is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium)")
    (tmp_path / "man.png").write_bytes(images["man"])
    with Chromium(tmp_path / "profile") as browser:
        browser.call("Network.enable")
        browser.call("Page.navigate", url=f"{server.url}/")
        browser.wait_for("document.readyState === 'complete' && !!document.getElementById('submit')")
        browser.evaluate(f"""document.getElementById('token').value = {json.dumps(TOKEN)};
            document.getElementById('prompt').value = 'A man waves';
            document.querySelector('.subject .word').value = 'man';
            for (const [id, v] of [['width', 64], ['height', 48], ['frames', 9], ['steps', 2]])
              document.getElementById(id).value = v;""")
        browser.set_files(".subject .image", [str(tmp_path / "man.png")])
        browser.evaluate("document.getElementById('submit').click()")
        status = browser.wait_for("document.getElementById('status').textContent.startsWith('done') && "
                                  "document.getElementById('status').textContent", timeout_s=120)
        assert "64x48, 9 frames" in status
        browser.wait_for("document.getElementById('video').readyState >= 1")  # the mp4's metadata loaded
        assert browser.evaluate("[document.getElementById('video').videoWidth, "
                                "document.getElementById('video').videoHeight]") == [64, 48]
        assert browser.wait_for("document.getElementById('sheet').naturalWidth") > 64  # nine frames side by side
        browser.call("Page.navigate", url=f"{server.url}/docs")
        browser.wait_for("document.readyState === 'complete' && document.querySelectorAll('h2').length > 3")
        assert "POST /v1/videos" in browser.evaluate("document.body.innerText")
        requested = {e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"}
        assert requested and all(url.startswith((server.url, "blob:", "data:")) for url in requested), requested
