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
        slot.started, slot.inbox, slot.serving = True, inbox, dict.fromkeys([("sst2", "w8")])
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


def test_a_burst_is_shared_between_idle_workers_and_a_second_queue_keeps_one(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[list], list[list]]:
        settings = ServiceSettings(workers=3, max_batch_size=16, max_wait_ms=0, artifacts=tmp_path, tasks=["sst2"])
        refs = [ArtifactRef("sst2", "w8", tmp_path), ArtifactRef("sst2", "fp32", tmp_path)]
        pool = WorkerPool(settings, refs, ServiceMetrics())
        inboxes = [RecordingInbox() for _ in pool._slots]
        for slot, inbox in zip(pool._slots, inboxes, strict=True):
            slot.started, slot.inbox, slot.serving = True, inbox, dict.fromkeys([("sst2", "w8"), ("sst2", "fp32")])
        burst = [asyncio.create_task(pool.submit("sst2", "w8", [f"t{i}"])) for i in range(9)]
        await asyncio.sleep(0)
        pool._dispatch_due()
        alone = [[batch.payloads for batch in inbox.sent] for inbox in inboxes]

        for slot in pool._slots:  # all three answer; then one w8 burst and one fp32 input arrive together
            slot.in_flight = None
        for inbox in inboxes:
            inbox.sent.clear()
        second = [asyncio.create_task(pool.submit("sst2", "w8", [f"u{i}"])) for i in range(4)]
        other = asyncio.create_task(pool.submit("sst2", "fp32", ["v"]))
        await asyncio.sleep(0)
        pool._dispatch_due()
        mixed = [[(batch.precision, batch.payloads) for batch in inbox.sent] for inbox in inboxes]
        for task in [*burst, *second, other]:
            task.cancel()
        return alone, mixed

    alone, mixed = asyncio.run(scenario())
    assert alone == [[("t0", "t1", "t2")], [("t3", "t4", "t5")], [("t6", "t7", "t8")]]
    assert mixed == [[("w8", ("u0", "u1"))], [("w8", ("u2", "u3"))], [("fp32", ("v",))]]


def test_a_batch_goes_only_to_a_worker_that_serves_its_model(tmp_path: Path) -> None:
    """Workers load models while they serve others: one still loading a model is not sent its batches."""

    async def scenario() -> list[list]:
        settings = ServiceSettings(workers=2, max_batch_size=16, max_wait_ms=0, artifacts=tmp_path, tasks=["sst2"])
        pool = WorkerPool(settings, [ArtifactRef("sst2", "w8", tmp_path)], ServiceMetrics())
        inboxes = [RecordingInbox() for _ in pool._slots]
        for slot, inbox in zip(pool._slots, inboxes, strict=True):
            slot.started, slot.inbox = True, inbox
        pool._slots[1].serving = dict.fromkeys([("sst2", "w8")])  # worker 0 is still loading it
        requests = [asyncio.create_task(pool.submit("sst2", "w8", [f"t{i}"])) for i in range(4)]
        await asyncio.sleep(0)
        pool._dispatch_due()
        sent = [[batch.payloads for batch in inbox.sent] for inbox in inboxes]
        for task in requests:
            task.cancel()
        return sent

    assert asyncio.run(scenario()) == [[], [("t0", "t1", "t2", "t3")]]


def test_an_artifact_for_a_known_model_replaces_its_stand_in_in_every_worker(tmp_path: Path) -> None:
    settings = ServiceSettings(workers=2, artifacts=tmp_path, tasks=["sst2"])
    stand_in = ArtifactRef("sst2", "mp23", tmp_path / "sst2" / "mp23-ptq")
    pool = WorkerPool(settings, [ArtifactRef("sst2", "w8", tmp_path / "sst2" / "w8"), stand_in], ServiceMetrics())
    inboxes = [RecordingInbox() for _ in pool._slots]
    for slot, inbox in zip(pool._slots, inboxes, strict=True):
        slot.started, slot.inbox, slot.pid = True, inbox, 1
        slot.serving = dict.fromkeys([("sst2", "w8"), ("sst2", "mp23")])
    pool._loop = asyncio.new_event_loop()  # progress checks are scheduled on it, never run here
    try:
        own = ArtifactRef("sst2", "mp23", tmp_path / "sst2" / "mp23")
        pool.add_artifacts([own])
        pool.add_artifacts([own])  # known as it is now: nothing to load
    finally:
        pool._loop.close()
    assert [a.path.name for a in pool.artifacts] == ["w8", "mp23"]  # a restarted worker loads the model's own
    for slot, inbox in zip(pool._slots, inboxes, strict=True):
        assert [message.refs for message in inbox.sent] == [(own,)]
        assert ("sst2", "mp23") in slot.serving  # the stand-in answers until the worker says the new one serves
        assert slot.outstanding == {("sst2", "mp23")}


def test_a_refused_replacement_leaves_its_stand_in_answering(tmp_path: Path) -> None:
    """The QAT artifact that was to replace a stand-in fails its load in a worker: that worker still holds the
    stand-in, so the pool keeps routing the model to it and says why the model's own artifact is not there."""
    from service.protocol import ModelRefused

    settings = ServiceSettings(workers=1, artifacts=tmp_path, tasks=["sst2"])
    pool = WorkerPool(settings, [ArtifactRef("sst2", "mp23", tmp_path / "sst2" / "mp23-ptq")], ServiceMetrics())
    slot = pool._slots[0]
    slot.started, slot.inbox, slot.serving = True, RecordingInbox(), dict.fromkeys([("sst2", "mp23")])
    slot.outstanding = {("sst2", "mp23")}
    pool._on_message(0, 0, ModelRefused(0, "sst2", "mp23", "weights.safetensors: sha256 mismatch", still_serving=True))
    assert pool.serves(("sst2", "mp23"))
    assert pool.model_state(("sst2", "mp23")) == "ready"
    assert ("sst2", "mp23") not in pool.refused
    assert pool.replacement_refused == {("sst2", "mp23"): "weights.safetensors: sha256 mismatch"}
    assert slot.settled
    from service.protocol import ModelInfo, ModelServing

    def serving(artifact: str) -> ModelServing:
        return ModelServing(0, ModelInfo("sst2", "mp23", f"m@{artifact}", 2.5, 1, 1, 1, 0.1, (), (), artifact=artifact))

    pool._on_message(0, 0, serving("mp23-ptq"))  # the stand-in's compile finishing: the refusal still stands
    assert ("sst2", "mp23") in pool.replacement_refused
    pool._on_message(0, 0, serving("mp23"))  # its own artifact loaded after all (a restarted worker, say)
    assert pool.replacement_refused == {}
