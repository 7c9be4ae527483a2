"""The artifact store against a local directory and a real S3 server (SeaweedFS)."""

from __future__ import annotations

import hashlib
import os
import urllib.request

import pytest

from polyvivid.storage import (
    LocalStore, ObjectNotFound, S3Settings, S3Store, StorageAuthError, StorageError,
    materialize_dir, open_store,
)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(f"file://{tmp_path}/artifacts")
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(f"{bucket}/run-1")


def test_round_trip_list_delete(store):
    store.write_bytes("a/b.bin", b"\x00\x01payload")
    store.write_text("a/c.json", '{"ok": true}')
    store.write_text("top.txt", "hello")
    assert store.read_bytes("a/b.bin") == b"\x00\x01payload"
    assert store.read_text("a/c.json") == '{"ok": true}'
    assert store.list() == ["a/b.bin", "a/c.json", "top.txt"]
    assert store.list("a/") == ["a/b.bin", "a/c.json"]
    assert store.exists("top.txt") and not store.exists("nope.txt")
    store.delete("top.txt")
    assert not store.exists("top.txt")
    assert store.list() == ["a/b.bin", "a/c.json"]


def test_overwrite_replaces_whole_object(store):
    store.write_bytes("x", b"first version, longer")
    store.write_bytes("x", b"second")
    assert store.read_bytes("x") == b"second"


def test_missing_object_is_a_clear_error(store):
    with pytest.raises(ObjectNotFound) as err:
        store.read_bytes("missing/object.bin")
    assert "missing/object.bin" in str(err.value)


def test_dir_upload_download(store, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "one.txt").write_text("1")
    (src / "sub" / "two.txt").write_text("2")
    keys = store.upload_dir(src, "ckpt")
    assert keys == ["ckpt/one.txt", "ckpt/sub/two.txt"]
    dest = tmp_path / "dest"
    store.download_dir("ckpt", dest)
    assert (dest / "one.txt").read_text() == "1"
    assert (dest / "sub" / "two.txt").read_text() == "2"


def test_large_object_goes_up_in_parts_and_comes_back_intact(s3_bucket, tmp_path, monkeypatch):
    store = open_store(f"{s3_bucket}/big")
    data = os.urandom(40 * 1024 * 1024 + 123)  # > 2 parts of 16 MiB: a multipart upload
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    store.upload_file(path, "big.bin")
    back = tmp_path / "back.bin"
    monkeypatch.setattr(S3Store, "read_bytes", lambda *a: pytest.fail("a download must stream, not read whole"))
    store.download_file("big.bin", back)
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()
    # The server saw a multipart upload: its ETag has the "-<parts>" suffix.
    stat = store.client.stat_object(store.bucket, store._key("big.bin"))
    assert stat.etag.endswith("-3"), stat.etag


def test_bad_credentials_are_a_clear_error(s3_env, s3_bucket):
    settings = S3Settings.from_env(access_key="wrong", secret_key="wrong-secret")
    store = S3Store(s3_bucket[len("s3://"):], "x", settings)
    with pytest.raises(StorageAuthError) as err:
        store.write_bytes("a.txt", b"data")
    assert "credentials" in str(err.value)
    assert "wrong-secret" not in str(err.value)


def test_presigned_url_serves_the_object(s3_bucket):
    store = open_store(f"{s3_bucket}/share")
    store.write_bytes("v.mp4", b"video-bytes")
    url = store.url("v.mp4", expires_s=60)
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b"video-bytes"


def test_unreachable_endpoint_is_a_clear_error(monkeypatch):
    from tests.conftest import free_port

    monkeypatch.setenv("POLYVIVID_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    store = open_store("s3://bucket/prefix")
    store.client._http.connection_pool_kw["retries"] = 0  # fail fast instead of backing off
    with pytest.raises(StorageError) as err:
        store.read_bytes("k")
    assert "unreachable" in str(err.value)


def test_bad_uris_and_missing_endpoint(monkeypatch):
    monkeypatch.delenv("POLYVIVID_S3_ENDPOINT", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with pytest.raises(StorageError, match="POLYVIVID_S3_ENDPOINT"):
        open_store("s3://bucket/x")
    with pytest.raises(StorageError, match="unsupported storage URI"):
        open_store("gs://bucket/x")
    with pytest.raises(StorageError, match="bad S3 URI"):
        open_store("s3:///x")


def test_local_keys_cannot_escape_the_root(tmp_path):
    store = LocalStore(tmp_path / "root")
    with pytest.raises(StorageError, match="escapes"):
        store.write_bytes("../outside.txt", b"x")
    assert not (tmp_path / "outside.txt").exists()


def test_materialize_dir_downloads_s3_prefix_once(s3_bucket, tmp_path):
    store = open_store(f"{s3_bucket}/model")
    store.write_text("config.json", "{}")
    store.write_bytes("weights/w.bin", b"123")
    local = materialize_dir(f"{s3_bucket}/model", cache_dir=tmp_path / "cache")
    assert (local / "config.json").read_text() == "{}"
    assert (local / "weights" / "w.bin").read_bytes() == b"123"
    store.write_text("config.json", '{"changed": 1}')
    assert materialize_dir(f"{s3_bucket}/model", cache_dir=tmp_path / "cache") == local
    with pytest.raises(ObjectNotFound):
        materialize_dir(str(tmp_path / "does-not-exist"))


def test_the_processes_of_a_node_download_a_model_once_between_them(s3_env, s3_bucket, tmp_path):
    """Four processes (a node's ranks) ask for the same S3 directory at once: one downloads behind the
    cache's file lock, the others wait and read its copy."""
    import subprocess
    import sys

    store = open_store(f"{s3_bucket}/model-4")
    for i in range(3):
        store.write_bytes(f"weights-{i}.bin", os.urandom(2 * 1024 * 1024))
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, format='%(message)s');"
            "from polyvivid.storage import materialize_dir;"
            "local = materialize_dir(sys.argv[1], cache_dir=sys.argv[2]);"
            "print(sorted(p.name for p in local.iterdir()))")
    procs = [subprocess.Popen([sys.executable, "-c", code, f"{s3_bucket}/model-4", str(tmp_path / "cache")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
             for _ in range(4)]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert [rc for _, _, rc in results] == [0] * 4, [err[-500:] for _, err, _ in results]
    assert {out.strip() for out, _, _ in results} == {"['.complete', 'weights-0.bin', 'weights-1.bin', 'weights-2.bin']"}
    assert sum("downloading" in err for _, err, _ in results) == 1


def test_transient_failures_are_retried_and_permanent_ones_are_not():
    from polyvivid.storage import with_retries

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise StorageError("S3 endpoint unreachable")
        return "ok"

    assert with_retries(flaky, attempts=5, base_delay_s=0.001) == "ok" and len(calls) == 3

    def missing():
        calls.append(1)
        raise ObjectNotFound("no such object")

    calls.clear()
    with pytest.raises(ObjectNotFound):
        with_retries(missing, attempts=5, base_delay_s=0.001)
    assert len(calls) == 1

    def broken():
        raise StorageError("disk full")

    with pytest.raises(StorageError, match="upload x failed after 2 attempts: disk full"):
        with_retries(broken, attempts=2, base_delay_s=0.001, what="upload x")

    # within_s: tries for that long (not a count), then names the time
    import time

    calls.clear()
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"write job.json failed for 0.3 s \(\d+ attempts\): disk full"):
        with_retries(lambda: calls.append(1) or broken(), base_delay_s=0.02, within_s=0.3, what="write job.json")
    assert 0.1 < time.monotonic() - started <= 0.4 and len(calls) >= 3
