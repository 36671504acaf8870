"""The ops routes' response models (`/models`, errors). Each kind's predict request and response models live in its
module under `quantization/tasks/`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class AccuracyRow(BaseModel):
    metric: str
    value: float
    split: str
    n: int


class BuildProgressEntry(BaseModel):
    done: int
    total: int = Field(description="0 where the step's size is not known")
    unit: str = ""


class LatencyEntry(BaseModel):
    p50_ms: float
    p95_ms: float
    requests: int = Field(description="the recent successful requests these percentiles come from (at most 1,024)")


class ModelEntry(BaseModel):
    task: str
    precision: str
    model: str
    status: str = Field(description="`loaded` (serving), `loading`, or `refused` with the reason")
    state: str = Field(
        "pending",
        description="the model's step: `pending` (queued to build), `building`, `evaluating`, `loading`, "
        "`compiling` (served eagerly meanwhile), `ready`, `refused` (a worker could not load it) or `failed` (its "
        "build failed)",
    )
    serving: bool = Field(False, description="whether requests for it are answered now (else 503 with Retry-After)")
    progress: BuildProgressEntry | None = Field(None, description="while building or evaluating: how far")
    artifact: str | None = Field(
        None,
        description="the artifact that answers, by its precision name: this model's own, or its stand-in (built in "
        "seconds) while this one is still being built",
    )
    bits_per_weight: float | None = None
    packed_bytes: int | None = None
    runtime_bytes: int | None = None
    fp32_bytes: int | None = None
    load_seconds: float | None = None
    backend: str | None = Field(
        None,
        description="how the model executes: `packed` (our kernels on the packed codes), `aot` (the packed model "
        "compiled ahead of time), `compiled` (torch.compile), `eager` (the reference), `packed-eager` (packed, while "
        "it compiles) or `openvino`",
    )
    accuracy: list[AccuracyRow] = Field(default_factory=list)
    latency: LatencyEntry | None = Field(
        None, description="end-to-end milliseconds of its recent requests at the API (null until it has answered one)"
    )
    reason: str | None = None


class ModelsResponse(BaseModel):
    default_precision: str
    models: list[ModelEntry]


class ErrorResponse(BaseModel):
    error: str
    detail: str
    available: Any = None
