"""The worker process: loads artifacts as the pool hands them over, and runs batches sent by the pool.

`InferenceWorker` is the whole worker contract (LitServe's shape): `add` artifacts and `work` through
loading and compiling them, and for every batch `batch` (the tasks' preprocessing), `predict` (padded
forward passes) and `unbatch` (the tasks' postprocessing). Those three call the same functions as
`qbert eval`, so a served answer equals the evaluated answer for the same input.

Loading and compiling run on a thread of their own: the main thread keeps answering batches for the
models already served, and a model is served eagerly until its compiled graphs are warm, so no request
ever waits for a load or a compile.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from quantization.artifact import ArtifactError
from quantization.config import COMPILED_BACKENDS, WARMED_BACKENDS
from quantization.evaluate import finish, max_length_for, prepare, run_features
from quantization.runtime import LoadedModel, as_eager, load_model, warm_up
from quantization.system import set_batch_scheduling
from quantization.tasks import Feature, Task, task_from_spec
from service.protocol import (
    ArtifactRef,
    BatchDone,
    HoldCompiles,
    ItemError,
    ItemResult,
    LoadModels,
    ModelInfo,
    ModelRefused,
    ModelServing,
    RunBatch,
    WorkerFailed,
    WorkerProgress,
    WorkerSpec,
    WorkerStarted,
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
        artifact=ref.path.name,
    )


@dataclass
class PreparedBatch:
    inputs: list[Any]
    features: list[list[Feature]]  # empty for an input that failed preprocessing
    errors: list[ItemResult | None]


@dataclass
class SetupResult:
    """What `InferenceWorker.setup` made of the spec's artifacts."""

    models: list[ModelInfo] = field(default_factory=list)  # as finally served (compiled where it could be)
    failures: list[ModelRefused] = field(default_factory=list)


class InferenceWorker:
    """Loads and compiles artifacts (`add`, then `work` until it returns False), and turns batches of payloads
    into per-input results for the models it serves. Every step is reported to `send`."""

    def __init__(self, spec: WorkerSpec, send: Callable[[Any], None] = lambda message: None) -> None:
        self.spec = spec
        self.send = send
        self.models: dict[tuple[str, str], LoadedModel] = {}  # what batches run on now (eager while warming)
        self.tasks: dict[tuple[str, str], Task] = {}  # each model's task, as its artifact records it
        self._to_load: deque[ArtifactRef] = deque()
        self._to_compile: dict[tuple[str, str], tuple[ArtifactRef, LoadedModel]] = {}
        self._compiled: dict[tuple[str, str], tuple[ArtifactRef, LoadedModel]] = {}
        self._classes: set[type] = set()
        self.hold_compiles = spec.hold_compiles

    def add(self, refs: tuple[ArtifactRef, ...]) -> None:
        self._to_load.extend(refs)  # deque appends and pops are atomic: the loader thread takes them

    def work(self) -> bool:
        """One step: load the next artifact added, else compile the next model waiting for it; False: none left.

        Compiles wait until every added artifact is loaded: building the first model of a class adds to a registry
        of transformers that compiled graphs guard on, so graphs compiled before would all compile again on their
        first request. A model of a new class arriving later sends the compiled ones back to eager to re-warm.
        """
        try:
            ref = self._to_load.popleft()
        except IndexError:
            ref = None
        if ref is not None:
            self._load(ref)
            return True
        if self._to_compile and not self.hold_compiles:
            key = next(iter(self._to_compile))
            self._compile(*self._to_compile.pop(key))
            return True
        return False

    def setup(self) -> SetupResult:
        """Load and compile the spec's artifacts here and now (what the loader thread does, in one call)."""
        result, send = SetupResult(), self.send

        def collect(message: Any) -> None:
            if isinstance(message, ModelServing) and not message.warming:
                result.models.append(message.info)
            elif isinstance(message, ModelRefused):
                result.failures.append(message)
            send(message)

        self.send = collect
        try:
            self.add(self.spec.artifacts)
            while self.work():
                pass
        finally:
            self.send = send
        return result

    def _step(self, ref: ArtifactRef, state: str) -> None:
        self.send(WorkerProgress(self.spec.index, ref.task, ref.precision, state))

    def _load(self, ref: ArtifactRef) -> None:
        self._step(ref, "loading")
        try:
            loaded = self._build(ref)
        except Exception as exc:  # refuse this one (a faulty artifact, or a bug even eager hits), serve the others
            expected = isinstance(exc, (ArtifactError, OSError, ValueError))
            logger.error(
                "worker %d refused %s/%s: %s", self.spec.index, ref.task, ref.precision, exc, exc_info=not expected
            )
            self.send(
                ModelRefused(
                    self.spec.index,
                    ref.task,
                    ref.precision,
                    f"{type(exc).__name__}: {exc}" if not expected else str(exc),
                    still_serving=(ref.task, ref.precision) in self.models,
                )
            )
            return
        eager = as_eager(loaded)
        model_class = type(eager.model)
        if model_class not in self._classes:
            self._classes.add(model_class)
            for key, (compiled_ref, compiled) in list(self._compiled.items()):  # their guards no longer hold
                del self._compiled[key]
                self._serve(compiled_ref, compiled, warming=True)
        self._serve(ref, loaded, warming=loaded.backend in WARMED_BACKENDS)

    def _build(self, ref: ArtifactRef) -> LoadedModel:
        """The artifact's model on the configured backend, or on the reference (eager) one where that backend's
        setup fails unexpectedly (library internals that changed under an upgrade): logged, never a restart loop.
        A faulty artifact is not retried: it raises `ArtifactError`, `OSError` or `ValueError` to be refused."""
        try:
            return load_model(
                ref.path, self.spec.backend, self.spec.openvino_activation_group_size, self.spec.attention_precision
            )
        except (ArtifactError, OSError, ValueError):
            raise
        except Exception:
            if self.spec.backend == "eager":
                raise
            logger.exception(
                "worker %d: the %s backend failed to load %s/%s; it runs on the reference (eager) backend",
                self.spec.index,
                self.spec.backend,
                ref.task,
                ref.precision,
            )
            return load_model(ref.path, "eager")

    def _serve(self, ref: ArtifactRef, loaded: LoadedModel, warming: bool) -> None:
        key = (ref.task, ref.precision)
        served = as_eager(loaded) if warming else loaded
        self.tasks[key] = task_from_spec(ref.task, loaded.task_spec)
        self.models[key] = served
        # A model replaced (a stand-in giving way) is neither compiled nor served again.
        self._compiled.pop(key, None)
        self._to_compile.pop(key, None)
        if warming:
            self._to_compile[key] = (ref, loaded)
        elif loaded.backend in COMPILED_BACKENDS:
            self._compiled[key] = (ref, loaded)
        self.send(ModelServing(self.spec.index, model_info(ref, served), warming))

    def _compile(self, ref: ArtifactRef, loaded: LoadedModel) -> None:
        self._step(ref, "compiling")
        self._serve(ref, warm_up(loaded), warming=False)  # warm_up falls back to eager where compiling fails

    def batch(self, task: Task, loaded: LoadedModel, payloads: tuple[Any, ...]) -> PreparedBatch:
        prepared = PreparedBatch([], [], [])
        for payload in payloads:
            item, features, error = None, [], None
            try:
                item = task.input_from_payload(payload)
                features = prepare(loaded, task, item)
                error = self._length_error(task, loaded, item, features) if task.refuses_long_input(payload) else None
            except ValueError as exc:  # the task refused the input (e.g. a question longer than a window)
                error = ItemResult(error=ItemError.INVALID_INPUT, detail=str(exc))
            prepared.inputs.append(item)
            prepared.features.append([] if error else features)
            prepared.errors.append(error)
        return prepared

    def predict(self, task: Task, loaded: LoadedModel, prepared: PreparedBatch) -> list[list[Any]]:
        return run_features(loaded, task, prepared.features, None, max_tokens=self.spec.max_batch_tokens)

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
        key = (request.task, request.precision)
        loaded, task = self.models[key], self.tasks[key]
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
        """A task that refuses long inputs (sst2; a classifier asked so): a text longer than the limit is refused
        instead of truncated."""
        limit = min(self.spec.max_tokens, max_length_for(task, loaded))
        if len(features) != 1 or len(features[0]) < limit:
            return None
        length = task.untruncated_length(loaded.tokenizer, item)  # None: the task never truncates
        if length is None or length <= limit:
            return None
        return ItemResult(error=ItemError.INVALID_INPUT, detail=f"text is {length} tokens; at most {limit} are allowed")


