"""Features as padded tensors: what evaluation, serving and training feed a model (torch: workers and builds only)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from quantization.architectures import INPUT_NAMES
from quantization.tasks.base import IGNORE_INDEX, Feature


def pad_features(features: Sequence[Feature], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad to the longest feature of the batch (never to the model's maximum)."""
    longest = max(len(f) for f in features)
    input_ids = torch.full((len(features), longest), pad_token_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(features), longest), dtype=torch.long)
    attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
    for row, feature in enumerate(features):
        n = len(feature)
        input_ids[row, :n] = torch.tensor(feature.input_ids)
        token_type_ids[row, :n] = torch.tensor(feature.token_type_ids)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A training batch without its targets: what a forward pass that computes no loss takes."""
    return {key: batch[key] for key in INPUT_NAMES if key in batch}


def collate_training(features: Sequence[Feature], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Padded model inputs plus the targets of `training_features`, per-token targets padded with -100."""
    batch = pad_features(features, pad_token_id)
    longest = batch["input_ids"].shape[1]
    for key in features[0].meta["targets"]:
        values = [f.meta["targets"][key] for f in features]
        if isinstance(values[0], tuple | float):  # a vector per sequence (multi-label) or a regression target
            batch[key] = torch.tensor(values, dtype=torch.float32)
        elif isinstance(values[0], list):
            padded = torch.full((len(values), longest), IGNORE_INDEX, dtype=torch.long)
            for row, value in enumerate(values):
                padded[row, : len(value)] = torch.tensor(value, dtype=torch.long)
            batch[key] = padded
        else:
            batch[key] = torch.tensor(values, dtype=torch.long)
    return batch
