"""The collate step of dynamic batching, on plain deques with explicit times."""

import math
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.batching import ArrivalGaps, Decision, Queued, collate, even_sizes, oldest_first


def _queue(*times: float) -> deque:
    return deque(Queued(f"x{i}", t) for i, t in enumerate(times))


def _items(decision: Decision) -> list[list[str]]:
    return [[q.item for q in batch] for batch in decision.batches]


def test_empty_queue_waits_for_an_arrival() -> None:
    assert collate(deque(), 4, 0.005, now=1.0) == Decision(batches=[], wait_s=None)


def test_young_partial_batch_waits_for_the_rest_of_the_window() -> None:
    queue = _queue(1.000, 1.001)
    decision = collate(queue, max_batch_size=4, max_wait_s=0.005, now=1.002)
    assert decision.batches == []
    assert decision.wait_s == pytest.approx(0.003)
    assert len(queue) == 2  # nothing taken


def test_partial_batch_leaves_once_the_oldest_input_waited_max_wait() -> None:
    queue = _queue(1.000, 1.004)
    decision = collate(queue, max_batch_size=4, max_wait_s=0.005, now=1.006)
    assert _items(decision) == [["x0", "x1"]]
    assert not queue


def test_full_batch_leaves_at_once_and_the_rest_stays_in_order() -> None:
    queue = _queue(*[1.0] * 6)
    decision = collate(queue, max_batch_size=4, max_wait_s=10.0, now=1.0)
    assert _items(decision) == [["x0", "x1", "x2", "x3"]]
    assert [q.item for q in queue] == ["x4", "x5"]


def test_zero_wait_sends_whatever_is_queued() -> None:
    assert _items(collate(_queue(5.0), 16, 0.0, now=5.0)) == [["x0"]]


def test_no_wait_when_the_next_arrival_is_not_expected_within_the_window() -> None:
    queue = _queue(1.000)
    lone = collate(queue, max_batch_size=16, max_wait_s=0.005, now=1.001, expected_gap_s=0.020)
    assert _items(lone) == [["x0"]]  # a lone client pays no batching delay
    queue = _queue(1.000)
    burst = collate(queue, max_batch_size=16, max_wait_s=0.005, now=1.001, expected_gap_s=0.0005)
    assert burst.batches == []
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


def test_a_burst_is_shared_evenly_between_free_workers_oldest_first() -> None:
    queue = _queue(*[1.0] * 16)
    decision = collate(queue, max_batch_size=16, max_wait_s=0.002, now=1.0, free_workers=2)
    assert _items(decision) == [[f"x{i}" for i in range(8)], [f"x{i}" for i in range(8, 16)]]
    three = collate(_queue(1.0, 1.0, 1.0), max_batch_size=16, max_wait_s=0.002, now=1.01, free_workers=2)
    assert _items(three) == [["x0", "x1"], ["x2"]]


def test_free_workers_take_a_full_batch_each_and_the_rest_waits() -> None:
    queue = _queue(*[1.0] * 40)
    decision = collate(queue, max_batch_size=16, max_wait_s=0.002, now=1.0, free_workers=2)
    assert [len(batch) for batch in decision.batches] == [16, 16]
    assert len(queue) == 8
    young = collate(_queue(1.0, 1.0), max_batch_size=16, max_wait_s=0.002, now=1.0, free_workers=3)
    assert young.batches == [], "a partial batch still waits for its window, however many workers are free"


def test_even_sizes() -> None:
    assert even_sizes(16, 2) == [8, 8]
    assert even_sizes(17, 3) == [6, 6, 5]
    assert even_sizes(1, 3) == [1]
    assert even_sizes(0, 2) == []


def test_batch_size_and_free_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        collate(_queue(0.0), 0, 0.005, now=1.0)
    with pytest.raises(ValueError, match="free_workers"):
        collate(_queue(0.0), 4, 0.005, now=1.0, free_workers=0)


def test_oldest_first_orders_the_non_empty_queues_by_their_longest_waiting_head() -> None:
    queues = {("sst2", "w8"): _queue(2.0, 2.1), ("qa", "fp32"): _queue(1.5), ("ner", "w8"): deque()}
    assert [key for key, _ in oldest_first(queues)] == [("qa", "fp32"), ("sst2", "w8")]
    ties = {"a": _queue(1.0), "b": _queue(1.0)}
    assert [key for key, _ in oldest_first(ties)] == ["a", "b"]
    assert oldest_first({"a": deque()}) == []


@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=0.01), min_size=1, max_size=60),
    max_batch_size=st.integers(min_value=1, max_value=17),
    max_wait_s=st.floats(min_value=0.0, max_value=0.02),
    free_workers=st.integers(min_value=1, max_value=3),
)
def test_batches_are_bounded_fifo_and_lose_nothing(
    gaps: list[float], max_batch_size: int, max_wait_s: float, free_workers: int
) -> None:
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
        decision = collate(queue, max_batch_size, max_wait_s, now, free_workers=free_workers)
        if decision.batches:
            sizes = [len(batch) for batch in decision.batches]
            assert len(sizes) <= free_workers
            assert max(sizes) <= max_batch_size
            assert max(sizes) - min(sizes) <= 1
            # no input waited past the window plus the arrival that revealed it was due
            assert now - decision.batches[0][0].enqueued_at <= max_wait_s + max(gaps) + 1e-9
            batches.extend([q.item for q in batch] for batch in decision.batches)
            continue
        upcoming = arrivals[next_arrival] if next_arrival < len(arrivals) else float("inf")
        due = now + decision.wait_s if decision.wait_s is not None else upcoming
        now = max(min(upcoming, due), math.nextafter(now, math.inf))  # time always moves forward
    assert [i for batch in batches for i in batch] == list(range(len(arrivals)))
