"""The collate step of dynamic batching, on plain deques with explicit times."""

import math
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.batching import ArrivalGaps, Decision, Queued, collate, oldest_queue


def _queue(*times: float) -> deque:
    return deque(Queued(f"x{i}", t) for i, t in enumerate(times))


def test_empty_queue_waits_for_an_arrival() -> None:
    assert collate(deque(), 4, 0.005, now=1.0) == Decision(batch=[], wait_s=None)


def test_young_partial_batch_waits_for_the_rest_of_the_window() -> None:
    queue = _queue(1.000, 1.001)
    decision = collate(queue, max_batch_size=4, max_wait_s=0.005, now=1.002)
    assert decision.batch == []
    assert decision.wait_s == pytest.approx(0.003)
    assert len(queue) == 2  # nothing taken


def test_partial_batch_leaves_once_the_oldest_input_waited_max_wait() -> None:
    queue = _queue(1.000, 1.004)
    decision = collate(queue, max_batch_size=4, max_wait_s=0.005, now=1.006)
    assert [q.item for q in decision.batch] == ["x0", "x1"]
    assert not queue


def test_full_batch_leaves_at_once_and_the_rest_stays_in_order() -> None:
    queue = _queue(*[1.0] * 6)
    decision = collate(queue, max_batch_size=4, max_wait_s=10.0, now=1.0)
    assert [q.item for q in decision.batch] == ["x0", "x1", "x2", "x3"]
    assert [q.item for q in queue] == ["x4", "x5"]


def test_zero_wait_sends_whatever_is_queued() -> None:
    assert len(collate(_queue(5.0), 16, 0.0, now=5.0).batch) == 1


def test_no_wait_when_the_next_arrival_is_not_expected_within_the_window() -> None:
    queue = _queue(1.000)
    lone = collate(queue, max_batch_size=16, max_wait_s=0.005, now=1.001, expected_gap_s=0.020)
    assert len(lone.batch) == 1  # a lone client pays no batching delay
    queue = _queue(1.000)
    burst = collate(queue, max_batch_size=16, max_wait_s=0.005, now=1.001, expected_gap_s=0.0005)
    assert burst.batch == []
    assert burst.wait_s == pytest.approx(0.004)


def test_arrival_gaps_median_ignores_the_pause_between_bursts() -> None:
    gaps = ArrivalGaps(window=32)
    assert gaps.expected_gap() == float("inf")
    t = 0.0
    for _burst in range(4):
        for _ in range(8):
            gaps.arrived(t)
            t += 0.0005
        t += 0.050  # the batch runs; clients wait for their answers
    assert gaps.expected_gap() == pytest.approx(0.0005)
    lone = ArrivalGaps()
    for i in range(5):
        lone.arrived(i * 0.015)
    assert lone.expected_gap() == pytest.approx(0.015)
    many = ArrivalGaps()
    many.arrived(1.0, count=4)  # one request with four texts
    assert many.expected_gap() == 0.0


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        collate(_queue(0.0), 0, 0.005, now=1.0)


def test_oldest_queue_picks_the_longest_waiting_head() -> None:
    queues = {("sst2", "w8"): _queue(2.0, 2.1), ("qa", "fp32"): _queue(1.5), ("ner", "w8"): deque()}
    assert oldest_queue(queues) == ("qa", "fp32")
    assert oldest_queue({"a": deque()}) is None


@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=0.01), min_size=1, max_size=60),
    max_batch_size=st.integers(min_value=1, max_value=17),
    max_wait_s=st.floats(min_value=0.0, max_value=0.02),
)
def test_batches_are_bounded_fifo_and_lose_nothing(gaps: list[float], max_batch_size: int, max_wait_s: float) -> None:
    """Drive collate like the dispatcher does: arrivals over time, asking again after each wait."""
    arrivals, now = [], 0.0
    for gap in gaps:
        now += gap
        arrivals.append(now)
    queue: deque = deque()
    batches, now, next_arrival = [], 0.0, 0
    while next_arrival < len(arrivals) or queue:
        while next_arrival < len(arrivals) and arrivals[next_arrival] <= now:
            queue.append(Queued(next_arrival, arrivals[next_arrival]))
            next_arrival += 1
        decision = collate(queue, max_batch_size, max_wait_s, now)
        if decision.batch:
            assert len(decision.batch) <= max_batch_size
            # no input waited past the window plus the arrival that revealed it was due
            assert now - decision.batch[0].enqueued_at <= max_wait_s + max(gaps) + 1e-9
            batches.append([q.item for q in decision.batch])
            continue
        upcoming = arrivals[next_arrival] if next_arrival < len(arrivals) else float("inf")
        due = now + decision.wait_s if decision.wait_s is not None else upcoming
        now = max(min(upcoming, due), math.nextafter(now, math.inf))  # time always moves forward
    assert [i for batch in batches for i in batch] == list(range(len(arrivals)))
