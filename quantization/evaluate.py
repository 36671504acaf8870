"""Batched prediction and evaluation with the tasks' own pre/post-processing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from quantization.architectures import longest_sequence
from quantization.feature_tensors import pad_features
from quantization.runtime import LoadedModel
from quantization.tasks import Example, Feature, Task


def max_length_for(task: Task, loaded: LoadedModel | None = None) -> int:
    """The task's sequence length, capped by the model's position embeddings."""
    model_max = longest_sequence(loaded.config) if loaded is not None else 512
    return min(task.max_length, model_max)


def forward_features(loaded: LoadedModel, task: Task, features: Sequence[Feature]) -> list[Any]:
    """One padded forward pass over `features`; per-feature outputs."""
    batch = pad_features(features, loaded.tokenizer.pad_token_id or 0)
    with torch.inference_mode():
        outputs = loaded.model(**batch)
    return task.split_outputs(outputs, features)


def prepare(loaded: LoadedModel, task: Task, item: Any) -> list[Feature]:
    """The model features of one input (the task's own preprocessing)."""
    return task.preprocess(loaded.tokenizer, item, max_length_for(task, loaded))


# What one forward pass costs beyond its tokens, in tokens: Python, dispatch and each kernel's fixed work (MiniLM-L6,
# compiled w8, 1 thread: a short forward costs about what 32 more tokens do; README, serving figures).
FORWARD_OVERHEAD_TOKENS = 32


def plan_forward_batches(
    lengths: Sequence[int],
    max_batch: int | None,
    overhead_tokens: int = FORWARD_OVERHEAD_TOKENS,
    max_tokens: int | None = None,
) -> list[list[int]]:
    """Indices of `lengths` in forward batches of at most `max_batch` sequences (None: any number) and at most
    `max_tokens` padded tokens (sequences × the longest; a longer sequence runs alone), padding as little as is
    worth it.

    A forward pass pads its sequences to the longest, so it costs about `overhead_tokens + n * longest`.
    Sequences are taken in order of length and cut into the contiguous runs that minimise the total cost
    (dynamic programming): a batch of short and long sentences runs as two or three passes rather than one
    padded to the longest, while same-length sequences stay in full batches.
    """
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    best = [0.0] + [float("inf")] * len(order)  # best[j]: cost of the first j sequences
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        longest = lengths[order[end - 1]]
        most = end if max_batch is None else max_batch
        if max_tokens is not None:
            most = min(most, max(1, max_tokens // max(longest, 1)))
        for start in range(max(0, end - most), end):
            cost = best[start] + overhead_tokens + (end - start) * longest
            if cost < best[end]:
                best[end], cut[end] = cost, start
    batches, end = [], len(order)
    while end:
        batches.append(order[cut[end] : end])
        end = cut[end]
    return batches[::-1]


def run_features(
    loaded: LoadedModel,
    task: Task,
    per_input: Sequence[Sequence[Feature]],
    batch_size: int | None,
    on_batch: Callable[[int, int], None] | None = None,
    max_tokens: int | None = None,
) -> list[list[Any]]:
    """Per-input, per-feature outputs, in forward passes of at most `batch_size` similar-length features (None: any
    number) and at most `max_tokens` padded tokens (None: any number).

    Each forward pass pads to the longest feature of its batch (see `plan_forward_batches`). `on_batch(done,
    total)` is called after each pass with the number of features it held and the total number of features.
    """
    flat = [(i, j) for i, feats in enumerate(per_input) for j in range(len(feats))]
    outputs: list[list[Any]] = [[None] * len(feats) for feats in per_input]
    lengths = [len(per_input[i][j]) for i, j in flat]
    for batch in plan_forward_batches(lengths, batch_size, max_tokens=max_tokens):
        chunk = [flat[k] for k in batch]
        results = forward_features(loaded, task, [per_input[i][j] for i, j in chunk])
        for (i, j), result in zip(chunk, results, strict=True):
            outputs[i][j] = result
        if on_batch:
            on_batch(len(chunk), len(flat))
    return outputs


def finish(loaded: LoadedModel, task: Task, item: Any, features: Sequence[Feature], outputs: Sequence[Any]) -> Any:
    """One input's prediction from its features' outputs (the task's own postprocessing)."""
    return task.postprocess(item, features, outputs, loaded.labels)


def predict(
    loaded: LoadedModel,
    task: Task,
    inputs: Sequence[Any],
    batch_size: int = 32,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[Any]:
    """Predictions for `inputs`: prepare, run, finish: the same three steps the service's workers take."""
    per_input = [prepare(loaded, task, item) for item in inputs]
    outputs = run_features(loaded, task, per_input, batch_size, on_batch)
    return [
        finish(loaded, task, item, feats, outs) for item, feats, outs in zip(inputs, per_input, outputs, strict=True)
    ]


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]
    n: int
    seconds: float


def evaluate(
    loaded: LoadedModel,
    task: Task,
    examples: Sequence[Example],
    batch_size: int = 32,
    on_batch: Callable[[int, int], None] | None = None,
) -> EvalResult:
    started = time.perf_counter()
    predictions = predict(loaded, task, [ex.input for ex in examples], batch_size, on_batch)
    return EvalResult(task.score(examples, predictions), len(examples), time.perf_counter() - started)


def latency_b1_ms(loaded: LoadedModel, task: Task, inputs: Sequence[Any], warmup: int = 3) -> float:
    """Median end-to-end milliseconds (pre-processing, forward, post-processing) at batch size 1."""
    for item in inputs[:warmup]:
        predict(loaded, task, [item], batch_size=1)
    timings = []
    for item in inputs:
        started = time.perf_counter()
        predict(loaded, task, [item], batch_size=1)
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)
