"""The task contract shared by offline evaluation and the service.

A task turns one input into one or more model features (`preprocess`), and the model's outputs
for those features back into one prediction (`postprocess`). Evaluation and serving call the
same two functions, so a served answer equals the evaluated answer for the same input.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

InputT = TypeVar("InputT")
PredictionT = TypeVar("PredictionT")


@dataclass
class Feature:
    """One model input sequence; `meta` carries what the task's postprocess needs back."""

    input_ids: list[int]
    token_type_ids: list[int]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class Example(Generic[InputT]):
    """An evaluation example: the task input and its gold answer."""

    input: InputT
    gold: Any


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


class Task(ABC, Generic[InputT, PredictionT]):
    """A task: data reading, pre/post-processing and its metric.

    Each kind of task (sequence classification, token classification, question answering) owns every fact about
    itself that the service, evaluation, the load test and the reports need: what is read from this class, never
    decided elsewhere by the task's name.
    """

    name: str
    kind: str  # "sequence-classification", "token-classification" or "question-answering"
    metrics: tuple[str, ...]
    primary_metric: str  # the one metric reports and accuracy targets use
    architecture_suffix: str  # e.g. "ForSequenceClassification"
    max_length: int = 512  # tokens per model sequence, capped by the model's position embeddings
    accepts_batches: bool = True  # whether a request may carry several inputs (`{"texts": [...]}`)
    samples: tuple[Any, ...] = ()  # request payloads a load test may send where no evaluation data is at hand

    @property
    def route(self) -> str:
        """The HTTP route that predicts with this task's models."""
        return f"/predict/{self.name}"

    def input_from_payload(self, payload: Any) -> InputT:
        """The task's input from a request payload (what `payload_of` and the HTTP routes produce)."""
        return payload

    def payload_of(self, item: InputT) -> Any:
        """The request payload that carries `item` (the inverse of `input_from_payload`)."""
        return item

    def request_body(self, payload: Any) -> dict[str, Any]:
        """The JSON body of a request for one payload."""
        return {"text": payload}

    def refuses_long_input(self, payload: Any) -> bool:
        """Whether an input longer than the model's window is refused (422) rather than cut to it."""
        return True

    @abstractmethod
    def read_examples(self, path: Path) -> list[Example[InputT]]:
        """Examples from a file in the task's standard format."""

    @abstractmethod
    def preprocess(self, tokenizer: Any, item: InputT, max_length: int) -> list[Feature]:
        """Model features for one input."""

    @abstractmethod
    def split_outputs(self, outputs: Any, features: Sequence[Feature]) -> list[Any]:
        """Per-feature outputs (unpadded) from one batched forward pass."""

    @abstractmethod
    def postprocess(
        self, item: InputT, features: Sequence[Feature], outputs: Sequence[Any], labels: list[str]
    ) -> PredictionT:
        """One prediction from the outputs of the input's features."""

    @abstractmethod
    def score(self, examples: Sequence[Example[InputT]], predictions: Sequence[PredictionT]) -> dict[str, float]:
        """Metric name -> value in [0, 1]."""

    def untruncated_length(self, tokenizer: Any, item: InputT) -> int | None:
        """Tokens of `item` as one sequence without truncation; None where the task never truncates
        (QA covers long contexts with windows)."""
        return None

    def split_name(self, path: Path, n: int) -> str:
        return f"{path.name} ({n} examples)"

    def read_training_examples(self, path: Path, **options: Any) -> list[Example[InputT]]:
        """Examples with what training needs in `gold` (by default what evaluation reads)."""
        return self.read_examples(path, **options)

    @abstractmethod
    def training_features(
        self, tokenizer: Any, example: Example[InputT], max_length: int, label2id: dict[str, int]
    ) -> list[Feature]:
        """Features whose `meta["targets"]` hold the model's training targets by keyword (e.g. `labels`): an int
        per sequence, a float (regression) or tuple of floats (multi-label) per sequence, or a list with one int per
        token (-100 where no loss is taken)."""


IGNORE_INDEX = -100  # positions no loss is taken on (transformers' convention)
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A training batch without its targets: what a forward pass that computes no loss takes."""
    return {key: batch[key] for key in MODEL_INPUTS if key in batch}


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
