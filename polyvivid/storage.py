"""Artifact store: one interface over local paths (`file://` or plain) and S3 (`s3://bucket/key`).

Every workload reads and writes through `open_store(uri)`. S3 goes through the minio SDK, so the
same code talks to MinIO in a cluster and to any S3-compatible server elsewhere. Endpoint,
credentials and TLS come from arguments or the environment, never from code:

    POLYVIVID_S3_ENDPOINT (or AWS_ENDPOINT_URL)  e.g. http://minio.minio:9000
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY    (in a cluster: from a Secret, never the spec)
    AWS_REGION                                    optional
    POLYVIVID_S3_VERIFY_TLS                       "0" to skip certificate checks (self-signed)

Writes are whole-object and atomic (local: temp file + rename; S3: a PUT is atomic), so a failed
write never leaves a half-written artifact over a good one.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

MULTIPART_PART_SIZE = 16 * 1024 * 1024
PARTIAL = ".partial"  # suffix of a local write in progress; never listed


class StorageError(RuntimeError):
    """A storage operation failed; the message says which URI and why."""


class ObjectNotFound(StorageError):
    pass


class StorageAuthError(StorageError):
    pass


@dataclass(frozen=True)
class S3Settings:
    endpoint: str  # host:port, without scheme
    secure: bool
    access_key: str | None
    secret_key: str | None
    region: str | None = None
    verify_tls: bool = True

    @classmethod
    def from_env(cls, endpoint: str | None = None, access_key: str | None = None,
                 secret_key: str | None = None, region: str | None = None) -> "S3Settings":
        env = os.environ
        endpoint = endpoint or env.get("POLYVIVID_S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL")
        if not endpoint:
            raise StorageError(
                "no S3 endpoint configured: set POLYVIVID_S3_ENDPOINT (e.g. http://minio:9000) "
                "or pass an endpoint"
            )
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise StorageError(f"bad S3 endpoint {endpoint!r}: expected http(s)://host[:port]")
        return cls(
            endpoint=parsed.netloc,
            secure=parsed.scheme == "https",
            access_key=access_key or env.get("AWS_ACCESS_KEY_ID"),
            secret_key=secret_key or env.get("AWS_SECRET_ACCESS_KEY"),
            region=region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            verify_tls=env.get("POLYVIVID_S3_VERIFY_TLS", "1") not in ("0", "false", "False"),
        )


def has_dot_segments(path: str) -> bool:
    """Whether a key, path or URI has a '..' segment: it would address something outside where it is
    meant to stay (S3 keys are literal, so there it addresses a surprising key instead)."""
    return ".." in urlparse(path).path.replace("\\", "/").split("/")


class ArtifactStore:
    """Keys are '/'-separated paths relative to the store's root URI."""

    root_uri: str

    def uri(self, key: str) -> str:
        return f"{self.root_uri.rstrip('/')}/{key.lstrip('/')}" if key else self.root_uri

    # Subclasses implement these five.
    def read_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def local_path(self, key: str) -> Path | None:
        """The file holding `key` when the store is a local directory (readers can stream it), else None."""
        return None

    def read_into(self, key: str, f: BinaryIO) -> None:
        """Copy the object into an open file in chunks (never whole in memory). Subclasses stream; this
        fallback reads it whole."""
        f.write(self.read_bytes(key))

    def write_stream(self, key: str, stream: BinaryIO, length: int) -> None:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        """All keys under `prefix` (recursive), sorted."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def url(self, key: str, expires_s: int = 3600) -> str:
        """A URL a client can fetch the object from (presigned for S3)."""
        raise NotImplementedError

    # Built on the five above.
    def write_bytes(self, key: str, data: bytes) -> None:
        self.write_stream(key, io.BytesIO(data), len(data))

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def upload_file(self, local: str | os.PathLike, key: str) -> None:
        size = os.path.getsize(local)
        with open(local, "rb") as f:
            self.write_stream(key, f, size)

    def download_file(self, key: str, local: str | os.PathLike) -> None:
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".part")
        with open(tmp, "wb") as f:
            self.read_into(key, f)
        tmp.replace(local)

    def upload_dir(self, local_dir: str | os.PathLike, prefix: str) -> list[str]:
        local_dir = Path(local_dir)
        keys = []
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            key = f"{prefix.rstrip('/')}/{path.relative_to(local_dir).as_posix()}".lstrip("/")
            self.upload_file(path, key)
            keys.append(key)
        return keys

    def download_dir(self, prefix: str, local_dir: str | os.PathLike) -> list[Path]:
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        keys = self.list(prefix)
        if not keys:
            raise ObjectNotFound(f"nothing stored under {self.uri(prefix)}")
        paths = []
        for key in keys:
            dest = Path(local_dir) / key[len(prefix):]
            self.download_file(key, dest)
            paths.append(dest)
        return paths


class LocalStore(ArtifactStore):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.root_uri = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise StorageError(f"key {key!r} escapes the store root {self.root}")
        return path

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"no such object: {self.uri(key)}") from None
        except OSError as e:
            raise StorageError(f"cannot read {self.uri(key)}: {e.strerror}") from None

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def read_into(self, key: str, f: BinaryIO) -> None:
        try:
            with open(self._path(key), "rb") as source:
                shutil.copyfileobj(source, f, 1024 * 1024)
        except FileNotFoundError:
            raise ObjectNotFound(f"no such object: {self.uri(key)}") from None
        except OSError as e:
            raise StorageError(f"cannot read {self.uri(key)}: {e.strerror}") from None

    def write_stream(self, key: str, stream: BinaryIO, length: int) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL)
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; artifacts are ordinary files
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(stream, f, 1024 * 1024)
            os.replace(tmp, path)
        except OSError as e:
            raise StorageError(f"cannot write {self.uri(key)}: {e.strerror}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not k.endswith(PARTIAL))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def url(self, key: str, expires_s: int = 3600) -> str:
        return self.uri(key)


def _http_client(verify_tls: bool):
    """minio's own client, with shorter waits: it retries 5 times and waits up to 5 minutes to connect, so
    that one call to a store that is down took about 6 s to fail (and minutes if it hangs). Our callers
    retry with backoff themselves (with_retries), and an HTTP reader gets its 503 in time."""
    import certifi
    import urllib3

    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10, read=300), maxsize=10,
        cert_reqs="CERT_REQUIRED" if verify_tls else "CERT_NONE",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=1, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]))


class S3Store(ArtifactStore):
    def __init__(self, bucket: str, prefix: str = "", settings: S3Settings | None = None,
                 create_bucket: bool = False):
        from minio import Minio  # the SDK is only needed when S3 is used

        self.settings = settings or S3Settings.from_env()
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root_uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = Minio(
            self.settings.endpoint,
            access_key=self.settings.access_key,
            secret_key=self.settings.secret_key,
            secure=self.settings.secure,
            region=self.settings.region,
            http_client=_http_client(self.settings.verify_tls),
        )
        if create_bucket:
            self._call("create bucket", "", self._ensure_bucket)

    def _ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            self.client.make_bucket(self.bucket)

    def _key(self, key: str) -> str:
        if has_dot_segments(key):  # keys come from manifests and URLs too: never step out of the prefix
            raise StorageError(f"key {key!r} has a '..' segment: it would leave {self.root_uri}")
        return f"{self.prefix}/{key.lstrip('/')}" if self.prefix else key.lstrip("/")

    def _call(self, what: str, key: str, fn, *args, **kwargs):
        """Run one SDK call, turning its exceptions into StorageError with a clear one-line message."""
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except S3Error as e:
            where = self.uri(key)
            if e.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                raise ObjectNotFound(f"no such object: {where} ({e.code})") from None
            if e.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StorageAuthError(
                    f"S3 refused to {what} {where}: {e.code} (check AWS_ACCESS_KEY_ID / "
                    f"AWS_SECRET_ACCESS_KEY or the credentials Secret)"
                ) from None
            raise StorageError(f"S3 could not {what} {where}: {e.code}: {e.message}") from None
        except HTTPError as e:
            raise StorageError(
                f"S3 endpoint {self.settings.endpoint} unreachable while trying to {what} "
                f"{self.uri(key)}: {type(e).__name__}"
            ) from None

    def read_bytes(self, key: str) -> bytes:
        def get():
            response = self.client.get_object(self.bucket, self._key(key))
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call("read", key, get)

    def read_into(self, key: str, f: BinaryIO) -> None:
        def copy():
            f.seek(0)
            f.truncate()  # a retried call starts the file again
            response = self.client.get_object(self.bucket, self._key(key))
            try:
                for chunk in response.stream(1024 * 1024):
                    f.write(chunk)
            finally:
                response.close()
                response.release_conn()

        self._call("read", key, copy)

    def write_stream(self, key: str, stream: BinaryIO, length: int) -> None:
        # Objects above one part go up as a multipart upload, completed (atomically) only at the end.
        self._call("write", key, self.client.put_object, self.bucket, self._key(key), stream, length,
                   part_size=MULTIPART_PART_SIZE)

    def exists(self, key: str) -> bool:
        try:
            self._call("stat", key, self.client.stat_object, self.bucket, self._key(key))
            return True
        except ObjectNotFound:
            return False

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        objects = self._call("list", prefix, lambda: list(
            self.client.list_objects(self.bucket, prefix=full, recursive=True)))
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted(o.object_name[cut:] for o in objects)

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.remove_object, self.bucket, self._key(key))

    def url(self, key: str, expires_s: int = 3600) -> str:
        from datetime import timedelta

        return self._call("presign", key, self.client.presigned_get_object, self.bucket,
                          self._key(key), expires=timedelta(seconds=expires_s))


MAX_RETRY_DELAY_S = 5.0


def with_retries(fn, *args, attempts: int | None = None, base_delay_s: float | None = None,
                 within_s: float | None = None, what: str = "storage call", **kwargs):
    """Run a store call, retrying transient failures with exponential backoff (delays capped at 5 s).

    Missing objects and refused credentials are not transient: they raise at once. Defaults: 5
    attempts from 0.5 s (POLYVIVID_RETRY_ATTEMPTS, POLYVIVID_RETRY_DELAY_S); `within_s` instead keeps
    trying for that many seconds (what must not be lost to a short outage, e.g. a job's final record).
    """
    import logging
    import time

    if within_s is None:
        attempts = attempts or int(os.environ.get("POLYVIVID_RETRY_ATTEMPTS", "5"))
    base_delay_s = base_delay_s if base_delay_s is not None else float(os.environ.get("POLYVIVID_RETRY_DELAY_S", "0.5"))
    started, attempt = time.monotonic(), 0
    while True:
        attempt += 1
        try:
            return fn(*args, **kwargs)
        except (ObjectNotFound, StorageAuthError):
            raise
        except StorageError as e:
            delay = min(base_delay_s * 2 ** (attempt - 1), MAX_RETRY_DELAY_S)
            if within_s is None:
                if attempt >= attempts:
                    raise StorageError(f"{what} failed after {attempts} attempts: {e}") from None
            elif time.monotonic() - started + delay > within_s:
                raise StorageError(f"{what} failed for {within_s:g} s ({attempt} attempts): {e}") from None
            logging.getLogger(__name__).warning("%s failed (%s); retrying in %.1f s", what, e, delay)
            time.sleep(delay)


def open_store(uri: str, settings: S3Settings | None = None, create_bucket: bool = False) -> ArtifactStore:
    """The store rooted at `uri`: `s3://bucket/prefix`, `file:///path` or a plain path."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"bad S3 URI {uri!r}: expected s3://bucket/prefix")
        if has_dot_segments(uri):
            raise StorageError(f"bad S3 URI {uri!r}: '..' segments are not allowed")
        return S3Store(parsed.netloc, parsed.path, settings, create_bucket=create_bucket)
    if parsed.scheme == "file":
        return LocalStore(parsed.path)
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return LocalStore(uri)
    raise StorageError(f"unsupported storage URI {uri!r}: use s3://bucket/prefix, file:///path or a path")


def split_uri(uri: str) -> tuple[str, str]:
    """('s3://bucket/dir', 'name') for 's3://bucket/dir/name'; works for paths too."""
    head, _, tail = uri.rstrip("/").rpartition("/")
    return head or ".", tail


def _local_or_cached(uri: str, cache_dir: str | os.PathLike | None, kind: str) -> tuple[Path, bool]:
    """(path, is_s3): the path itself for a local URI (which must be a `kind`: "file" or "directory"), else
    where the S3 object(s) are cached under $POLYVIVID_CACHE."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3":
        path = Path(parsed.path if parsed.scheme == "file" else uri).expanduser()
        if not (path.is_file() if kind == "file" else path.is_dir()):
            raise ObjectNotFound(f"no such {kind}: {uri}")
        return path, False
    cache_root = Path(cache_dir or os.environ.get("POLYVIVID_CACHE", "~/.cache/polyvivid")).expanduser()
    return cache_root / "s3" / parsed.netloc / parsed.path.strip("/"), True


def materialize_dir(uri: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local directory holding what is stored under `uri`, downloaded once for S3: every process of a node
    (the 8 ranks of a training pod) shares the cache, and the first to take its file lock downloads, file
    by file and streamed to disk, while the others wait for it and then read what it wrote."""
    import fcntl
    import logging

    local, from_s3 = _local_or_cached(uri, cache_dir, "directory")
    marker = local / ".complete"
    if not from_s3 or marker.exists():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    with open(local.with_name(local.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if not marker.exists():
            logging.getLogger("polyvivid.storage").info("downloading %s to %s (once for this node)", uri, local)
            open_store(uri).download_dir("", local)
            marker.touch()
    return local


def materialize_file(uri: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local path holding the file stored at `uri` (downloaded once for S3)."""
    local, from_s3 = _local_or_cached(uri, cache_dir, "file")
    if from_s3 and not local.exists():
        directory, name = split_uri(uri)
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(local.name + ".partial")
        open_store(directory).download_file(name, partial)
        partial.rename(local)  # a complete file or none: an interrupted download is not taken for one
    return local
