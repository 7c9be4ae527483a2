"""The operator's settings, from its environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from .children.common import DEFAULT_IMAGE
from .children.trainjob import DEFAULT_RUNTIME


def normalized_endpoint(endpoint: str) -> str:
    """An S3 endpoint as scheme://host:port, for comparing (`http://MinIO.minio:80/` is
    `http://minio.minio:80`); a bare host:port is https, as the store client reads it. ValueError when it is
    not a plain http(s) endpoint (a path, credentials or a query make it something else)."""
    parts = urlsplit(endpoint.strip() if "://" in endpoint else f"https://{endpoint.strip()}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme.lower() not in ("http", "https") or not parts.hostname or port == -1
            or parts.username or parts.password or parts.path.strip("/") or parts.query or parts.fragment):
        raise ValueError(f"{endpoint!r} is not an S3 endpoint (http(s)://host[:port])")
    scheme = parts.scheme.lower()
    return f"{scheme}://{parts.hostname.lower()}:{port or (443 if scheme == 'https' else 80)}"


@dataclass(frozen=True)
class OperatorConfig:
    image: str = DEFAULT_IMAGE  # workload image, unless a spec's scheduling.image says otherwise
    max_gpus_per_node: int = 8  # a spec asking more GPUs of one pod than this is InvalidSpec
    metrics_port: int = 8080  # Prometheus /metrics; 0 disables
    # The cluster's object store: the pods of a spec that names no storage.endpoint use it, and the operator
    # reads progress.json there. A spec may name only it or one of allowed_s3_endpoints: the operator sends
    # signed requests with the namespace's Secret to that host, so a spec must not choose any host it likes.
    s3_endpoint: str | None = None
    allowed_s3_endpoints: tuple[str, ...] = ()
    training_runtime: str = DEFAULT_RUNTIME  # the ClusterTrainingRuntime that TrainJobs reference (the chart's)

    def __post_init__(self):
        for endpoint in (self.s3_endpoint, *self.allowed_s3_endpoints):
            if endpoint is not None:
                normalized_endpoint(endpoint)  # fail at start, not on the first spec

    def endpoints(self) -> list[str]:
        """The endpoints a spec may name, as given."""
        return [e for e in (self.s3_endpoint, *self.allowed_s3_endpoints) if e]

    def endpoint_allowed(self, endpoint: str) -> bool:
        try:
            wanted = normalized_endpoint(endpoint)
        except ValueError:
            return False
        return wanted in {normalized_endpoint(e) for e in self.endpoints()}

    @classmethod
    def from_env(cls) -> "OperatorConfig":
        env = os.environ
        allowed = env.get("POLYVIVID_ALLOWED_S3_ENDPOINTS", "")
        return cls(image=env.get("POLYVIVID_IMAGE", DEFAULT_IMAGE),
                   max_gpus_per_node=int(env.get("POLYVIVID_MAX_GPUS_PER_NODE", "8")),
                   metrics_port=int(env.get("POLYVIVID_METRICS_PORT", "8080")),
                   s3_endpoint=env.get("POLYVIVID_S3_ENDPOINT") or None,
                   training_runtime=env.get("POLYVIVID_TRAINING_RUNTIME", DEFAULT_RUNTIME),
                   allowed_s3_endpoints=tuple(e.strip() for e in allowed.split(",") if e.strip()))


# How often each resource is re-read and its children and store checked (progress.json, waiting on a
# dependency). Read once at import: kopf timers are declared when the handlers are.
SYNC_INTERVAL_S = float(os.environ.get("POLYVIVID_SYNC_INTERVAL", "30"))
