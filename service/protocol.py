"""Messages between the pool (parent process) and its worker processes.

Plain dataclasses of strings, numbers and the tasks' own input/prediction dataclasses. They cross a
pipe between processes this service spawned itself; artifacts are never loaded this way.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ArtifactRef:
    """An artifact served as (task, precision). A stand-in's folder is another precision's (`Catalog.stand_ins`)."""

    task: str
    precision: str
    path: Path


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    threads: int
    artifacts: tuple[ArtifactRef, ...]
    max_tokens: int
    max_batch_tokens: int  # padded tokens per forward pass (a pool batch of QA inputs spans several windows each)
    backend: str = "eager"
    openvino_activation_group_size: int | None = None  # None: the openvino backend's default
    attention_precision: str = "float32"  # the packed backend's attention products (ATTENTION_PRECISIONS)
    hold_compiles: bool = False  # load and serve eagerly, but compile only once told to (`HoldCompiles(False)`)


@dataclass(frozen=True)
class ModelInfo:
    """What a worker loaded for one (task, precision): sizes, version and recorded accuracy."""

    task: str
    precision: str
    model: str  # checkpoint name @ the artifact's weights digest: changes whenever the weights do
    bits_per_weight: float
    packed_bytes: int
    runtime_bytes: int
    fp32_bytes: int
    load_seconds: float
    labels: tuple[str, ...]
    accuracy: tuple[dict[str, Any], ...]
    backend: str = "eager"
    artifact: str = ""  # the artifact folder's precision name: a stand-in's differs from `precision`


@dataclass(frozen=True)
class LoadModels:
    """Pool to worker: load these artifacts too (built since the worker started), then serve them."""

    refs: tuple[ArtifactRef, ...]


@dataclass(frozen=True)
class HoldCompiles:
    """Pool to worker: hold back (or resume) compiling. While the first start builds each task's default model,
    a compile on the same cores would slow those builds several times over (both run multi-threaded)."""

    hold: bool


@dataclass(frozen=True)
class WorkerStarted:
    """The worker process runs and takes batches for the models it serves (it loads others meanwhile)."""

    index: int
    pid: int


# A model's steps in a worker, in order: `loading` its artifact, `compiling` (served eagerly meanwhile), `ready`.
WORKER_MODEL_STATES = ("loading", "compiling", "ready", "refused")


@dataclass(frozen=True)
class WorkerProgress:
    """A worker began a step on one model (`loading` or `compiling`); with no model (`task` ""), it is starting.

    Each message restarts the worker's start timeout, which measures lack of progress, not total time.
    """

    index: int
    task: str
    precision: str
    state: str


@dataclass(frozen=True)
class ModelServing:
    """The worker answers batches for this model from now on: eagerly while `warming` (its compiled graphs are
    being built), then, in a second message, on the backend `info.backend` names."""

    index: int
    info: ModelInfo
    warming: bool = False


@dataclass(frozen=True)
class ModelRefused:
    """The worker could not load this artifact (corrupt, incompatible); it serves the others.

    `still_serving`: the artifact that answered for this model before (a stand-in) still answers for it."""

    index: int
    task: str
    precision: str
    reason: str
    still_serving: bool = False


@dataclass(frozen=True)
class WorkerFailed:
    """The worker could not start at all (it exits after sending this)."""

    index: int
    reason: str


@dataclass(frozen=True)
class RunBatch:
    batch_id: int
    task: str
    precision: str
    payloads: tuple[Any, ...]  # the kind's payloads (`Task.input_from_payload`): texts, {"text", "text_pair"}, (q, c)


class ItemError(StrEnum):
    """Why a worker has no prediction for one input: the codes of `service.errors` it can cause, shared so that
    a misspelt code is an AttributeError here rather than a silent 500 in the API process."""

    INVALID_INPUT = "invalid_input"
    INFERENCE_FAILED = "inference_failed"


@dataclass(frozen=True)
class ItemResult:
    """One input's prediction, or the reason it has none."""

    value: Any = None
    error: ItemError | None = None
    detail: str = ""


@dataclass(frozen=True)
class BatchDone:
    batch_id: int
    results: tuple[ItemResult, ...]
    inference_seconds: float
    features: int = 0  # model sequences run (a long QA context spans several windows)
