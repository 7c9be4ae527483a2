"""The operator's Prometheus metrics, served on :8080/metrics (POLYVIVID_METRICS_PORT)."""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

REGISTRY = CollectorRegistry()
RECONCILES = Counter("polyvivid_operator_reconciles", "reconciles by kind and result (success, invalid, error)",
                     ["kind", "result"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("polyvivid_operator_reconcile_seconds", "seconds per reconcile", ["kind"],
                              buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY)

_phases: dict[tuple[str, str, str], str] = {}  # (kind, namespace, name) -> phase
_seen: set[tuple[str, str]] = set()  # (kind, phase) ever reported: shown as 0 once no resource is in it


class _ResourcesByPhase:
    """polyvivid_operator_resources{kind, phase}, counted from the recorded phases at each scrape."""

    def collect(self):
        family = GaugeMetricFamily("polyvivid_operator_resources", "resources by kind and phase",
                                   labels=["kind", "phase"])
        counts = Tally((kind, phase) for (kind, _, _), phase in list(_phases.items()))
        for key in sorted(_seen | set(counts)):
            family.add_metric(list(key), counts.get(key, 0))
        yield family


REGISTRY.register(_ResourcesByPhase())


def set_phase(kind: str, namespace: str, name: str, phase: str | None) -> None:
    """Record a resource's phase (None: it is gone)."""
    if phase is None:
        _phases.pop((kind, namespace, name), None)
    else:
        _phases[(kind, namespace, name)] = phase
        _seen.add((kind, phase))


def reset() -> None:
    """Forget all phases (a new operator run in this process re-learns them from the API server)."""
    _phases.clear()
    _seen.clear()


def serve(port: int, addr: str = "0.0.0.0"):
    server, _ = start_http_server(port, addr=addr, registry=REGISTRY)
    return server
