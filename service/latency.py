"""Each model's recent request latencies, summarized as percentiles for `/models` (the playground's charts).

Prometheus's histogram keeps every request in fixed buckets, which is right for dashboards but gives only bucket
bounds for a percentile; a bounded window of recent requests per model gives the figure a person reads directly.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LatencySummary:
    p50_ms: float
    p95_ms: float
    count: int  # requests in the window the percentiles come from


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending, non-empty list."""
    rank = max(1, math.ceil(len(ordered) * fraction))
    return ordered[rank - 1]


@dataclass
class RecentLatencies:
    """The last `window` successful requests' seconds per key."""

    window: int = 1024
    _seconds: dict[Hashable, deque[float]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be at least 1, got {self.window}")

    def record(self, key: Hashable, seconds: float) -> None:
        self._seconds.setdefault(key, deque(maxlen=self.window)).append(seconds)

    def summary(self, key: Hashable) -> LatencySummary | None:
        recent = self._seconds.get(key)
        if not recent:
            return None
        ordered = sorted(recent)
        return LatencySummary(percentile(ordered, 0.50) * 1000, percentile(ordered, 0.95) * 1000, len(ordered))
