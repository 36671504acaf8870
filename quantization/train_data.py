"""Training mini-batches from a task's examples: for QAT and for the Hessian's data batches."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch

from quantization.feature_tensors import collate_training
from quantization.tasks import Example, Feature, Task

T = TypeVar("T")


def subsample(items: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """A seeded random subset of `limit` items (all of them, in order, when `limit` is None or not smaller)."""
    if limit is None or limit >= len(items):
        return list(items)
    return random.Random(seed).sample(list(items), limit)


def encode_training_set(
    task: Task, tokenizer: Any, examples: Sequence[Example], max_length: int, label2id: dict[str, int]
) -> list[Feature]:
    return [f for ex in examples for f in task.training_features(tokenizer, ex, max_length, label2id)]


def fixed_batches(features: Sequence[Feature], batch_size: int, pad_token_id: int = 0) -> list[dict[str, torch.Tensor]]:
    """Consecutive batches of `features` in order, with targets, the last one possibly smaller: for statistics
    (the Hessian's mini-batches, calibration), where every feature counts once and order does not matter."""
    return [collate_training(features[i : i + batch_size], pad_token_id) for i in range(0, len(features), batch_size)]


def training_batches(
    features: Sequence[Feature], batch_size: int, seed: int, pad_token_id: int = 0, pool_batches: int = 50
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless padded batches with targets, reshuffled every epoch (seeded).

    Batches are cut from pools of `pool_batches` batches sorted by length, then shuffled: each batch pads to a
    length close to its own sequences' (half the compute of random batches on SST-2's short sentences) while
    every epoch still visits the features in a new random order. A pool's remainder short of a batch is dropped.
    """
    if len(features) < batch_size:
        raise ValueError(f"{len(features)} training features cannot fill a batch of {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(features)))
    pool = batch_size * pool_batches
    while True:
        rng.shuffle(order)
        for first in range(0, len(order), pool):
            ranked = sorted(order[first : first + pool], key=lambda i: len(features[i]))
            batches = [ranked[i : i + batch_size] for i in range(0, len(ranked) - batch_size + 1, batch_size)]
            rng.shuffle(batches)
            for batch in batches:
                yield collate_training([features[i] for i in batch], pad_token_id)
