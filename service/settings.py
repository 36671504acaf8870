"""Service settings: environment variables with the `QBERT_` prefix (pydantic-settings)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from quantization.catalog import artifacts_dir, load_catalog
from service.cgroup import cgroup_cpu_limit
from service.protocol import ArtifactRef, WorkerSpec

TASKS = ("sst2", "ner", "qa")  # the built-in models; the catalog may add the user's own (`qbert add`)


def catalog_task_names() -> list[str]:
    """Every model the catalog names, the user's own included; the built-in three where there is no catalog."""
    try:
        return list(load_catalog().tasks)
    except FileNotFoundError:
        return list(TASKS)


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by its cgroup's CPU quota (a container's CPU
    limit), so that workers' intra-op threads never outnumber the CPUs the quota pays for."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return min(cores, limit) if limit is not None else cores


def _split_csv(value: object) -> object:
    """`QBERT_TASKS=sst2,ner` as well as a JSON list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ServiceSettings(BaseSettings):
    """Every knob of the service; each field is read from `QBERT_<FIELD>` (e.g. `QBERT_WORKERS=2`)."""

    model_config = SettingsConfigDict(env_prefix="QBERT_", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    artifacts: Path = Field(default_factory=artifacts_dir, description="folder of <task>/<precision>/ artifacts")
    tasks: Annotated[list[str], NoDecode] = Field(
        default_factory=catalog_task_names, description="models to serve by name (default: every catalog model)"
    )
    precisions: Annotated[list[str] | None, NoDecode] = Field(
        None, description="precisions to load for every task (default: every artifact found but the catalog's study)"
    )
    default_precision: str = "w8"

    build: bool = Field(
        False,
        description="build missing or stale catalog artifacts in a builder process while serving (`qbert serve` "
        "sets it unless --no-build); each model joins the service when it is built and evaluated",
    )

    workers: int = Field(1, ge=1, le=64, description="worker processes, each loading every artifact")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per worker (default: cores / workers)")
    backend: Literal["aot", "packed", "compiled", "eager", "openvino"] = Field(
        "aot",
        description="aot: our VNNI kernels on the codes kept packed at their own bits, the model compiled ahead of "
        "time by AOTInductor and run from C++ (fastest and smallest: README, bench; where it cannot be, packed); "
        "packed: the same kernels under torch.compile (where the CPU or compiler cannot run them, compiled); "
        "compiled: torch.compile with oneDNN int8 (codes unpacked to int8); all three compile at start (cached on "
        "disk), serving eager meanwhile; eager: the reference",
    )
    openvino_activation_group_size: int = Field(
        128,
        ge=0,
        multiple_of=16,
        description="openvino backend: activations quantized to int8 by the plugin with one scale per this many "
        "input channels (int8 kernels; 2/3-bit codes kept as 4-bit); 0: the artifact's per-token formula exactly, "
        "in float32, every width packed at its own bits (slower)",
    )
    attention_precision: Literal["float32", "bf16", "int16"] = Field(
        "float32",
        description="packed and aot backends: the operands of attention's two products (sums, softmax and outputs "
        "stay float32). int16 (AVX-512 VNNI codes, 12 to 15 bits per operand) and bf16 (where the CPU has AVX-512 "
        "BF16, else float32) are faster; both move a metric by a few close calls more than float32 does "
        "(SST-2 up to 0.46 pt from the reference with int16, 0.34 with bf16, where float32 stays within 0.2: "
        "README)",
    )
    worker_start_timeout_s: float = Field(
        300.0,
        gt=0,
        description="seconds a starting worker may go without progress (a model loaded, a compile begun) before "
        "it is killed and restarted; total start time is not limited",
    )
    api_scheduling: Literal["batch", "normal"] = Field(
        "batch",
        description="batch: the API process runs as SCHED_BATCH (Linux), so its wakeups do not preempt a worker's "
        "batch on a shared core; requests are then read in bursts (less CPU each) and inference is not interrupted",
    )

    max_batch_size: int = Field(16, ge=1, le=256, description="inputs per batch of one (task, precision)")
    max_batch_tokens: int = Field(
        6144,
        ge=64,
        description="padded tokens per forward pass (sequences × the longest): a batch's inputs run in as many "
        "passes as this needs (a QA input spans several windows); the default holds 16 full 384-token windows",
    )
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        description="how long the oldest queued input waits for batch-mates (longer: fuller batches but idler workers)",
    )
    max_queue: int = Field(512, ge=1, description="queued inputs over all keys before requests get 429")
    request_timeout_s: float = Field(30.0, gt=0, description="per-request deadline (504 past it)")

    max_texts: int = Field(64, ge=1, description="texts in one /predict/sst2 or /predict/ner request")
    max_text_chars: int = Field(10_000, ge=1)
    max_context_chars: int = Field(100_000, ge=1, description="QA context; long contexts run in strided windows")
    max_tokens: int = Field(
        512,
        ge=8,
        description='tokens per text for sst2, and for classifiers asked `"truncation": "error"` (longer → 422); NER '
        "and QA read long texts in overlapping windows, other classifiers truncate",
    )
    max_body_bytes: int = Field(2_000_000, ge=1024, description="request bodies over this get 413")

    api_key: SecretStr | None = Field(None, description="when set, predict endpoints need `Authorization: Bearer`")
    api_key_protects_ops: bool = Field(False, description="whether /healthz, /readyz and /metrics need the key too")

    @field_validator("tasks", "precisions", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: list[str]) -> list[str]:
        known = catalog_task_names()
        unknown = sorted(set(value) - set(known))
        if unknown or not value:
            raise ValueError(f"tasks must be a non-empty subset of {known}; got unknown {unknown}")
        return value

    @model_validator(mode="after")
    def _default_precision_is_loaded(self) -> ServiceSettings:
        if self.precisions is not None and self.default_precision not in self.precisions:
            raise ValueError(f"default_precision {self.default_precision!r} is not among precisions {self.precisions}")
        return self

    @property
    def threads_per_worker(self) -> int:
        return self.torch_threads or max(1, available_cores() // self.workers)

    def worker_spec(
        self, index: int, artifacts: tuple[ArtifactRef, ...], threads: int, hold_compiles: bool = False
    ) -> WorkerSpec:
        """What a worker (a pool's process or a Ray replica) is told: these settings' limits and backend."""
        return WorkerSpec(
            index=index,
            threads=threads,
            artifacts=artifacts,
            max_tokens=self.max_tokens,
            max_batch_tokens=self.max_batch_tokens,
            backend=self.backend,
            openvino_activation_group_size=self.openvino_activation_group_size,
            attention_precision=self.attention_precision,
            hold_compiles=hold_compiles,
        )

    @property
    def build_threads(self) -> int:
        """The builder's torch threads: every core (the first start's builds are what every request waits for)."""
        return self.torch_threads or available_cores()

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0
