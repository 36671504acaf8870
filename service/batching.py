"""Dynamic batching, as pure functions over plain queues (no clock, no threads, no event loop).

The pool keeps one FIFO queue per (task, precision). `collate` decides, from the queue and the
current time alone, whether a batch leaves now (the queue holds `max_batch_size` inputs, or its
oldest input has waited `max_wait_s`) or how long to wait before asking again; what leaves is shared
between the free workers.

Waiting only pays when batch-mates are coming: `collate` also takes the expected gap to the next
arrival (`ArrivalGaps`: the median of recent inter-arrival gaps of the queue), and sends a partial
batch at once when the next input is not expected before the window closes. A lone client then
pays no batching delay, while bursts of concurrent requests still coalesce.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


@dataclass
class Queued(Generic[T]):
    """An input waiting in a queue since `enqueued_at` (any monotonic clock, in seconds)."""

    item: T
    enqueued_at: float


@dataclass(frozen=True)
class Decision(Generic[T]):
    """Batches to run now (one per free worker at most), or the seconds to wait before the next decision.

    `wait_s` is None when nothing is queued.
    """

    batches: list[list[Queued[T]]] = field(default_factory=list)
    wait_s: float | None = None


def even_sizes(count: int, parts: int) -> list[int]:
    """`count` split into at most `parts` sizes that differ by one at most, largest first (no zero sizes)."""
    parts = min(parts, count)
    return [count // parts + (i < count % parts) for i in range(parts)] if parts else []


def collate(
    queue: deque[Queued[T]],
    max_batch_size: int,
    max_wait_s: float,
    now: float,
    expected_gap_s: float = 0.0,
    free_workers: int = 1,
) -> Decision[T]:
    """Pop batches off the front of `queue` if they are due at time `now`.

    Due means the queue holds a full batch, or its oldest input has waited at least `max_wait_s`,
    or the next arrival (`expected_gap_s` after now) would come after the window closes. Then what is
    queued leaves, up to `max_batch_size` per free worker, shared evenly between the `free_workers`: a
    burst of 16 with two workers free runs as 8 and 8 at once, not 16 on one while the other idles.
    Order is kept: first in, first out, the oldest inputs in the first batch.
    """
    if max_batch_size < 1 or free_workers < 1:
        raise ValueError(f"max_batch_size and free_workers must be >= 1, got {max_batch_size}, {free_workers}")
    if not queue:
        return Decision()
    waited = now - queue[0].enqueued_at
    if len(queue) >= max_batch_size or waited + expected_gap_s >= max_wait_s:
        take = min(len(queue), max_batch_size * free_workers)
        return Decision(batches=[[queue.popleft() for _ in range(size)] for size in even_sizes(take, free_workers)])
    return Decision(wait_s=max_wait_s - waited)


def oldest_first(queues: Mapping[K, deque[Queued[T]]]) -> list[tuple[K, deque[Queued[T]]]]:
    """The non-empty queues, the one whose front input has waited longest first (ties in mapping order)."""
    return sorted(((key, q) for key, q in queues.items() if q), key=lambda kq: kq[1][0].enqueued_at)


class ArrivalGaps:
    """The median of the last `window` gaps between arrivals: robust to the long pause between bursts."""

    def __init__(self, window: int = 32) -> None:
        self._gaps: deque[float] = deque(maxlen=window)
        self._last: float | None = None

    def arrived(self, at: float, count: int = 1) -> None:
        """`count` inputs arrived together at `at` (one request with several texts: gaps of zero)."""
        if self._last is not None:
            self._gaps.append(max(0.0, at - self._last))
        self._gaps.extend([0.0] * (count - 1))
        self._last = at

    def expected_gap(self) -> float:
        """Seconds to the next arrival, by the median recent gap (infinite before two arrivals)."""
        if not self._gaps:
            return float("inf")
        ordered = sorted(self._gaps)
        return ordered[len(ordered) // 2]
