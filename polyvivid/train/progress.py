"""Training progress: OUTPUT/progress.json (read by the operator) and Prometheus metrics, rank 0 only."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from ..storage import ArtifactStore, StorageError, with_retries
from ..telemetry import TRAINING

PROGRESS = "progress.json"
HISTORY = 2000  # losses kept in progress.json


class ProgressReporter:
    def __init__(self, store: ArtifactStore, total_steps: int, metrics_port: int = 0, metrics_addr: str = "127.0.0.1",
                 enabled: bool = True):
        self.store, self.total_steps, self.enabled = store, total_steps, enabled
        self.state: dict = {"status": "starting", "total_steps": total_steps, "history": []}
        self.metrics = None
        if enabled and metrics_port:
            from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

            registry = CollectorRegistry()
            kinds = {"gauge": Gauge, "counter": Counter}
            self.metrics = {key: kinds[s.kind](s.name, s.help, registry=registry) for key, s in TRAINING.items()}
            self.metrics["total"].set(total_steps)
            self.server, _ = start_http_server(metrics_port, addr=metrics_addr, registry=registry)

    def restore(self, previous: dict | None) -> None:
        if previous:
            self.state["history"] = previous.get("history", [])[-HISTORY:]

    def step(self, step: int, loss: float, step_seconds: float, samples: int, stage: str, resolution: str,
             samples_skipped: int = 0, **fields) -> None:
        """Record one optimizer step; history rows are [step, loss, stage, "low" | "full"].
        samples_skipped: this run's unreadable samples so far (the counter grows by the new ones)."""
        if not self.enabled:
            return
        newly_skipped = samples_skipped - self.state.get("samples_skipped", 0)
        self.state["history"].append([step, round(loss, 6), stage, resolution])
        del self.state["history"][:-HISTORY]
        self.state.update(step=step, loss=loss, stage=stage, resolution=resolution, step_seconds=round(step_seconds, 4),
                          samples_per_s=round(samples / max(step_seconds, 1e-9), 3), samples_skipped=samples_skipped,
                          **fields)
        if self.metrics:
            self.metrics["loss"].set(loss)
            self.metrics["step"].set(step)
            self.metrics["seconds"].set(step_seconds)
            self.metrics["samples"].set(self.state["samples_per_s"])
            if newly_skipped > 0:
                self.metrics["skipped"].inc(newly_skipped)

    def write(self, **fields) -> None:
        """Write progress.json; a storage failure here is logged and retried, never fatal."""
        if not self.enabled:
            return
        self.state.update(fields, updated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        try:
            with_retries(self.store.write_text, PROGRESS, json.dumps(self.state, indent=1), attempts=3,
                         what="write progress.json")
        except StorageError as e:
            import logging

            logging.getLogger(__name__).warning("progress.json not written: %s", e)

    def close(self) -> None:
        if self.metrics:
            self.server.shutdown()


def now() -> float:
    return time.perf_counter()
