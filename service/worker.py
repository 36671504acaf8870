"""The worker process: loads every configured artifact once, then runs batches sent by the pool.

`InferenceWorker` is the whole worker contract (LitServe's shape): `setup` once, then for every
batch `batch` (the tasks' preprocessing), `predict` (padded forward passes) and `unbatch` (the
tasks' postprocessing). Those three call the same functions as `qbert eval`, so a served answer
equals the evaluated answer for the same input.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from quantization.artifact import ArtifactError
from quantization.evaluate import finish, max_length_for, prepare, run_features
from quantization.runtime import LoadedModel, load_model, warm_up
from quantization.system import set_batch_scheduling
from quantization.tasks import Feature, Task, get_task
from quantization.tasks.ner import NerInput
from quantization.tasks.qa import QAInput
from service.protocol import (
    ArtifactRef,
    BatchDone,
    ItemResult,
    ModelFailure,
    ModelInfo,
    RunBatch,
    WorkerFailed,
    WorkerProgress,
    WorkerReady,
    WorkerSpec,
)

logger = logging.getLogger("qbert.worker")


def model_info(ref: ArtifactRef, loaded: LoadedModel) -> ModelInfo:
    manifest = loaded.manifest
    source = manifest["base_checkpoint"]["source"].rstrip("/").split("/")[-1]
    digest = manifest["files"]["weights.safetensors"][:12]
    summary = manifest["summary"]
    accuracy = tuple(
        {key: row[key] for key in ("metric", "value", "split", "n")} for row in manifest.get("evaluation", [])
    )
    return ModelInfo(
        task=ref.task,
        precision=ref.precision,
        model=f"{source}@{digest}",
        bits_per_weight=float(summary["avg_bits_encoder"]),
        packed_bytes=int(loaded.packed_bytes),
        runtime_bytes=int(loaded.runtime_bytes),
        fp32_bytes=int(summary["total_fp32_bytes"]),
        load_seconds=round(loaded.load_seconds, 3),
        labels=tuple(loaded.labels),
        accuracy=accuracy,
        backend=loaded.backend,
    )


def task_input(task: str, payload: Any) -> Any:
    """The task's input dataclass from a request payload."""
    if task == "ner":
        return NerInput.from_text(payload)
    if task == "qa":
        question, context = payload
        return QAInput(question, context)
    return payload


@dataclass
class PreparedBatch:
    inputs: list[Any]
    features: list[list[Feature]]  # empty for an input that failed preprocessing
    errors: list[ItemResult | None]


