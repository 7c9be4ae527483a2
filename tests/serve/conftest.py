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
    def __init__(self, proc: subprocess.Popen, url: str, metrics_url: str | None, lines: list[str]):
        self.proc, self.url, self.metrics_url, self.lines = proc, url, metrics_url, lines

    def client(self, token: str | None = None) -> Client:
        return Client(self.url, token=token)

    def log(self) -> str:
        return "".join(self.lines[-60:])


@contextmanager
def running_server(spec_path: Path, env: dict | None = None, extra_args: tuple = (), start_timeout_s: float = 180):
    """Start `polyvivid serve SPEC --local`, wait until /readyz says ready, stop it (SIGTERM) at the end."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", **(env or {})}
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
    server = Server(proc, f"http://127.0.0.1:{port}", None, lines)
    try:
        deadline = time.time() + start_timeout_s
        while not (_listening(server) and server.client().ready()):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"server did not become ready (exit {proc.poll()}):\n{server.log()}")
            time.sleep(1)
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
