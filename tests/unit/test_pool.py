import asyncio
from pathlib import Path
from typing import Any

from service.metrics import ServiceMetrics
from service.pool import WorkerPool
from service.protocol import ArtifactRef, BatchDone, ItemResult, RunBatch
from service.settings import ServiceSettings


class RecordingInbox:
    """A worker's inbox that keeps what the pool sends, and whether the previous batch's answers were out yet."""

    def __init__(self) -> None:
        self.sent: list[RunBatch] = []
        self.previous_answered: list[bool] = []
        self.previous: list[asyncio.Future] = []

    def send(self, message: Any) -> None:
        self.sent.append(message)
        self.previous_answered.append(all(future.done() for future in self.previous))


def test_a_returning_batch_hands_the_worker_its_next_batch_before_answering_its_own(tmp_path: Path) -> None:
    """On a core shared with the API, answering a batch's requests first would leave the worker idle meanwhile."""

    async def scenario() -> RecordingInbox:
        settings = ServiceSettings(workers=1, max_batch_size=2, max_wait_ms=0, artifacts=tmp_path, tasks=["sst2"])
        pool = WorkerPool(settings, [ArtifactRef("sst2", "w8", tmp_path)], ServiceMetrics())
        slot, inbox = pool._slots[0], RecordingInbox()
        slot.ready, slot.inbox = True, inbox
        dispatcher = asyncio.create_task(pool._dispatch_forever())
        first = asyncio.create_task(pool.submit("sst2", "w8", ["a", "b"]))
        await asyncio.sleep(0.01)
        assert [batch.payloads for batch in inbox.sent] == [("a", "b")]
        assert slot.in_flight is not None
        inbox.previous = [queued.item.future for queued in slot.in_flight.items]
        second = asyncio.create_task(pool.submit("sst2", "w8", ["c", "d"]))
        await asyncio.sleep(0.01)
        assert len(inbox.sent) == 1, "the worker is busy: the second batch waits"

        results = (ItemResult(value="neg"), ItemResult(value="pos"))
        pool._on_message(0, slot.generation, BatchDone(inbox.sent[0].batch_id, results, 0.01))
        assert [result.value for result in await first] == ["neg", "pos"]
        assert [batch.payloads for batch in inbox.sent] == [("a", "b"), ("c", "d")]
        pool._on_message(0, slot.generation, BatchDone(inbox.sent[1].batch_id, results, 0.01))
        await second
        dispatcher.cancel()
        return inbox

    inbox = asyncio.run(scenario())
    assert inbox.previous_answered == [True, False]