class InferenceWorker:
    """Loads artifacts, then turns batches of payloads into per-input results."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.models: dict[tuple[str, str], LoadedModel] = {}

    def setup(self, report: Callable[[WorkerProgress], None] = lambda progress: None) -> WorkerReady:
        """Load every artifact, then compile (warm up) each, reporting each step to `report`.

        Compiling waits until all are built: building the first model of a class adds to a registry of
        transformers that compiled graphs guard on, so graphs compiled before the last task's model was built
        would all compile again on their first request (seconds to minutes of stall, in every worker).
        """
        refs = self.spec.artifacts
        steps = 2 * len(refs)  # a load and a compile each

        def step(ref: ArtifactRef, state: str, done: int) -> None:
            report(WorkerProgress(self.spec.index, ref.task, ref.precision, state, done, steps))

        built, failures = [], []
        for done, ref in enumerate(refs):
            step(ref, "loading", done)
            try:
                built.append((ref, load_model(ref.path, self.spec.backend)))
                step(ref, "loaded", done + 1)
            except (ArtifactError, OSError, ValueError) as exc:  # refuse this one, serve the others
                logger.error("worker %d refused %s/%s: %s", self.spec.index, ref.task, ref.precision, exc)
                failures.append(ModelFailure(ref.task, ref.precision, str(exc)))
                step(ref, "refused", done + 1)
        infos = []
        for done, (ref, loaded) in enumerate(built, start=len(refs)):
            step(ref, "compiling", done)
            warm = self.models[(ref.task, ref.precision)] = warm_up(loaded)
            infos.append(model_info(ref, warm))
        return WorkerReady(self.spec.index, os.getpid(), tuple(infos), tuple(failures))

    def batch(self, task: Task, loaded: LoadedModel, payloads: tuple[Any, ...]) -> PreparedBatch:
        prepared = PreparedBatch([], [], [])
        for payload in payloads:
            item, features, error = None, [], None
            try:
                item = task_input(task.name, payload)
                features = prepare(loaded, task, item)
                error = self._length_error(task, loaded, item, features)
            except ValueError as exc:  # the task refused the input (e.g. a question longer than a window)
                error = ItemResult(error="invalid_input", detail=str(exc))
            prepared.inputs.append(item)
            prepared.features.append([] if error else features)
            prepared.errors.append(error)
        return prepared

    def predict(self, task: Task, loaded: LoadedModel, prepared: PreparedBatch) -> list[list[Any]]:
        return run_features(loaded, task, prepared.features, self.spec.max_batch_size)

    def unbatch(
        self, task: Task, loaded: LoadedModel, prepared: PreparedBatch, outputs: list[list[Any]]
    ) -> list[ItemResult]:
        results = []
        for item, features, outs, error in zip(
            prepared.inputs, prepared.features, outputs, prepared.errors, strict=True
        ):
            results.append(error or ItemResult(value=finish(loaded, task, item, features, outs)))
        return results

    def run(self, request: RunBatch) -> BatchDone:
        started = time.perf_counter()
        loaded = self.models[(request.task, request.precision)]
        task = get_task(request.task)
        prepared = self.batch(task, loaded, request.payloads)
        outputs = self.predict(task, loaded, prepared)
        results = self.unbatch(task, loaded, prepared, outputs)
        return BatchDone(
            request.batch_id,
            tuple(results),
            time.perf_counter() - started,
            features=sum(len(f) for f in prepared.features),
        )

    def _length_error(self, task: Task, loaded: LoadedModel, item: Any, features: list[Feature]) -> ItemResult | None:
        """sst2 and ner read one sequence: refuse a text longer than the limit instead of truncating it."""
        limit = min(self.spec.max_tokens, max_length_for(task, loaded))
        if len(features) != 1 or len(features[0]) < limit:
            return None
        length = task.untruncated_length(loaded.tokenizer, item)  # None: the task never truncates
        if length is None or length <= limit:
            return None
        return ItemResult(error="invalid_input", detail=f"text is {length} tokens; at most {limit} are allowed")


def worker_main(spec: WorkerSpec, inbox: Connection, outbox: Connection) -> None:
    """Process entry point: set threads, load, report ready, then serve batches until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pool shuts workers down; Ctrl-C goes to the parent
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s worker{spec.index}: %(message)s")
    # Before torch starts its threads, which inherit it: inference is a normal task, whatever the API process is.
    set_batch_scheduling(False)
    import torch

    torch.set_num_threads(spec.threads)
    worker = InferenceWorker(spec)
    try:
        outbox.send(worker.setup(report=outbox.send))
    except Exception as exc:  # report why, then exit: the pool restarts with back-off
        logger.exception("worker %d failed to start", spec.index)
        outbox.send(WorkerFailed(spec.index, f"{type(exc).__name__}: {exc}"))
        return
    # The loaded models and compiled graphs live as long as the worker: frozen, no full collection walks them.
    gc.freeze()
    while True:
        try:
            request = inbox.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if request is None:
            return
        try:
            outbox.send(worker.run(request))
        except Exception as exc:  # a bug or a kernel error fails this batch, not the worker
            logger.exception("batch %s failed", getattr(request, "batch_id", "?"))
            failed = ItemResult(error="inference_failed", detail=f"{type(exc).__name__}: {exc}")
            outbox.send(BatchDone(request.batch_id, (failed,) * len(request.payloads), 0.0))
