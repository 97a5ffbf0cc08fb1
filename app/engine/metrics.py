"""Prometheus metrics. They live in the API process only: workers send plain stats
(``app.pipeline.types``) and the engine records them here.

Naming: prefix ``mixdiff_``, base units in the name, counters end in ``_total``,
labels of low cardinality only (precision, endpoint, reason, worker index).
Dashboards and alert rules in ``deploy/`` name these metrics; a test checks that
every name they use is exported.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

from app.errors import ERROR_TYPES

# Bounds in seconds, from a tiny model's step and request to an SD-sized model's on a few CPU cores.
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
PHASE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUEST_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Metrics:
    """Every metric mixdiff exports, registered in one registry; ``endpoints`` are the ``endpoint``
    label values, the API families of the app's routes that admit generation requests."""

    def __init__(self, registry: CollectorRegistry | None = None, endpoints: Iterable[str] = ()):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes etc. of the API process
        self.step_seconds = Histogram(
            "mixdiff_denoise_step_seconds",
            "Latency of one denoising step (one UNet call with guidance, plus the scheduler step), by precision.",
            ["precision"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.text_encode_seconds = Histogram(
            "mixdiff_text_encode_seconds", "Latency of encoding the prompts.", buckets=PHASE_BUCKETS, registry=r
        )
        self.vae_decode_seconds = Histogram(
            "mixdiff_vae_decode_seconds", "Latency of decoding latents to images.", buckets=PHASE_BUCKETS, registry=r
        )
        self.queue_wait_seconds = Histogram(
            "mixdiff_queue_wait_seconds",
            "Time a job waited in the queue for a worker.",
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "mixdiff_request_duration_seconds",
            "Time from admission to the response (or job end), by endpoint.",
            ["endpoint"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("mixdiff_queue_depth", "Jobs waiting for a worker.", registry=r)
        self.queue_capacity = Gauge("mixdiff_queue_capacity", "Jobs that may wait before clients get 429.", registry=r)
        self.shared_queue_depth = Gauge(
            "mixdiff_shared_queue_depth",
            "Jobs waiting across every replica sharing a Redis job store: their queues and the jobs handed back "
            "for any replica to take (0 with the memory job store).",
            registry=r,
        )
        self.workers = Gauge("mixdiff_workers", "Worker processes configured.", registry=r)
        self.workers_ready = Gauge("mixdiff_workers_ready", "Worker processes alive and loaded.", registry=r)
        self.workers_busy = Gauge("mixdiff_workers_busy", "Worker processes running a job.", registry=r)
        self.worker_restarts = Counter(
            "mixdiff_worker_restarts_total", "Worker processes restarted after they died.", registry=r
        )
        self.worker_memory_bytes = Gauge(
            "mixdiff_worker_resident_memory_bytes", "Resident memory of each worker process.", ["worker"], registry=r
        )
        self.requests = Counter(
            "mixdiff_requests_total", "Generation requests admitted, by endpoint.", ["endpoint"], registry=r
        )
        self.images = Counter("mixdiff_images_total", "Images generated.", registry=r)
        self.steps = Counter(
            "mixdiff_denoise_steps_total", "Denoising steps run, by precision.", ["precision"], registry=r
        )
        self.failures = Counter(
            "mixdiff_failures_total",
            "Requests that failed, by reason (the error type of the response body).",
            ["reason"],
            registry=r,
        )
        self.model_info = Info("mixdiff_model", "The loaded model and the precisions it offers.", registry=r)
        # Every label value known in advance is exported at zero from the start, so the
        # first request shows as an increase (rate, increase) rather than as a new series.
        for endpoint in endpoints:
            self.requests.labels(endpoint)
            self.request_seconds.labels(endpoint)
        for reason in ERROR_TYPES:
            self.failures.labels(reason)

    def offer_precisions(self, precisions: list[str]) -> None:
        """Export the per-precision step series at zero once the model's precisions are known."""
        for precision in precisions:
            self.step_seconds.labels(precision)
            self.steps.labels(precision)
