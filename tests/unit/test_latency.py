from __future__ import annotations

import pytest

from service.latency import RecentLatencies, percentile


def test_nearest_rank_percentiles() -> None:
    ordered = [float(i) for i in range(1, 101)]
    assert (percentile(ordered, 0.5), percentile(ordered, 0.95), percentile(ordered, 1.0)) == (50.0, 95.0, 100.0)
    assert percentile([7.0], 0.95) == 7.0


def test_the_window_keeps_the_latest_requests_per_key() -> None:
    latencies = RecentLatencies(window=4)
    for seconds in (9.0, 9.0, 0.001, 0.002, 0.003, 0.004):
        latencies.record(("sst2", "w8"), seconds)
    summary = latencies.summary(("sst2", "w8"))
    assert summary is not None
    assert (summary.count, summary.p50_ms, summary.p95_ms) == (4, 2.0, 4.0)
    assert latencies.summary(("sst2", "fp32")) is None


def test_an_empty_window_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        RecentLatencies(window=0)
