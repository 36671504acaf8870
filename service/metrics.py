"""Prometheus metrics: each defined once here, prefixed `qbert_`, with its unit, documentation,
explicit buckets and bounded labels (task, precision, outcome, kind, metric, worker index; never
anything taken from request text)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from quantization.system import cpu_seconds, resident_bytes
from service.protocol import ModelInfo

# Seconds: from sub-millisecond tiny models to multi-second long QA contexts under load.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class WorkerCpuCollector(Collector):
    """`qbert_worker_cpu_seconds_total`: the workers are other processes, so their CPU time is read from the
    operating system at each scrape (`ServiceMetrics.record_workers`), like the API's own `process_cpu_*`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(
            "qbert_worker_cpu_seconds",
            "User + system CPU time of each worker process since it started (all its threads).",
            labels=["worker"],
        )
        for worker, seconds in sorted(self.seconds.items()):
            family.add_metric([worker], seconds)
        yield family


class ServiceMetrics:
    """The service's metrics in their own registry (no process-global state)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes etc. of the API process itself
        per_model = ["task", "precision"]
        self.request_duration = Histogram(
            "qbert_request_duration_seconds",
            "End-to-end request latency inside the service, from routing to response.",
            per_model,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "qbert_queue_duration_seconds",
            "Time an input waited in its (task, precision) queue before its batch left for a worker.",
            per_model,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "qbert_inference_duration_seconds",
            "Worker time for one batch: preprocessing, forward passes and postprocessing.",
            per_model,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "qbert_batch_size",
            "Inputs per batch sent to a worker (dynamic batching coalesces concurrent requests).",
            per_model,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "qbert_requests_total",
            "Requests by outcome (ok or the error code of the response).",
            [*per_model, "outcome"],
            registry=r,
        )
        self.weight_bytes = Gauge(
            "qbert_model_weight_bytes",
            "Weight bytes of a loaded model: packed on disk, or resident at run time.",
            [*per_model, "kind"],
            registry=r,
        )
        self.bits_per_weight = Gauge(
            "qbert_model_bits_per_weight",
            "Average stored bits per encoder weight (32 for fp32).",
            per_model,
            registry=r,
        )
        self.accuracy = Gauge(
            "qbert_model_accuracy",
            "Accuracy recorded in the artifact by `qbert eval`, as a fraction (metric: accuracy, entity_f1, f1...).",
            [*per_model, "metric"],
            registry=r,
        )
        self.load_seconds = Gauge(
            "qbert_model_load_seconds", "Seconds to verify, load and build a model in a worker.", per_model, registry=r
        )
        self.worker_resident_bytes = Gauge(
            "qbert_worker_resident_bytes", "Resident memory of each worker process.", ["worker"], registry=r
        )
        self.worker_cpu = WorkerCpuCollector()
        r.register(self.worker_cpu)
        self.queue_depth = Gauge("qbert_queue_depth", "Inputs waiting in the batching queues.", registry=r)
        self.inflight_inputs = Gauge(
            "qbert_inflight_inputs",
            "Inputs of the requests being answered: queued or in a worker (what an autoscaler scales on).",
            registry=r,
        )
        self.workers_ready = Gauge("qbert_workers_ready", "Worker processes loaded and serving.", registry=r)
        self.workers_configured = Gauge("qbert_workers_configured", "Worker processes configured.", registry=r)
        self.worker_restarts = Counter(
            "qbert_worker_restarts_total", "Worker processes restarted after they died.", registry=r
        )

    def record_models(self, models: Iterable[ModelInfo]) -> None:
        for info in models:
            labels = (info.task, info.precision)
            self.weight_bytes.labels(*labels, "packed").set(info.packed_bytes)
            self.weight_bytes.labels(*labels, "runtime").set(info.runtime_bytes)
            self.bits_per_weight.labels(*labels).set(info.bits_per_weight)
            self.load_seconds.labels(*labels).set(info.load_seconds)
            for row in info.accuracy:
                self.accuracy.labels(*labels, row["metric"]).set(row["value"])

    def record_workers(self, pids: dict[int, int | None]) -> None:
        """Memory and CPU time of each worker; `pids`: worker index -> pid (None while it restarts)."""
        for index, pid in pids.items():
            if not pid:
                continue
            rss, cpu = resident_bytes(pid), cpu_seconds(pid)
            if rss is not None:
                self.worker_resident_bytes.labels(str(index)).set(rss)
            if cpu is not None:
                self.worker_cpu.seconds[str(index)] = cpu

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
