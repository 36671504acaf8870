import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from transformers.utils import output_capturing

from quantization.build import build_artifact, load_checkpoint
from quantization.catalog import load_catalog
from quantization.runtime.torch_internals import dynamo_frame_counts
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
    spec = WorkerSpec(
        index=0, threads=1, artifacts=tuple(refs), max_tokens=64, max_batch_tokens=256, backend="compiled"
    )
    with fresh_process_state():  # building the artifacts above registered both classes already
        worker = InferenceWorker(spec)
        ready = worker.setup()
        assert [m.backend for m in ready.models] == ["compiled", "compiled"]

        frames = dynamo_frame_counts()  # asserts the counters exist: a renamed one would read 0 and pass
        compiled_frames = frames["total"]
        texts = ("a fine film", "dull and long , really", "the cast shines")
        for batch_id, (task, payloads) in enumerate([("sst2", texts[:1]), ("sst2", texts), ("ner", texts)]):
            done = worker.run(RunBatch(batch_id, task, "w8", payloads))
            assert all(result.error is None for result in done.results)
        assert frames["total"] == compiled_frames


def test_a_backend_whose_setup_breaks_serves_on_the_reference_path(
    tmp_path: Path, tiny_checkpoints: dict, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Library internals that change under an upgrade (here the Inductor lowering's registration) degrade the
    model to eager with the reason logged; they do not fail the load, so the worker never restart-loops."""
    import torch._inductor.lowering

    from quantization.runtime import compiling, int8_linear

    data = write_tiny_data(tmp_path / "data")
    checkpoint = load_checkpoint(str(tiny_checkpoints["sst2"]), "sst2")
    out = tmp_path / "sst2" / "w8"
    entry = tiny_entry("sst2", tiny_checkpoints["sst2"], data)
    build_artifact(checkpoint, entry, load_catalog().precision_for("sst2", "w8"), out)

    def registration_fails(*args: object, **kwargs: object) -> None:
        raise TypeError("register_lowering() got an unexpected keyword argument")

    monkeypatch.setattr(compiling, "onednn_int8_is_usable", lambda: True)  # the lowering is tried on every CPU
    monkeypatch.setattr(torch._inductor.lowering, "register_lowering", registration_fails)
    int8_linear.lower_packed_matmul_to_onednn.cache_clear()  # registered by an earlier test: try again, and fail
    spec = WorkerSpec(0, 1, (ArtifactRef("sst2", "w8", out),), max_tokens=64, max_batch_tokens=256, backend="compiled")
    worker = InferenceWorker(spec)
    with caplog.at_level(logging.ERROR, logger="qbert.worker"):
        ready = worker.setup()
    assert [(m.precision, m.backend) for m in ready.models] == [("w8", "eager")]
    assert not ready.failures
    assert any("runs on the reference (eager) backend" in r.getMessage() for r in caplog.records)
    assert "unexpected keyword" in caplog.text
    done = worker.run(RunBatch(0, "sst2", "w8", ("a fine film",)))
    assert done.results[0].error is None


def test_a_stand_in_gives_way_to_the_artifact_it_stands_in_for(tmp_path: Path, tiny_checkpoints: dict) -> None:
    """The model key stays; the artifact behind it changes once, and the stand-in is never served again (not even
    when compiles it was waiting for are released)."""
    catalog = load_catalog()
    data = write_tiny_data(tmp_path / "data")
    checkpoint = load_checkpoint(str(tiny_checkpoints["sst2"]), "sst2")
    for precision in ("w2g128", "w8"):
        build_artifact(
            checkpoint,
            tiny_entry("sst2", tiny_checkpoints["sst2"], data),
            catalog.precision_for("sst2", precision),
            tmp_path / "sst2" / precision,
        )
    stand_in, own = (ArtifactRef("sst2", "w8", tmp_path / "sst2" / p) for p in ("w2g128", "w8"))
    sent: list = []
    spec = WorkerSpec(0, 1, (stand_in,), max_tokens=64, max_batch_tokens=256, backend="compiled", hold_compiles=True)
    with fresh_process_state():
        worker = InferenceWorker(spec, sent.append)
        worker.add(spec.artifacts)
        while worker.work():
            pass
        assert worker.models[("sst2", "w8")].path == stand_in.path  # served eagerly, its compile held
        worker.add((own,))
        while worker.work():
            pass
        worker.hold_compiles = False
        while worker.work():
            pass
    served = [m.info for m in sent if type(m).__name__ == "ModelServing"]
    assert [(info.artifact, info.backend) for info in served] == [
        ("w2g128", "eager"),
        ("w8", "eager"),
        ("w8", "compiled"),
    ]
    assert served[0].model != served[-1].model  # the weights digest names which artifact answers
    assert worker.models[("sst2", "w8")].path == own.path
    done = worker.run(RunBatch(0, "sst2", "w8", ("a fine film",)))
    assert done.results[0].error is None
