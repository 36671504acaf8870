"""`qbert loadtest`: closed-loop HTTP load (httpx, asyncio) over a mix of tasks and precisions.

Each of `concurrency` clients sends a request, waits for the answer, and sends the next, cycling
through the mix and through real inputs of each task (the catalog's evaluation files where present,
else a few built-in samples). `raw_throughput` measures the same model in process, without HTTP,
batching or queues, so the two can be compared in one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import json
import logging
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger("qbert.loadtest")

JSON_CONTENT = {"content-type": "application/json"}


@functools.cache  # request bodies are made per payload: the catalog is read once per name, not per body
def task_named(name: str) -> Any:
    """The task a served model's name stands for: a built-in one, or a catalog model's (the user's own too)."""
    from quantization.catalog import load_catalog
    from quantization.tasks import TASKS

    if name in TASKS:
        return TASKS[name]
    try:
        return load_catalog().task(name).make_task()
    except (OSError, ValueError):
        raise ValueError(f"unknown model {name!r}; known: {known_names()}") from None


def known_names() -> list[str]:
    from quantization.catalog import load_catalog
    from quantization.tasks import TASKS

    try:
        return sorted(set(TASKS) | set(load_catalog().tasks))
    except OSError:
        return sorted(TASKS)


def sample_payloads(task: str, limit: int = 256) -> list[Any]:
    """Up to `limit` real inputs of `task` from the catalog's evaluation file, else the task's built-in samples."""
    from quantization.catalog import load_catalog

    kind = task_named(task)
    try:
        entry = load_catalog().task(task)
        if entry.data is None:
            return list(kind.samples)
        examples = kind.read_examples(entry.data, **entry.read_options())[:limit]
    except (OSError, ValueError) as exc:
        logger.warning("%s: using built-in samples (%s)", task, exc)
        return list(kind.samples)
    return [kind.payload_of(ex.input) for ex in examples]


def built_in_samples(task: str) -> list[Any]:
    """The task's own sample payloads (no data files needed)."""
    return list(task_named(task).samples)


def request_body(task: str, payload: Any) -> dict[str, Any]:
    return dict(task_named(task).request_body(payload))


def _route(task: str) -> str:
    return str(task_named(task).route)


def _accepts_batches(task: str) -> bool:
    return bool(task_named(task).accepts_batches)


def _batching_tasks() -> list[str]:
    return [name for name in known_names() if _accepts_batches(name)]


def request_bodies(task: str, payloads: Sequence[Any], texts_per_request: int = 1) -> list[bytes]:
    """Encoded request bodies over `payloads`: one input each, or `{"texts": [...]}` of `texts_per_request`."""
    if texts_per_request == 1:
        return [json.dumps(request_body(task, p)).encode() for p in payloads]
    if not _accepts_batches(task):
        raise ValueError(f"{task} takes one input per request; texts per request apply to {_batching_tasks()}")
    cycled = list(itertools.islice(itertools.cycle(payloads), max(len(payloads), texts_per_request)))
    return [
        json.dumps({"texts": cycled[i : i + texts_per_request]}).encode()
        for i in range(0, len(cycled) - texts_per_request + 1, texts_per_request)
    ]


@dataclass
class KeyStats:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)

    def summary(self, seconds: float, inputs_per_request: int = 1) -> dict[str, Any]:
        ok = self.statuses.get(200, 0)
        row: dict[str, Any] = {"requests": sum(self.statuses.values()), "ok": ok, "statuses": dict(self.statuses)}
        row["throughput_rps"] = round(ok / seconds, 2) if seconds > 0 else 0.0
        row["throughput_ips"] = round(ok * inputs_per_request / seconds, 2) if seconds > 0 else 0.0
        if self.latencies_ms:
            q = percentiles(self.latencies_ms)
            row |= {
                "p50_ms": q[50],
                "p95_ms": q[95],
                "p99_ms": q[99],
                "mean_ms": round(statistics.fmean(self.latencies_ms), 2),
            }
        return row


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[int, float]:
    """Nearest-rank percentiles, rounded to 0.01."""
    ordered = sorted(values)
    return {p: round(ordered[min(len(ordered) - 1, max(0, -(-p * len(ordered) // 100) - 1))], 2) for p in points}


@dataclass(frozen=True)
class LoadPlan:
    url: str
    mix: tuple[tuple[str, str], ...]  # (task, precision), cycled
    concurrency: int
    duration_s: float | None = None
    requests: int | None = None
    warmup: int = 0
    api_key: str | None = None
    timeout_s: float = 60.0
    texts_per_request: int = 1  # > 1: bulk requests, {"texts": [...]} (models whose kind takes batches: not QA)

    def __post_init__(self) -> None:
        if (self.duration_s is None) == (self.requests is None):
            raise ValueError("give exactly one of duration_s or requests")
        if self.concurrency < 1 or not self.mix:
            raise ValueError("concurrency must be >= 1 and the mix non-empty")
        known = known_names()
        unknown = [task for task, _ in self.mix if task not in known]
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; known: {known}")
        if self.texts_per_request < 1:
            raise ValueError(f"texts_per_request must be >= 1, got {self.texts_per_request}")
        single = sorted({task for task, _ in self.mix if not _accepts_batches(task)})
        if self.texts_per_request > 1 and single:
            raise ValueError(f"{single} take one input per request; texts_per_request applies to {_batching_tasks()}")


async def service_cpu_seconds(client: httpx.AsyncClient) -> dict[str, float] | None:
    """CPU seconds used so far by the API process and by its workers, from the server's /metrics (None if absent)."""
    try:
        response = await client.get("/metrics")
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    totals = {"api": 0.0, "workers": 0.0}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "process_cpu_seconds_total":
                totals["api"] += sample.value
            elif sample.name == "qbert_worker_cpu_seconds_total":
                totals["workers"] += sample.value
    return totals


def cpu_per_request(
    before: dict[str, float] | None, after: dict[str, float] | None, requests: int, inputs_per_request: int = 1
) -> dict[str, Any]:
    """The service's CPU milliseconds per request (and per input) over a run: API process, workers, both.

    Empty if unmeasured.
    """
    if before is None or after is None or requests == 0:
        return {}
    api, workers = after["api"] - before["api"], after["workers"] - before["workers"]
    return {
        "api_cpu_s": round(api, 2),
        "workers_cpu_s": round(workers, 2),
        "service_cpu_ms_per_request": round((api + workers) * 1000 / requests, 3),
        "api_cpu_ms_per_request": round(api * 1000 / requests, 3),
        "service_cpu_ms_per_input": round((api + workers) * 1000 / (requests * inputs_per_request), 3),
    }


async def run_load(plan: LoadPlan, payloads: dict[str, list[Any]]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {plan.api_key}"} if plan.api_key else {}
    # One client, with one keep-alive connection, per simulated user: httpcore's pool scans all of its
    # connections for every request, which made a shared 16-connection pool cost the load generator ~0.3 ms of
    # CPU per request, time the closed loop then waited for its next arrival.
    one_connection = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    stats: dict[tuple[str, str], KeyStats] = defaultdict(KeyStats)
    jobs = itertools.cycle([(task, precision, f"{_route(task)}?precision={precision}") for task, precision in plan.mix])
    # Bodies encoded once, for the same reason.
    bodies = {
        task: itertools.cycle(request_bodies(task, items, plan.texts_per_request)) for task, items in payloads.items()
    }
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=plan.url, headers=headers, limits=one_connection, timeout=plan.timeout_s)
            )
            for _ in range(plan.concurrency)
        ]

        async def one(client: httpx.AsyncClient, record: bool) -> None:
            task, precision, url = next(jobs)
            body = next(bodies[task])
            started = time.perf_counter()
            status: int | str
            try:
                response = await client.post(url, content=body, headers=JSON_CONTENT)
                status = response.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            if record:
                key_stats = stats[(task, precision)]
                key_stats.statuses[status] += 1
                if status == 200:
                    key_stats.latencies_ms.append((time.perf_counter() - started) * 1000)

        for _ in range(plan.warmup):
            await one(clients[0], record=False)
        cpu_before = await service_cpu_seconds(clients[0])
        sent = itertools.count()
        started, cpu_started = time.perf_counter(), time.process_time()
        stop_at = started + plan.duration_s if plan.duration_s is not None else None

        async def client_loop(client: httpx.AsyncClient) -> None:
            while True:
                if stop_at is not None and time.perf_counter() >= stop_at:
                    return
                if plan.requests is not None and next(sent) >= plan.requests:
                    return
                await one(client, record=True)

        await asyncio.gather(*(client_loop(client) for client in clients))
        elapsed = time.perf_counter() - started
        client_cpu_s = time.process_time() - cpu_started
        cpu_after = await service_cpu_seconds(clients[0])
    rows = [
        {
            "task": task,
            "precision": precision,
            "concurrency": plan.concurrency,
            "texts_per_request": plan.texts_per_request,
            **s.summary(elapsed, plan.texts_per_request),
        }
        for (task, precision), s in sorted(stats.items())
    ]
    total_ok = sum(r["ok"] for r in rows)
    total = sum(r["requests"] for r in rows)
    return {
        "url": plan.url,
        "seconds": round(elapsed, 2),
        "texts_per_request": plan.texts_per_request,
        "throughput_rps": round(total_ok / elapsed, 2),
        "throughput_ips": round(total_ok * plan.texts_per_request / elapsed, 2),
        # The load generator's own CPU: on a small machine it competes with the server it measures.
        "client_cpu_s": round(client_cpu_s, 2),
        "client_cpu_ms_per_request": round(client_cpu_s * 1000 / total, 3) if total else None,
        # The server's CPU, wherever its load comes from: what serving costs beside the model (see raw).
        **cpu_per_request(cpu_before, cpu_after, total, plan.texts_per_request),
        "rows": rows,
    }


def raw_throughput(
    artifact: Path, payloads: list[Any], batch_size: int, seconds: float, backend: str = "eager"
) -> dict[str, Any]:
    """Inputs per second of the bare model (prepare, forward, finish) in this process at `batch_size`.

    `backend` should be the server's, so that served and raw run the same kernels.
    """
    from quantization.evaluate import predict
    from quantization.runtime import load_model, warm_up
    from quantization.tasks import task_from_spec

    loaded = warm_up(load_model(artifact, backend))
    task = task_from_spec(loaded.task, loaded.task_spec)
    inputs = [task.input_from_payload(p) for p in payloads]
    inputs = inputs * -(-batch_size // len(inputs))  # at least one full batch
    batches = itertools.cycle([inputs[i : i + batch_size] for i in range(0, len(inputs) - batch_size + 1, batch_size)])
    predict(loaded, task, next(batches), batch_size)  # warm up
    gc.freeze()  # as the workers do once loaded: no full collection walks the model in the timed loop
    try:
        done, started, cpu_started = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds:
            batch = next(batches)
            predict(loaded, task, batch, batch_size)
            done += len(batch)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        gc.unfreeze()
    return {
        "task": task.name,
        "precision": loaded.precision,
        "batch": batch_size,
        "backend": loaded.backend,
        "throughput_ips": round(done / elapsed, 2),
        "cpu_ms_per_input": round(cpu * 1000 / done, 3),
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        "| task | precision | concurrency | texts/request | requests | ok | p50 ms | p95 ms | p99 ms "
        "| requests/s | inputs/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['task']} | {r['precision']} | {r['concurrency']} | {r['texts_per_request']} | {r['requests']} | "
            f"{r['ok']} | {r.get('p50_ms', '-')} | {r.get('p95_ms', '-')} | {r.get('p99_ms', '-')} | "
            f"{r['throughput_rps']} | {r['throughput_ips']} |"
        )
    return "\n".join(lines)


def compared_with_raw(result: dict[str, Any], raw: list[dict[str, Any]], raw_cpus: Any = None) -> dict[str, Any]:
    """A load's `result` with the bare models' readings beside it, and (one model) served over raw throughput and
    CPU per answer (the load generator's own CPU aside)."""
    if not raw:
        return result
    result = {**result, "raw": raw}
    if raw_cpus:
        result["raw_cpus"] = sorted(raw_cpus)
    if len(raw) == 1:
        result["served_vs_raw"] = round(result["throughput_ips"] / raw[0]["throughput_ips"], 3)
        if "service_cpu_ms_per_input" in result:
            result["served_cpu_vs_raw"] = round(result["service_cpu_ms_per_input"] / raw[0]["cpu_ms_per_input"], 3)
    return result
