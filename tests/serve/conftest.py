"""A real `polyvivid serve --local` process (local Ray + Serve on 127.0.0.1) for the HTTP tests."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from polyvivid.serve.client import Client

from ..conftest import free_port


def service_manifest(output: str, **spec) -> dict:
    body = {
        "model": {"preset": "tiny"}, "output": output,
        "replicas": {"min": 1, "max": 1, "gpusPerReplica": 0, "cpusPerReplica": 1},
        "limits": {"maxSubjects": 2, "maxFrames": 17, "maxHeight": 64, "maxWidth": 64, "maxSteps": 8,
                   "maxRequestBytes": 200_000, "queueLength": 4},
        "defaults": {"numFrames": 9, "height": 64, "width": 64, "steps": 4, "guidance": 6.0},
    }
    body.update(spec)
    return {"apiVersion": "polyvivid.io/v1alpha1", "kind": "PolyVividService", "metadata": {"name": "s"},
            "spec": body}


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, metrics_url: str | None, lines: list[str],
                 token: str | None = None):
        self.proc, self.url, self.metrics_url, self.lines, self.token = proc, url, metrics_url, lines, token

    def client(self, token: str | None = "server's") -> Client:
        """A client with `token` (None: no token), by default the server's own (given or generated)."""
        return Client(self.url, token=self.token if token == "server's" else token)

    def log(self) -> str:
        return "".join(self.lines[-60:])


@contextmanager
def running_server(spec_path: Path, env: dict | None = None, extra_args: tuple = (), start_timeout_s: float = 180):
    """Start `polyvivid serve SPEC --local`, wait until /readyz says ready, stop it (SIGTERM) at the end.
    Without POLYVIVID_API_TOKEN in `env` the server generates its token under the spec's directory
    (XDG_CONFIG_HOME), and the Server's client uses it."""
    port = free_port()
    config_home = spec_path.parent / "config"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_CONFIG_HOME": str(config_home), **(env or {})}
    env.pop("RAY_AUTH_MODE", None)  # Ray's token auth stays on, as for a user
    proc = subprocess.Popen([sys.executable, "-m", "polyvivid.cli", "serve", str(spec_path), "--local",
                             "--port", str(port), *extra_args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    lines: list[str] = []
    announced: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("metrics: "):
                announced.put(line.split()[1])

    threading.Thread(target=pump, daemon=True).start()
    server = Server(proc, f"http://127.0.0.1:{port}", None, lines, env.get("POLYVIVID_API_TOKEN"))
    try:
        deadline = time.time() + start_timeout_s
        while not (_listening(server) and server.client().ready()):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"server did not become ready (exit {proc.poll()}):\n{server.log()}")
            time.sleep(1)
        generated = config_home / "polyvivid" / "api-token"
        if server.token is None and generated.is_file():
            server.token = generated.read_text().strip()
        try:
            server.metrics_url = announced.get(timeout=10)
        except queue.Empty:
            pass
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _listening(server: Server) -> bool:
    try:
        server.client().request("GET", "/healthz")
        return True
    except OSError:
        return False


def write_manifest(path: Path, manifest: dict) -> Path:
    path.write_text(yaml.safe_dump(manifest))
    return path
