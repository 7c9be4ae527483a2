"""The operator's Prometheus metrics, served on :8080/metrics (POLYVIVID_METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()
RECONCILES = Counter("polyvivid_operator_reconciles", "reconciles by kind and result (success, invalid, error)",
                     ["kind", "result"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("polyvivid_operator_reconcile_seconds", "seconds per reconcile", ["kind"],
                              buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY)
RESOURCES = Gauge("polyvivid_operator_resources", "resources by kind and phase", ["kind", "phase"], registry=REGISTRY)

_phases: dict[tuple[str, str, str], str] = {}  # (kind, namespace, name) -> phase


def set_phase(kind: str, namespace: str, name: str, phase: str | None) -> None:
    """Record a resource's phase (None: it is gone) and recount the gauge of its kind."""
    if phase is None:
        _phases.pop((kind, namespace, name), None)
    else:
        _phases[(kind, namespace, name)] = phase
    counts: dict[str, int] = {}
    for (k, _, _), p in _phases.items():
        if k == kind:
            counts[p] = counts.get(p, 0) + 1
    for labels in list(RESOURCES._metrics):  # phases with no resource left go to 0
        if labels[0] == kind:
            RESOURCES.labels(*labels).set(0)
    for p, n in counts.items():
        RESOURCES.labels(kind, p).set(n)


def reset() -> None:
    """Forget all phases (a new operator run in this process re-learns them from the API server)."""
    _phases.clear()
    RESOURCES.clear()


def serve(port: int, addr: str = "0.0.0.0"):
    server, thread = start_http_server(port, addr=addr, registry=REGISTRY)
    return server
