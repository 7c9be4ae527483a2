"""The operator's settings, from its environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .children.common import DEFAULT_IMAGE


@dataclass(frozen=True)
class OperatorConfig:
    image: str = DEFAULT_IMAGE  # workload image, unless a spec's scheduling.image says otherwise
    max_gpus_per_node: int = 8  # a spec asking more GPUs of one pod than this is InvalidSpec
    metrics_port: int = 8080  # Prometheus /metrics; 0 disables

    @classmethod
    def from_env(cls) -> "OperatorConfig":
        env = os.environ
        return cls(image=env.get("POLYVIVID_IMAGE", DEFAULT_IMAGE),
                   max_gpus_per_node=int(env.get("POLYVIVID_MAX_GPUS_PER_NODE", "8")),
                   metrics_port=int(env.get("POLYVIVID_METRICS_PORT", "8080")))


# How often each resource is re-read and its children and store checked (progress.json, waiting on a
# dependency). Read once at import: kopf timers are declared when the handlers are.
SYNC_INTERVAL_S = float(os.environ.get("POLYVIVID_SYNC_INTERVAL", "30"))
