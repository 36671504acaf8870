"""`qbert hessian`'s measurement: the Hessian sensitivity of every encoder block of a task's checkpoint on fixed
batches of its training split, and the record kept beside the results. No file I/O here: the caller writes them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quantization.build import load_checkpoint, training_set
from quantization.catalog import TaskEntry
from quantization.hessian import BlockSensitivity, HutchinsonConfig, PowerIterationConfig, block_sensitivities
from quantization.sensitivity import batch_losses
from quantization.train_data import fixed_batches


@dataclass(frozen=True)
class SensitivityStudy:
    """How a task's blocks are measured: Q-BERT asks for at least 10 independent mini-batches."""

    batches: int = 10
    batch_size: int = 16
    max_length: int = 128
    max_iterations: int = 100
    tolerance: float = 1e-3  # relative eigenvalue change that stops the power iteration
    trace_samples: int = 0  # Hutchinson samples at most per batch (0: no trace)
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.batches, self.batch_size, self.max_length, self.max_iterations) < 1:
            raise ValueError("batches, batch_size, max_length and max_iterations must be >= 1")
        if self.tolerance <= 0 or self.trace_samples < 0:
            raise ValueError("tolerance must be > 0 and trace_samples >= 0")

    @property
    def power(self) -> PowerIterationConfig:
        return PowerIterationConfig(max_iterations=self.max_iterations, tolerance=self.tolerance, seed=self.seed)

    @property
    def trace(self) -> HutchinsonConfig | None:
        if not self.trace_samples:
            return None
        floor = min(HutchinsonConfig.min_samples, self.trace_samples)
        return HutchinsonConfig(max_samples=self.trace_samples, min_samples=floor, seed=self.seed)


def measure_sensitivity(
    entry: TaskEntry, study: SensitivityStudy, on_block: Callable[[BlockSensitivity], None] | None = None
) -> tuple[list[BlockSensitivity], dict[str, Any]]:
    """Every encoder block's sensitivity on `study.batches` fixed training batches, and the record of how."""
    checkpoint = load_checkpoint(entry.checkpoint_location(), entry.make_task(), attn_implementation="eager")
    wanted = study.batches * study.batch_size
    data = training_set(checkpoint, entry, wanted, study.max_length, study.seed)
    features = data.features[:wanted]
    if len(features) < wanted:
        raise ValueError(f"{data.split} gives {len(features)} features; {wanted} are needed")
    batches = fixed_batches(features, study.batch_size, data.pad_token_id)
    power, trace = study.power, study.trace
    started = time.perf_counter()
    results = block_sensitivities(
        checkpoint.model.eval(), batch_losses(checkpoint.model, batches), power, trace, on_block=on_block
    )
    meta = {
        "task": entry.task,
        "checkpoint_sha256": checkpoint.sha256,
        "split": entry.train_split(),
        "batches": study.batches,
        "batch_size": study.batch_size,
        "max_length": study.max_length,
        "power_iteration": {"max_iterations": power.max_iterations, "tolerance": power.tolerance},
        "hutchinson": {"max_samples": trace.max_samples, "tolerance": trace.tolerance} if trace else None,
        "seed": study.seed,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return results, meta