def _work_logged(worker: InferenceWorker) -> bool:
    """`worker.work()`, with a bug in a step logged rather than ending the loader thread (the models it
    loaded keep serving; the step's model stays unserved, and the pool's progress timeout restarts the worker)."""
    try:
        return worker.work()
    except Exception:
        logger.exception("worker %d: a load or compile step failed", worker.spec.index)
        return True


def _load_forever(worker: InferenceWorker, wake: threading.Event) -> None:
    """The loader thread: work through what the pool adds; sleep when there is nothing to load or compile."""
    import torch

    torch.set_num_threads(worker.spec.threads)  # OpenMP's thread count is per calling thread
    while True:
        wake.clear()
        worked = False
        while _work_logged(worker):
            worked = True
        if worked:
            # The loaded models and compiled graphs live as long as the worker: frozen, no full collection walks them.
            gc.freeze()
        wake.wait()


def worker_main(spec: WorkerSpec, inbox: Connection, outbox: Connection) -> None:
    """Process entry point: set threads, start the loader thread, then serve batches until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pool shuts workers down; Ctrl-C goes to the parent
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s worker{spec.index}: %(message)s")
    # Before torch starts its threads, which inherit it: inference is a normal task, whatever the API process is.
    set_batch_scheduling(False)
    import torch

    torch.set_num_threads(spec.threads)
    sending = threading.Lock()  # two threads answer the pool: each message must reach the pipe whole

    def send(message: Any) -> None:
        with sending:
            outbox.send(message)

    worker = InferenceWorker(spec, send)
    wake = threading.Event()
    try:
        worker.add(spec.artifacts)
        threading.Thread(target=_load_forever, args=(worker, wake), name="qbert-loader", daemon=True).start()
        wake.set()
        send(WorkerStarted(spec.index, os.getpid()))
    except Exception as exc:  # report why, then exit: the pool restarts with back-off
        logger.exception("worker %d failed to start", spec.index)
        send(WorkerFailed(spec.index, f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            request = inbox.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if request is None:
            return
        if isinstance(request, LoadModels):
            worker.add(request.refs)
            wake.set()
            continue
        if isinstance(request, HoldCompiles):
            worker.hold_compiles = request.hold
            wake.set()
            continue
        try:
            send(worker.run(request))
        except Exception as exc:  # a bug or a kernel error fails this batch, not the worker
            logger.exception("batch %s failed", getattr(request, "batch_id", "?"))
            failed = ItemResult(error=ItemError.INFERENCE_FAILED, detail=f"{type(exc).__name__}: {exc}")
            send(BatchDone(request.batch_id, (failed,) * len(request.payloads), 0.0))
