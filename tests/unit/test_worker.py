from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers.utils import output_capturing

from quantization.build import build_artifact, load_checkpoint
from quantization.catalog import load_catalog
from service.protocol import ArtifactRef, RunBatch, WorkerSpec
from service.worker import InferenceWorker
from tests.conftest import tiny_entry, write_tiny_data


@contextmanager
def fresh_process_state() -> Iterator[None]:
    """What a new worker process starts from: no compiled graphs, no model class registered with transformers."""
    registry = output_capturing._CAN_RECORD_REGISTRY
    saved = dict(registry)
    dict.clear(registry)
    torch._dynamo.reset()
    try:
        yield
    finally:
        dict.update(registry, saved)


def test_a_worker_serving_several_tasks_compiles_nothing_on_requests(tmp_path: Path, tiny_checkpoints: dict) -> None:
    """Building a model of a new class changes a transformers global that compiled graphs guard on: the worker
    builds every model before compiling any, or the first task's graphs would compile again on its first request."""
    catalog = load_catalog()
    data = write_tiny_data(tmp_path / "data")
    refs = []
    for task in ("sst2", "ner"):
        checkpoint = load_checkpoint(str(tiny_checkpoints[task]), task)
        out = tmp_path / task / "w8"
        build_artifact(
            checkpoint, tiny_entry(task, tiny_checkpoints[task], data), catalog.precision_for(task, "w8"), out
        )
        refs.append(ArtifactRef(task, "w8", out))
    spec = WorkerSpec(index=0, threads=1, artifacts=tuple(refs), max_tokens=64, max_batch_size=4, backend="compiled")
    with fresh_process_state():  # building the artifacts above registered both classes already
        worker = InferenceWorker(spec)
        ready = worker.setup()
        assert [m.backend for m in ready.models] == ["compiled", "compiled"]

        frames = torch._dynamo.utils.counters["frames"]
        compiled_frames = frames["total"]
        texts = ("a fine film", "dull and long , really", "the cast shines")
        for batch_id, (task, payloads) in enumerate([("sst2", texts[:1]), ("sst2", texts), ("ner", texts)]):
            done = worker.run(RunBatch(batch_id, task, "w8", payloads))
            assert all(result.error is None for result in done.results)
        assert frames["total"] == compiled_frames
