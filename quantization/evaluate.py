"""Batched prediction and evaluation with the tasks' own pre/post-processing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from quantization.runtime import LoadedModel
from quantization.tasks import Example, Feature, Task, pad_features

MAX_LENGTH = {"sst2": 512, "ner": 512, "qa": 384}


def max_length_for(task: Task, model_max: int = 512) -> int:
    return min(MAX_LENGTH.get(task.name, model_max), model_max)


def forward_features(loaded: LoadedModel, task: Task, features: Sequence[Feature]) -> list[Any]:
    """One padded forward pass over `features`; per-feature outputs."""
    batch = pad_features(features, loaded.tokenizer.pad_token_id or 0)
    with torch.inference_mode():
        outputs = loaded.model(**batch)
    return task.split_outputs(outputs, features)


def predict(
    loaded: LoadedModel,
    task: Task,
    inputs: Sequence[Any],
    batch_size: int = 32,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[Any]:
    """Predictions for `inputs`, batching features of similar length together.

    `on_batch(done, total)` is called after each batch with the number of features it held and
    the total number of features.
    """
    max_length = max_length_for(task)
    per_input = [task.preprocess(loaded.tokenizer, item, max_length) for item in inputs]
    flat = [(i, j) for i, feats in enumerate(per_input) for j in range(len(feats))]
    flat.sort(key=lambda ij: len(per_input[ij[0]][ij[1]]))
    outputs: list[list[Any]] = [[None] * len(feats) for feats in per_input]
    for start in range(0, len(flat), batch_size):
        chunk = flat[start : start + batch_size]
        results = forward_features(loaded, task, [per_input[i][j] for i, j in chunk])
        for (i, j), result in zip(chunk, results, strict=True):
            outputs[i][j] = result
        if on_batch:
            on_batch(len(chunk), len(flat))
    return [
        task.postprocess(item, feats, outs, loaded.labels)
        for item, feats, outs in zip(inputs, per_input, outputs, strict=True)
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
