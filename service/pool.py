"""The worker pool: spawned processes, per-(task, precision) batching queues, and dead-worker recovery.

All pool state lives on the event loop thread, which also reads the workers' pipes (each message, or EOF when
a worker dies, is handled as it arrives); the dispatcher sends due batches
(`service.batching.collate`) to idle workers. A worker that dies fails its in-flight inputs with
`WorkerLostError` (503; not retried, because a request that killed one worker could kill the next) and is
restarted with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from service.batching import ArrivalGaps, Queued, collate, oldest_first
from service.errors import DeadlineExceededError, NotReadyError, OverloadedError, ShuttingDownError, WorkerLostError
from service.metrics import ServiceMetrics
from service.protocol import (
    MODEL_STATES,
    ArtifactRef,
    BatchDone,
    ItemResult,
    ModelInfo,
    RunBatch,
    WorkerFailed,
    WorkerProgress,
    WorkerReady,
    WorkerSpec,
)
from service.settings import ServiceSettings
from service.worker import worker_main

logger = logging.getLogger("qbert.pool")

Key = tuple[str, str]  # (task, precision)
MAX_RESTART_DELAY_S = 30.0


@dataclass
class Pending:
    key: Key
    payload: Any
    future: asyncio.Future[ItemResult]


@dataclass
class InFlight:
    batch_id: int
    key: Key
    items: list[Queued[Pending]]


@dataclass
class WorkerSlot:
    """One worker position; its process is replaced (a new generation) when it dies."""

    index: int
    generation: int = 0
    process: BaseProcess | None = None
    inbox: Connection | None = None
    pid: int | None = None
    ready: bool = False
    in_flight: InFlight | None = None
    restarts: int = 0
    failures_in_a_row: int = 0
    started_at: float = field(default_factory=time.monotonic)
    progressed_at: float = field(default_factory=time.monotonic)  # its last setup step (start timeout runs from it)
    progress: WorkerProgress | None = None
    model_states: dict[Key, str] = field(default_factory=dict)  # this generation's step per model


class WorkerPool:
    def __init__(self, settings: ServiceSettings, artifacts: list[ArtifactRef], metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.artifacts = artifacts
        self.metrics = metrics
        self.models: dict[Key, ModelInfo] = {}
        self.refused: dict[Key, str] = {}
        self._queues: dict[Key, deque[Queued[Pending]]] = {(a.task, a.precision): deque() for a in artifacts}
        self._arrivals: dict[Key, ArrivalGaps] = {key: ArrivalGaps() for key in self._queues}
        self._slots = [WorkerSlot(i) for i in range(settings.workers)]
        self._batch_ids = itertools.count()
        self._context = multiprocessing.get_context("spawn")
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatcher: asyncio.Task | None = None
        self._closing = False
        metrics.workers_configured.set(settings.workers)
        metrics.workers_ready.set(0)

    # ----- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for slot in self._slots:
            self._spawn(slot)
        self._dispatcher = asyncio.create_task(self._dispatch_forever(), name="qbert-dispatcher")

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop taking requests, let queued and in-flight inputs finish (up to `grace_s`), stop workers."""
        self._closing = True
        deadline = time.monotonic() + grace_s
        while (self.queued() or any(s.in_flight for s in self._slots)) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._dispatcher:
            self._dispatcher.cancel()
        for queue in self._queues.values():
            for queued in queue:
                _fail(queued.item, ShuttingDownError("the service is shutting down"))
            queue.clear()
        await asyncio.gather(*(asyncio.to_thread(self._stop_process, slot) for slot in self._slots))

    def _spawn(self, slot: WorkerSlot) -> None:
        if self._closing:
            return
        slot.generation += 1
        slot.ready, slot.in_flight, slot.pid, slot.progress = False, None, None, None
        slot.model_states = {}
        slot.started_at = slot.progressed_at = time.monotonic()
        parent_inbox, child_inbox = self._context.Pipe(duplex=False)  # (reader, writer)
        child_outbox_reader, child_outbox = self._context.Pipe(duplex=False)
        spec = WorkerSpec(
            index=slot.index,
            threads=self.settings.threads_per_worker,
            artifacts=tuple(self.artifacts),
            max_tokens=self.settings.max_tokens,
            max_batch_size=self.settings.max_batch_size,
            backend=self.settings.backend,
        )
        process = self._context.Process(
            target=worker_main, args=(spec, parent_inbox, child_outbox), name=f"qbert-worker-{slot.index}", daemon=True
        )
        process.start()
        parent_inbox.close()  # the child's ends: closing ours lets EOF tell us when the child dies
        child_outbox.close()
        slot.process, slot.inbox, slot.pid = process, child_inbox, process.pid
        assert self._loop is not None
        self._loop.add_reader(
            child_outbox_reader.fileno(), self._read_worker, slot.index, slot.generation, child_outbox_reader
        )
        self._loop.call_later(self.settings.worker_start_timeout_s, self._check_progress, slot.index, slot.generation)

    def _stop_process(self, slot: WorkerSlot) -> None:
        process, inbox = slot.process, slot.inbox
        if process is None:
            return
        try:
            if inbox is not None:
                inbox.send(None)
        except OSError:
            pass
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)

    def _check_progress(self, index: int, generation: int) -> None:
        """Kill a starting worker that made no progress for `worker_start_timeout_s`; however long a worker
        takes in all (cold compile caches, many models), it lives while each step reports in time."""
        slot = self._slots[index]
        if slot.generation != generation or slot.ready or not (slot.process and slot.process.is_alive()):
            return
        assert self._loop is not None
        stalled_s = time.monotonic() - slot.progressed_at
        if stalled_s < self.settings.worker_start_timeout_s:
            self._loop.call_later(
                self.settings.worker_start_timeout_s - stalled_s, self._check_progress, index, generation
            )
            return
        step = slot.progress
        doing = f"{step.state} {step.task}/{step.precision}" if step else "starting"
        logger.error("worker %d made no progress for %.0f s (%s); killing it", index, stalled_s, doing)
        slot.process.kill()  # its reader sees EOF and the slot restarts

    # ----- state ---------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return all(slot.ready for slot in self._slots)

    def ready_workers(self) -> int:
        return sum(slot.ready for slot in self._slots)

    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def worker_pids(self) -> dict[int, int | None]:
        return {slot.index: slot.pid for slot in self._slots}

    def worker_status(self) -> list[dict[str, Any]]:
        return [
            {"worker": s.index, "pid": s.pid, "ready": s.ready, "restarts": s.restarts, "busy": s.in_flight is not None}
            for s in self._slots
        ]

    # ----- requests ------------------------------------------------------------------------------

    async def submit(self, task: str, precision: str, payloads: list[Any]) -> list[ItemResult]:
        """Queue one request's inputs and wait for their results (or raise a `ServiceError`)."""
        if self._closing:
            raise ShuttingDownError("the service is shutting down")
        if not self.ready_workers():
            raise NotReadyError("no worker has finished loading yet", headers={"Retry-After": "5"})
        if self.queued() + len(payloads) > self.settings.max_queue:
            self._drop_given_up()  # inputs of requests past their deadline must not keep later ones out
        if self.queued() + len(payloads) > self.settings.max_queue:
            raise OverloadedError(
                f"the queue holds {self.queued()} inputs (limit {self.settings.max_queue}); retry shortly",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        key = (task, precision)
        items = [Pending(key, payload, loop.create_future()) for payload in payloads]
        self._queues[key].extend(Queued(item, now) for item in items)
        self._arrivals[key].arrived(now, len(items))
        self.metrics.queue_depth.set(self.queued())
        if self._idle_slots():  # a busy pool's dispatcher wakes when a batch returns; no need to per arrival
            self._wakeup.set()
        try:
            return list(
                await asyncio.wait_for(
                    asyncio.gather(*(item.future for item in items)), self.settings.request_timeout_s
                )
            )
        except TimeoutError:
            raise DeadlineExceededError(f"no result within {self.settings.request_timeout_s:g} s") from None
        finally:
            for item in items:  # a failed or timed-out request's other inputs are not worth running
                if not item.future.done():
                    item.future.cancel()
                elif not item.future.cancelled():
                    item.future.exception()  # mark retrieved: gather re-raised only the first failure

    # ----- dispatching ---------------------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        while True:
            self._wakeup.clear()
            wait_s = self._dispatch_due()
            if wait_s is None:
                await self._wakeup.wait()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):  # cheaper than wait_for, which wraps the wait in a task
                    await self._wakeup.wait()

    def _idle_slots(self) -> list[WorkerSlot]:
        return [s for s in self._slots if s.ready and s.in_flight is None]

    def _dispatch_due(self) -> float | None:
        """Send due batches to idle workers; seconds until the next one is due (None: wait for an event)."""
        while True:
            idle = self._idle_slots()
            if not idle:
                return None
            now = time.monotonic()
            next_wait: float | None = None
            self._drop_given_up()
            live = oldest_first(self._queues)
            # A queue's due inputs are shared between the idle workers, less one kept for each other queue.
            free_workers = max(1, len(idle) - (len(live) - 1))
            for key, queue in live:
                expected_gap = self._arrivals[key].expected_gap()
                decision = collate(
                    queue, self.settings.max_batch_size, self.settings.max_wait_s, now, expected_gap, free_workers
                )
                if decision.batches:
                    for slot, batch in zip(idle, decision.batches, strict=False):
                        self._send(slot, key, batch, now)
                    break
                if decision.wait_s is not None:
                    next_wait = decision.wait_s if next_wait is None else min(next_wait, decision.wait_s)
            else:
                return next_wait

    def _drop_given_up(self) -> None:
        """Drop queued inputs whose request already gave up (timed out, or failed on another input)."""
        for queue in self._queues.values():
            if any(q.item.future.done() for q in queue):
                kept = [q for q in queue if not q.item.future.done()]
                queue.clear()
                queue.extend(kept)
        self.metrics.queue_depth.set(self.queued())

    def _send(self, slot: WorkerSlot, key: Key, batch: list[Queued[Pending]], now: float) -> None:
        batch_id = next(self._batch_ids)
        slot.in_flight = InFlight(batch_id, key, batch)
        self.metrics.queue_depth.set(self.queued())
        self.metrics.batch_size.labels(*key).observe(len(batch))
        for queued in batch:
            self.metrics.queue_duration.labels(*key).observe(now - queued.enqueued_at)
        request = RunBatch(batch_id, key[0], key[1], tuple(q.item.payload for q in batch))
        try:
            assert slot.inbox is not None
            slot.inbox.send(request)
        except OSError:  # the worker just died; its reader reports the exit and fails the batch
            logger.warning("worker %d pipe closed while sending batch %d", slot.index, batch_id)

    # ----- messages from workers (called on the loop thread) -------------------------------------

    def _read_worker(self, index: int, generation: int, outbox: Connection) -> None:
        """The worker's pipe is readable: handle every message waiting there, or the worker's exit (EOF).

        Read on the event loop itself rather than by a thread per worker: no hand-over between threads per batch.
        A worker writes each message whole, so a readable pipe never leaves `recv` waiting for long.
        """
        assert self._loop is not None
        try:
            while outbox.poll():
                self._on_message(index, generation, outbox.recv())
        except (EOFError, OSError):
            self._loop.remove_reader(outbox.fileno())
            outbox.close()
            self._on_exit(index, generation)

    def _on_message(self, index: int, generation: int, message: Any) -> None:
        slot = self._slots[index]
        if slot.generation != generation:
            return
        if isinstance(message, WorkerProgress):
            self._on_progress(slot, message)
        elif isinstance(message, WorkerReady):
            self._on_ready(slot, message)
        elif isinstance(message, BatchDone):
            self._on_batch_done(slot, message)
        elif isinstance(message, WorkerFailed):
            logger.error("worker %d failed to start: %s", index, message.reason)
        self._wakeup.set()

    def _on_progress(self, slot: WorkerSlot, progress: WorkerProgress) -> None:
        slot.progress, slot.progressed_at = progress, time.monotonic()
        slot.model_states[(progress.task, progress.precision)] = progress.state
        logger.debug(
            "worker %d: %s %s/%s (%d/%d steps)",
            slot.index,
            progress.state,
            progress.task,
            progress.precision,
            progress.done,
            progress.total,
        )

    def model_state(self, key: Key) -> str:
        """`ready` once any worker serves it, `refused`, else the furthest step a starting worker reached."""
        if key in self.models:
            return "ready"
        if key in self.refused:
            return "refused"
        reached = [slot.model_states.get(key, "pending") for slot in self._slots]
        return max(reached, key=MODEL_STATES.index, default="pending")

    def _on_ready(self, slot: WorkerSlot, ready: WorkerReady) -> None:
        slot.ready, slot.pid, slot.failures_in_a_row = True, ready.pid, 0
        for info in ready.models:
            self.models[(info.task, info.precision)] = info
        for failure in ready.failures:
            self.refused[(failure.task, failure.precision)] = failure.reason
        self.metrics.record_models(ready.models)
        self.metrics.workers_ready.set(self.ready_workers())
        logger.info(
            "worker %d ready (pid %d): %d models in %.1f s, %d refused",
            slot.index,
            ready.pid,
            len(ready.models),
            time.monotonic() - slot.started_at,
            len(ready.failures),
        )

    def _on_batch_done(self, slot: WorkerSlot, done: BatchDone) -> None:
        in_flight = slot.in_flight
        if in_flight is None or in_flight.batch_id != done.batch_id:
            logger.warning("worker %d answered unknown batch %d", slot.index, done.batch_id)
            return
        slot.in_flight = None
        self.metrics.inference_duration.labels(*in_flight.key).observe(done.inference_seconds)
        # Hand the worker its next batch before answering this one: the answers (responses built and written
        # by the request tasks these results wake) would otherwise all run first while the worker sits idle.
        self._dispatch_due()
        for queued, result in zip(in_flight.items, done.results, strict=True):
            if not queued.item.future.done():
                queued.item.future.set_result(result)

    def _on_exit(self, index: int, generation: int) -> None:
        slot = self._slots[index]
        if slot.generation != generation or self._closing:
            return
        code = None
        if slot.process is not None:
            slot.process.join(timeout=1)
            code = slot.process.exitcode
        logger.error("worker %d (pid %s) exited with code %s; restarting", index, slot.pid, code)
        if slot.in_flight is not None:
            for queued in slot.in_flight.items:
                _fail(queued.item, WorkerLostError(f"worker {index} died while running this request; retry it"))
        slot.in_flight, slot.ready, slot.pid = None, False, None
        self.metrics.workers_ready.set(self.ready_workers())
        slot.restarts += 1
        self.metrics.worker_restarts.inc()
        delay = min(MAX_RESTART_DELAY_S, 0.5 * 2**slot.failures_in_a_row) if slot.failures_in_a_row else 0.0
        slot.failures_in_a_row += 1
        assert self._loop is not None
        self._loop.call_later(delay, self._spawn, slot)


def _fail(pending: Pending, error: Exception) -> None:
    if not pending.future.done():
        pending.future.set_exception(error)
