"""`qbert soak`: steady load for a while, sampling resident memory, to show it stays flat.

Memory is read from the service's own `/metrics` (every worker's `qbert_worker_resident_bytes` and
the API process's `process_resident_memory_bytes`), so the soak needs nothing but the URL.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from quantization.loadgen.loadtest import LoadPlan, run_load

RESIDENT_METRICS = ("qbert_worker_resident_bytes", "process_resident_memory_bytes")


def resident_memory(metrics_text: str) -> dict[str, float]:
    """Resident bytes by process: `worker<N>` and `api`."""
    out = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "qbert_worker_resident_bytes":
                out[f"worker{sample.labels['worker']}"] = sample.value
            elif sample.name == "process_resident_memory_bytes":
                out["api"] = sample.value
    return out


def growth(samples: list[dict[str, float]]) -> dict[str, float]:
    """Per process: median of the last third of samples minus median of the first third, in MB."""
    third = max(1, len(samples) // 3)
    keys = set().union(*samples) if samples else set()
    result = {}
    for key in sorted(keys):
        series = [s[key] for s in samples if key in s]
        if series:
            first, last = series[:third], series[-third:]
            result[key] = round((statistics.median(last) - statistics.median(first)) / 1e6, 2)
    return result


async def soak(plan: LoadPlan, payloads: dict[str, list[Any]], duration_s: float, sample_every_s: float) -> dict:
    """Load for `duration_s` in slices of `sample_every_s`, sampling memory after each slice."""
    samples: list[dict[str, float]] = []
    statuses: dict[str, int] = {}
    requests = 0
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=plan.url, timeout=30) as client:
        while time.perf_counter() - started < duration_s:
            result = await run_load(
                LoadPlan(plan.url, plan.mix, plan.concurrency, duration_s=sample_every_s, api_key=plan.api_key),
                payloads,
            )
            for row in result["rows"]:
                requests += row["requests"]
                for status, count in row["statuses"].items():
                    statuses[str(status)] = statuses.get(str(status), 0) + count
            samples.append(resident_memory((await client.get("/metrics")).text))
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "requests": requests,
        "statuses": statuses,
        "samples": samples,
        "growth_mb": growth(samples),
        "resident_mb_last": {k: round(v / 1e6, 1) for k, v in samples[-1].items()} if samples else {},
    }


def run_soak(plan: LoadPlan, payloads: dict[str, list[Any]], duration_s: float, sample_every_s: float) -> dict:
    return asyncio.run(soak(plan, payloads, duration_s, sample_every_s))
