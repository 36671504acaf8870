"""Messages between the pool (parent process) and its worker processes.

Plain dataclasses of strings, numbers and the tasks' own input/prediction dataclasses. They cross a
pipe between processes this service spawned itself; artifacts are never loaded this way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ArtifactRef:
    task: str
    precision: str
    path: Path


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    threads: int
    artifacts: tuple[ArtifactRef, ...]
    max_tokens: int
    max_batch_size: int
    backend: str = "eager"


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


@dataclass(frozen=True)
class ModelFailure:
    task: str
    precision: str
    reason: str


@dataclass(frozen=True)
class WorkerReady:
    index: int
    pid: int
    models: tuple[ModelInfo, ...]
    failures: tuple[ModelFailure, ...] = ()


# A model's steps in a starting worker, in order (`pending`: not reached yet).
MODEL_STATES = ("pending", "loading", "loaded", "compiling", "ready", "refused")


@dataclass(frozen=True)
class WorkerProgress:
    """A starting worker moved on: one model began loading, was loaded or refused, or began compiling.

    Each message restarts the worker's start timeout, which measures lack of progress, not total time.
    """

    index: int
    task: str
    precision: str
    state: str  # one of MODEL_STATES
    done: int  # models through setup before this step
    total: int


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
    payloads: tuple[Any, ...]  # str for sst2 and ner, (question, context) for qa


@dataclass(frozen=True)
class ItemResult:
    """One input's prediction, or the reason it has none (`error` is a service error code)."""

    value: Any = None
    error: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class BatchDone:
    batch_id: int
    results: tuple[ItemResult, ...]
    inference_seconds: float
    features: int = 0  # model sequences run (a long QA context spans several windows)
