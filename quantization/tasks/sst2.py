"""SST-2 sentiment classification: GLUE TSV (`sentence<TAB>label`), accuracy."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from quantization.tasks.base import Example, Feature, Task


@dataclass(frozen=True)
class ClassPrediction:
    label: str
    score: float
    scores: dict[str, float]


class SST2Task(Task[str, ClassPrediction]):
    name = "sst2"
    kind = "sequence-classification"
    metrics = ("accuracy",)
    primary_metric = "accuracy"
    architecture_suffix = "ForSequenceClassification"
    samples = ("a gripping , beautifully acted film .", "it 's slow -- very , very slow .", "a charming journey .")

    def read_examples(self, path: Path) -> list[Example[str]]:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            if reader.fieldnames is None or not {"sentence", "label"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: expected a GLUE-style TSV with `sentence` and `label` columns")
            return [Example(row["sentence"], int(row["label"])) for row in reader]

    def preprocess(self, tokenizer: Any, item: str, max_length: int) -> list[Feature]:
        encoded = tokenizer(item, truncation=True, max_length=max_length)
        return [Feature(encoded["input_ids"], encoded["token_type_ids"])]

    def training_features(
        self, tokenizer: Any, example: Example[str], max_length: int, label2id: dict[str, int]
    ) -> list[Feature]:
        (feature,) = self.preprocess(tokenizer, example.input, max_length)
        feature.meta["targets"] = {"labels": int(example.gold)}  # GLUE labels index the model's labels
        return [feature]

    def untruncated_length(self, tokenizer: Any, item: str) -> int:
        return len(tokenizer(item)["input_ids"])

    def split_outputs(self, outputs: Any, features: Sequence[Feature]) -> list[Any]:
        return list(outputs.logits.float())

    def postprocess(
        self, item: str, features: Sequence[Feature], outputs: Sequence[Any], labels: list[str]
    ) -> ClassPrediction:
        probs = torch.softmax(outputs[0], dim=-1)
        best = int(probs.argmax())
        return ClassPrediction(
            labels[best], float(probs[best]), {lab: float(p) for lab, p in zip(labels, probs, strict=True)}
        )

    def score(self, examples: Sequence[Example[str]], predictions: Sequence[ClassPrediction]) -> dict[str, float]:
        # Gold labels are indices into the label list; the prediction names its label.
        correct = sum(
            int(pred.label == _label_of(pred, ex.gold)) for ex, pred in zip(examples, predictions, strict=True)
        )
        return {"accuracy": correct / len(examples)}


def _label_of(prediction: ClassPrediction, gold_index: int) -> str:
    return list(prediction.scores)[gold_index]
