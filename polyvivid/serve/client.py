"""A small client of the HTTP API (stdlib only): what `polyvivid request` and the demo use.

    client = Client("http://127.0.0.1:8000", token=None)
    job = client.submit("A man plays the guitar", {"man": png_bytes, "guitar": png_bytes}, num_frames=9)
    client.wait(job["id"], on_progress=print)
    client.download(job["id"])  # mp4 bytes
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request

ENDED = ("completed", "failed", "cancelled")  # the API's (OpenAI's) final statuses


class ApiError(RuntimeError):
    """A 4xx/5xx answer: the HTTP status and the server's error body."""

    def __init__(self, status: int, body: dict, retry_after: float | None = None):
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        super().__init__(f"HTTP {status}: {error.get('message') or body}")
        self.status, self.body, self.retry_after = status, body, retry_after
        self.code, self.field = error.get("code"), error.get("field")


class Client:
    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30):
        self.url, self.token, self.timeout_s = url.rstrip("/"), token, timeout_s

    def request(self, method: str, path: str, body: dict | bytes | None = None,
                headers: dict | None = None) -> tuple[int, bytes, dict]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        h = {"Content-Type": "application/json"} if data is not None else {}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        h.update(headers or {})
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, resp.read(), {k.lower(): v for k, v in resp.headers.items()}
        except urllib.error.HTTPError as e:
            return e.code, e.read(), {k.lower(): v for k, v in e.headers.items()}

    def _json(self, method: str, path: str, body: dict | None = None) -> dict:
        status, raw, headers = self.request(method, path, body)
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"error": {"message": raw[:200].decode(errors="replace")}}
        if status >= 400:
            retry = headers.get("retry-after")
            raise ApiError(status, parsed, float(retry) if retry else None)
        return parsed

    def ready(self) -> bool:
        status, _, _ = self.request("GET", "/readyz")
        return status == 200

    def wait_ready(self, timeout_s: float = 120, poll_s: float = 1.0) -> None:
        deadline = time.time() + timeout_s
        while True:
            try:
                if self.ready():
                    return
            except OSError:  # not listening yet
                pass
            if time.time() > deadline:
                raise TimeoutError(f"{self.url} not ready after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def submit(self, prompt: str, subjects: dict[str, bytes], **settings) -> dict:
        body = {"prompt": prompt, "subjects": [{"name": n, "image": base64.b64encode(b).decode()}
                                               for n, b in subjects.items()]}
        body.update({k: v for k, v in settings.items() if v is not None})
        return self._json("POST", "/v1/videos", body)

    def status(self, job_id: str, wait_s: float = 0) -> dict:
        """The job's status; with wait_s, the server answers as soon as the job ends (or after wait_s)."""
        return self._json("GET", f"/v1/videos/{job_id}" + (f"?wait={wait_s:g}" if wait_s else ""))

    def cancel(self, job_id: str) -> dict:
        return self._json("DELETE", f"/v1/videos/{job_id}")

    def wait(self, job_id: str, poll_s: float = 0.5, timeout_s: float | None = None, on_progress=None) -> dict:
        """Poll until the job ends; returns its final status."""
        deadline = None if timeout_s is None else time.time() + timeout_s
        while True:
            start = time.time()
            job = self.status(job_id, wait_s=poll_s)  # long poll: no latency added by the interval
            if on_progress:
                on_progress(job)
            if job["status"] in ENDED:
                return job
            if deadline is not None and time.time() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s:.0f} s")
            time.sleep(max(0.0, poll_s - (time.time() - start)))  # a server that did not wait

    def download(self, job_id: str) -> bytes:
        status, raw, headers = self.request("GET", f"/v1/videos/{job_id}/content")
        if status != 200:
            raise ApiError(status, json.loads(raw) if raw else {})
        return raw
