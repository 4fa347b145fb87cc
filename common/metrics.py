"""The pipeline's own metrics, recorded through Temporal's metric meter.

A worker process has one Prometheus endpoint (AE_METRICS_PORT): the Temporal SDK's
Runtime serves its own metrics (task slots, schedule-to-start latency, activity and
workflow failures, ...) and these beside them. Workflows record through
`workflow.metric_meter()` (nothing is recorded while a history replays), activities
through `activity.metric_meter()`. Imported by workflows: keep it free of heavy imports.

| metric | kind | labels | where |
|---|---|---|---|
| `ae_stage_duration_seconds` | histogram | stage | AnalyzeSample, as each stage ends |
| `ae_analyses_total` | counter | outcome (success, failure, revoked) | AnalyzeSample, at its end |
| `ae_analysis_failures_total` | counter | stage, type | AnalyzeSample, a failed run |
| `ae_lifts_total` | counter | cached (true, false) | lift_binary |
| `ae_functions_lifted_total` | counter | | lift_binary, functions angr recovered |
| `ae_lift_child_peak_rss_bytes` | histogram | | lift_binary, the angr child's peak RSS |
| `ae_functions_judged_total` | counter | | embed_compare, functions large enough to judge |
| `ae_verdicts_total` | counter | family (`unknown` too) | embed_compare |
| `ae_samples_in_flight` | gauge | | orchestration worker, running AnalyzeSample runs |
| `ae_batch_samples_total` | counter | outcome | ReanalysisBatch, each member recorded |
"""

from __future__ import annotations

from temporalio.common import MetricMeter

STAGE_DURATION = "ae_stage_duration_seconds"
ANALYSES = "ae_analyses_total"
ANALYSIS_FAILURES = "ae_analysis_failures_total"
LIFTS = "ae_lifts_total"
FUNCTIONS_LIFTED = "ae_functions_lifted_total"
LIFT_PEAK_RSS = "ae_lift_child_peak_rss_bytes"
FUNCTIONS_JUDGED = "ae_functions_judged_total"
VERDICTS = "ae_verdicts_total"
SAMPLES_IN_FLIGHT = "ae_samples_in_flight"
BATCH_SAMPLES = "ae_batch_samples_total"

# Histogram buckets (Prometheus' le), set on the worker's Runtime.
BUCKETS: dict[str, list[float]] = {
    STAGE_DURATION: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600],
    LIFT_PEAK_RSS: [float(mib << 20) for mib in (64, 128, 256, 512, 1024, 2048, 4096, 8192)],
}


def count(meter: MetricMeter, name: str, value: int = 1, description: str = "",
          **labels: str) -> None:
    if value > 0:
        meter.create_counter(name, description).add(value, labels or None)


def observe(meter: MetricMeter, name: str, value: float, unit: str = "",
            description: str = "", **labels: str) -> None:
    meter.create_histogram_float(name, description, unit).record(value, labels or None)


def set_gauge(meter: MetricMeter, name: str, value: float, description: str = "") -> None:
    meter.create_gauge_float(name, description).set(value)
