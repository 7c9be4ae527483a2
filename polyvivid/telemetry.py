"""Every Prometheus series the workloads export, in one table: the code that records them takes names
and help from here, and the dashboard and alert tests check their queries against it.

Training (rank 0, prometheus_client on spec.metricsPort) exports the names as they are. Curation and
serving record through Ray's metrics agent, which exports them with a `ray_` prefix (next to Ray's own
`ray_serve_*`). Counters are scraped with `_total`, histograms as `_bucket`, `_sum` and `_count`.
The operator's own series (polyvivid_operator_*) are in operator/polyvivid_operator/metrics.py.
"""

from __future__ import annotations

from dataclasses import dataclass

SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


@dataclass(frozen=True)
class Series:
    name: str  # as declared to the metrics library
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()
    ray: bool = False  # recorded through Ray's metrics agent (exported with a `ray_` prefix)

    def exported(self) -> list[str]:
        """The names a scrape shows."""
        base = f"ray_{self.name}" if self.ray else self.name
        return [base + suffix for suffix in SUFFIXES[self.kind]]


TRAINING = {
    "loss": Series("polyvivid_train_loss", "gauge", "training loss of the last step"),
    "step": Series("polyvivid_train_step", "gauge", "optimizer steps done"),
    "total": Series("polyvivid_train_total_steps", "gauge", "optimizer steps planned"),
    "samples": Series("polyvivid_train_samples_per_second", "gauge", "training throughput"),
    "seconds": Series("polyvivid_train_step_seconds", "gauge", "seconds of the last step"),
    "skipped": Series("polyvivid_train_samples_skipped", "counter", "unreadable samples skipped"),
}
SERVING = {
    "generated": Series("polyvivid_videos_generated", "counter", "videos generated successfully", ray=True),
    "seconds": Series("polyvivid_generation_seconds", "histogram",
                      "seconds from start of generation to stored video", ray=True),
    "inflight": Series("polyvivid_jobs_inflight", "gauge", "accepted jobs not yet finished", ray=True),
    "rejections": Series("polyvivid_request_rejections", "counter", "requests refused, by reason", ("reason",),
                         ray=True),
}
CURATION = {
    "rows": Series("polyvivid_curate_rows", "counter", "rows leaving a curation stage, by result",
                   ("stage", "result"), ray=True),
    "seconds": Series("polyvivid_curate_stage_seconds", "histogram", "seconds a row spends in a stage", ("stage",),
                      ray=True),
}


def exported_names() -> set[str]:
    return {name for table in (TRAINING, SERVING, CURATION) for series in table.values()
            for name in series.exported()}
