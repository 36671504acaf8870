"""The worker pool: spawned processes, per-(task, precision) batching queues, and dead-worker recovery.

All pool state lives on the event loop thread, which also reads the workers' pipes (each message, or EOF when
a worker dies, is handled as it arrives); the dispatcher sends due batches
(`service.batching.collate`) to idle workers that serve their model. Workers load models while they serve
others: artifacts given at the start and those added later (`add_artifacts`, as the builder finishes them).
A worker that dies fails its in-flight inputs with `WorkerLostError` (503; not retried, because a request that
killed one worker could kill the next) and is restarted with back-off; one that stops making progress on its
loads is killed and restarted too.
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
    WORKER_MODEL_STATES,
    ArtifactRef,
    BatchDone,
    HoldCompiles,
    ItemResult,
    LoadModels,
    ModelInfo,
    ModelRefused,
    ModelServing,
    RunBatch,
    WorkerFailed,
    WorkerProgress,
    WorkerStarted,
)
from service.settings import ServiceSettings
from service.worker_entry import run_worker

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
    started: bool = False  # its process runs and takes batches (for the models in `serving`)
    serving: dict[Key, ModelInfo] = field(default_factory=dict)
    model_states: dict[Key, str] = field(default_factory=dict)  # this generation's step per model
    outstanding: set[Key] = field(default_factory=set)  # handed to it, not yet ready or refused
    in_flight: InFlight | None = None
    restarts: int = 0
    failures_in_a_row: int = 0
    started_at: float = field(default_factory=time.monotonic)
    progressed_at: float = field(default_factory=time.monotonic)  # its last step (the start timeout runs from it)
    progress: WorkerProgress | None = None
    watched: bool = False  # a progress check is scheduled

    @property
    def settled(self) -> bool:
        """Started, and every model handed to it is ready or refused."""
        return self.started and not self.outstanding


class WorkerPool:
    def __init__(self, settings: ServiceSettings, artifacts: list[ArtifactRef], metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.artifacts = artifacts
        self.metrics = metrics
        self.models: dict[Key, ModelInfo] = {}  # every model a worker serves, as the last one to report it
        self.refused: dict[Key, str] = {}
        self.replacement_refused: dict[Key, str] = {}  # own artifact refused while its stand-in serves on
        self._queues: dict[Key, deque[Queued[Pending]]] = {}
        self._arrivals: dict[Key, ArrivalGaps] = {}
        for ref in artifacts:
            self._queues[(ref.task, ref.precision)], self._arrivals[(ref.task, ref.precision)] = deque(), ArrivalGaps()
        self._slots = [WorkerSlot(i) for i in range(settings.workers)]
        self._batch_ids = itertools.count()
        self._context = multiprocessing.get_context("spawn")
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatcher: asyncio.Task | None = None
        self._closing = False
        self._hold_compiles = False
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
        slot.started, slot.in_flight, slot.pid, slot.progress = False, None, None, None
        slot.serving, slot.model_states = {}, {}
        slot.outstanding = {(a.task, a.precision) for a in self.artifacts}
        slot.started_at = slot.progressed_at = time.monotonic()
        parent_inbox, child_inbox = self._context.Pipe(duplex=False)  # (reader, writer)
        child_outbox_reader, child_outbox = self._context.Pipe(duplex=False)
        spec = self.settings.worker_spec(
            slot.index, tuple(self.artifacts), self.settings.threads_per_worker, self._hold_compiles
        )
        process = self._context.Process(
            target=run_worker, args=(spec, parent_inbox, child_outbox), name=f"qbert-worker-{slot.index}", daemon=True
        )
        process.start()
        parent_inbox.close()  # the child's ends: closing ours lets EOF tell us when the child dies
        child_outbox.close()
        slot.process, slot.inbox, slot.pid = process, child_inbox, process.pid
        assert self._loop is not None
        self._loop.add_reader(
            child_outbox_reader.fileno(), self._read_worker, slot.index, slot.generation, child_outbox_reader
        )
        slot.watched = False
        self._watch(slot)

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

    def _watch(self, slot: WorkerSlot) -> None:
        if not slot.watched:
            slot.watched = True
            assert self._loop is not None
            self._loop.call_later(
                self.settings.worker_start_timeout_s, self._check_progress, slot.index, slot.generation
            )

    def _check_progress(self, index: int, generation: int) -> None:
        """Kill a worker that made no progress for `worker_start_timeout_s` while starting or loading; however long
        a worker takes in all (cold compile caches, many models), it lives while each step reports in time."""
        slot = self._slots[index]
        if slot.generation != generation:
            return
        slot.watched = False
        if slot.settled or not (slot.process and slot.process.is_alive()):
            return
        if (
            slot.started
            and self._hold_compiles
            and all(slot.model_states.get(k) == "compiling" for k in slot.outstanding)
        ):
            slot.progressed_at = time.monotonic()  # it waits for compiles to resume: not stuck
        stalled_s = time.monotonic() - slot.progressed_at
        if stalled_s < self.settings.worker_start_timeout_s:
            slot.watched = True
            assert self._loop is not None
            self._loop.call_later(
                self.settings.worker_start_timeout_s - stalled_s, self._check_progress, index, generation
            )
            return
        step = slot.progress
        doing = f"{step.state} {step.task}/{step.precision}" if step and step.task else "starting"
        logger.error("worker %d made no progress for %.0f s (%s); killing it", index, stalled_s, doing)
        slot.process.kill()  # its reader sees EOF and the slot restarts

    # ----- state ---------------------------------------------------------------------------------

    def started_workers(self) -> int:
        return sum(slot.started for slot in self._slots)

    def settled(self) -> bool:
        """Every worker runs and has loaded (or refused) every model handed to it."""
        return all(slot.settled for slot in self._slots)

    def serves(self, key: Key) -> bool:
        return any(key in slot.serving for slot in self._slots)

    def served_by_all(self, key: Key) -> bool:
        return all(key in slot.serving for slot in self._slots)

    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def worker_pids(self) -> dict[int, int | None]:
        return {slot.index: slot.pid for slot in self._slots}

    def worker_status(self) -> list[dict[str, Any]]:
        return [
            {
                "worker": s.index,
                "pid": s.pid,
                "ready": s.settled,
                "serving": len(s.serving),
                "loading": len(s.outstanding),
                "restarts": s.restarts,
                "busy": s.in_flight is not None,
            }
            for s in self._slots
        ]

    def model_state(self, key: Key) -> str | None:
        """The step the furthest worker reached on a model (`loading`, `compiling`: served eagerly, `ready`), or
        `refused` when every worker that tried refused it; None before any worker began it."""
        reached = [slot.model_states[key] for slot in self._slots if key in slot.model_states]
        if not reached:
            return None
        serving = [state for state in reached if state != "refused"]
        if not serving:
            return "refused"
        return max(serving, key=WORKER_MODEL_STATES.index)

    def add_artifacts(self, refs: list[ArtifactRef]) -> None:
        """Have every worker load `refs` too (and every worker started from now on).

        A ref for a model already known with another artifact replaces it (a stand-in giving way): each worker
        serves the old one until the new one is loaded."""
        known = {(a.task, a.precision): a for a in self.artifacts}
        refs = [ref for ref in refs if known.get((ref.task, ref.precision)) != ref]
        if not refs:
            return
        replaced = {(ref.task, ref.precision) for ref in refs}
        self.artifacts[:] = [a for a in self.artifacts if (a.task, a.precision) not in replaced] + refs
        for ref in refs:
            key = (ref.task, ref.precision)
            self._queues.setdefault(key, deque())
            self._arrivals.setdefault(key, ArrivalGaps())
        for slot in self._slots:
            if slot.inbox is None or slot.pid is None:
                continue  # it is restarting: it loads `self.artifacts` when it spawns
            if not slot.outstanding:
                slot.progressed_at = time.monotonic()  # the stall clock starts now, not at its last load
            slot.outstanding.update((ref.task, ref.precision) for ref in refs)
            try:
                slot.inbox.send(LoadModels(tuple(refs)))
            except OSError:  # it just died; its respawn loads them
                continue
            self._watch(slot)

    @property
    def compiles_held(self) -> bool:
        return self._hold_compiles

    def hold_compiles(self, hold: bool) -> None:
        """Have every worker hold back (or resume) compiling; models still load and serve eagerly meanwhile."""
        self._hold_compiles = hold
        for slot in self._slots:
            slot.progressed_at = time.monotonic()  # the stall clock of held compiles starts now
            if slot.inbox is not None and slot.pid is not None:
                with contextlib.suppress(OSError):  # it just died; its respawn gets the setting in its spec
                    slot.inbox.send(HoldCompiles(hold))

    # ----- requests ------------------------------------------------------------------------------

    async def submit(self, task: str, precision: str, payloads: list[Any]) -> list[ItemResult]:
        """Queue one request's inputs and wait for their results (or raise a `ServiceError`)."""
        if self._closing:
            raise ShuttingDownError("the service is shutting down")
        key = (task, precision)
        if not self.serves(key):
            raise NotReadyError(f"no worker serves {task}/{precision} yet", headers={"Retry-After": "5"})
        if self.queued() + len(payloads) > self.settings.max_queue:
            self._drop_given_up()  # inputs of requests past their deadline must not keep later ones out
        if self.queued() + len(payloads) > self.settings.max_queue:
            raise OverloadedError(
                f"the queue holds {self.queued()} inputs (limit {self.settings.max_queue}); retry shortly",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
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
        return [s for s in self._slots if s.started and s.in_flight is None]

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
            for key, queue in live:
                able = [slot for slot in idle if key in slot.serving]
                if not able:
                    continue  # its workers are busy, or still loading it
                # A queue's due inputs are shared between the idle workers, less one kept for each other queue.
                free_workers = max(1, len(able) - (len(live) - 1))
                expected_gap = self._arrivals[key].expected_gap()
                decision = collate(
                    queue, self.settings.max_batch_size, self.settings.max_wait_s, now, expected_gap, free_workers
                )
                if decision.batches:
                    for slot, batch in zip(able, decision.batches, strict=False):
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
        if isinstance(message, BatchDone):
            self._on_batch_done(slot, message)
        else:
            slot.progressed_at = time.monotonic()
            if isinstance(message, WorkerProgress):
                self._on_progress(slot, message)
            elif isinstance(message, ModelServing):
                self._on_serving(slot, message)
            elif isinstance(message, ModelRefused):
                self._on_refused(slot, message)
            elif isinstance(message, WorkerStarted):
                slot.started, slot.pid = True, message.pid
                logger.info("worker %d started (pid %d)", index, message.pid)
            elif isinstance(message, WorkerFailed):
                logger.error("worker %d failed to start: %s", index, message.reason)
            if slot.started and not slot.outstanding and not isinstance(message, WorkerProgress):
                self._on_settled(slot)
        self._wakeup.set()

    def _on_progress(self, slot: WorkerSlot, progress: WorkerProgress) -> None:
        slot.progress = progress
        if progress.task:
            slot.model_states[(progress.task, progress.precision)] = progress.state
        logger.debug("worker %d: %s %s/%s", slot.index, progress.state, progress.task, progress.precision)

    def _on_serving(self, slot: WorkerSlot, serving: ModelServing) -> None:
        info = serving.info
        key = (info.task, info.precision)
        slot.serving[key] = self.models[key] = info
        slot.model_states[key] = "compiling" if serving.warming else "ready"
        self.refused.pop(key, None)
        if info.artifact == info.precision:  # its own artifact serves now: no stand-in left to explain
            self.replacement_refused.pop(key, None)
        if serving.warming:  # a compile to come (again, where a new model class sent it back to eager)
            slot.outstanding.add(key)
            self._watch(slot)
        else:
            slot.outstanding.discard(key)
        self.metrics.record_models([info])

    def _on_refused(self, slot: WorkerSlot, refused: ModelRefused) -> None:
        key = (refused.task, refused.precision)
        slot.outstanding.discard(key)
        if refused.still_serving:  # its replacement was refused; the stand-in it had goes on answering
            slot.model_states[key] = "ready"
            self.replacement_refused[key] = refused.reason
            return
        slot.model_states[key] = "refused"
        slot.serving.pop(key, None)
        if not self.serves(key):
            self.refused[key] = refused.reason

    def _on_settled(self, slot: WorkerSlot) -> None:
        """Every model handed to the worker so far is ready or refused (logged once per batch of loads)."""
        if slot.progress is not None and slot.progress.state == "settled":
            return
        slot.progress = WorkerProgress(slot.index, "", "", "settled")
        self.metrics.workers_ready.set(sum(s.settled for s in self._slots))
        logger.info(
            "worker %d ready (pid %d): %d models in %.1f s, %d refused",
            slot.index,
            slot.pid,
            len(slot.serving),
            time.monotonic() - slot.started_at,
            sum(state == "refused" for state in slot.model_states.values()),
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
        slot.in_flight, slot.started, slot.pid = None, False, None
        slot.serving = {}
        self.metrics.workers_ready.set(sum(s.settled for s in self._slots))
        slot.restarts += 1
        self.metrics.worker_restarts.inc()
        delay = min(MAX_RESTART_DELAY_S, 0.5 * 2**slot.failures_in_a_row) if slot.failures_in_a_row else 0.0
        slot.failures_in_a_row += 1
        assert self._loop is not None
        self._loop.call_later(delay, self._spawn, slot)


def _fail(pending: Pending, error: Exception) -> None:
    if not pending.future.done():
        pending.future.set_exception(error)
