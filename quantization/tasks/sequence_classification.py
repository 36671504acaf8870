"""Sequence classification: one text or a pair of texts -> labels (single-label, multi-label) or a score (regression).

Evaluation data is a GLUE-style TSV whose text, pair and label columns are named by the model's entry (SST-2:
`sentence` and `label`; MNLI: `sentence1`, `sentence2`, `label`). A label cell holds a label's name from the
checkpoint's `id2label` or its index; multi-label cells list them separated by commas; regression cells hold numbers.
The metric: accuracy (single-label), micro F1 over labels (multi-label), Pearson's r (regression).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from quantization.tasks.base import Example, Feature, Kind, Task, TensorSpec, TextToCheck
from quantization.tasks.schemas import Answered, TextsRequest

# An input: one text, or a (text, text_pair) pair for models that read two sequences (NLI, paraphrase, similarity).
ClassificationInput = str | tuple[str, str]

PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
TRUNCATION_MODES = ("truncate", "error")
MULTI_LABEL_THRESHOLD = 0.5  # a label applies where its sigmoid reaches this


@dataclass(frozen=True)
class ClassPrediction:
    label: str | None  # the best label; None for regression
    score: float  # the best label's probability, or the regression output
    scores: dict[str, float]  # every label's probability (softmax, or sigmoid for multi-label); empty for regression
    labels: tuple[str, ...] = ()  # multi-label: every label at or above the threshold, most probable first
    truncated: bool = False  # the input was longer than the model's window and was cut to it


# ----- HTTP schemas -----------------------------------------------------------------------------------------------


class SST2Request(TextsRequest):
    """A text classifier that refuses texts longer than its window (SST-2's route, as it always has)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": "a gripping, beautifully acted film"}, {"texts": ["great", "dull"]}]},
    )


class ClassifyRequest(TextsRequest):
    """A text classifier of the user's own: one text, or several answered in order."""

    truncation: Literal["truncate", "error"] = Field(
        "truncate",
        description="an input longer than the model's window: cut to it (the result says `truncated`), or refused "
        "with 422",
    )

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"text": "book a table for two tonight"}]}
    )

    def all_pairs(self) -> list[str] | None:
        """Each text's second text (None: single texts)."""
        return None


class PairClassifyRequest(ClassifyRequest):
    """A text-pair classifier of the user's own (NLI, paraphrase, similarity): each text with its second text."""

    text_pair: str = Field(None, description="with `text`: its second text")  # type: ignore[assignment]
    text_pairs: list[str] = Field(
        None,  # type: ignore[arg-type]
        description="with `texts`: each text's second text, in order",
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": "A man is playing a guitar.", "text_pair": "Someone plays music."}]},
    )

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler(core_schema)
        schema = handler.resolve_ref_schema(schema)
        schema["oneOf"] = [{"required": ["text", "text_pair"]}, {"required": ["texts", "text_pairs"]}]
        return schema

    @model_validator(mode="after")
    def _pairs_match_texts(self) -> PairClassifyRequest:
        if self.text is not None and self.text_pair is None:
            raise ValueError("a pair model reads two texts: give `text_pair` with `text`")
        if self.texts is not None and (self.text_pairs is None or len(self.text_pairs) != len(self.texts)):
            raise ValueError("a pair model reads two texts: give `text_pairs` with `texts`, one for each")
        if (self.text_pair is not None and self.text is None) or (self.text_pairs is not None and self.texts is None):
            raise ValueError("`text_pair` goes with `text`, `text_pairs` with `texts`")
        return self

    def all_pairs(self) -> list[str] | None:
        return [self.text_pair] if self.text_pair is not None else list(self.text_pairs or [])


class ClassResult(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class SST2Response(Answered):
    results: list[ClassResult]


class ClassifyResult(BaseModel):
    label: str | None = Field(description="the most probable label; null for a regression model")
    score: float = Field(description="the label's probability, or a regression model's output")
    scores: dict[str, float] = Field(description="every label's probability (sigmoid each for multi-label)")
    labels: list[str] | None = Field(
        None, description="multi-label models: every label whose probability reaches 0.5, most probable first"
    )
    truncated: bool = Field(description="the input was longer than the model's window and was cut to it")


class ClassifyResponse(Answered):
    results: list[ClassifyResult]


@dataclass(frozen=True)
class Columns:
    """Where a TSV keeps the text, the optional pair and the label."""

    text: str = "sentence"
    pair: str | None = None
    label: str = "label"

    def __post_init__(self) -> None:
        names = [self.text, self.label] + ([self.pair] if self.pair else [])
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"text, pair and label columns must be distinct non-empty names, got {names}")


@dataclass
class SequenceClassificationTask(Task[ClassificationInput, ClassPrediction]):
    name: str
    columns: Columns = field(default_factory=Columns)
    problem_type: str = "single_label_classification"
    # What an input longer than the model's window gets unless its request says: "truncate" (cut, and the prediction
    # says `truncated`) or "error" (422). A request's payload may say either (`{"truncation": ...}`).
    long_inputs: str = "truncate"
    description: str = ""  # the route's summary ("NAME: classify texts" where empty)

    kind = "sequence-classification"
    architecture_suffix = "ForSequenceClassification"

    def __post_init__(self) -> None:
        if self.long_inputs not in TRUNCATION_MODES:
            raise ValueError(f"long_inputs must be one of {TRUNCATION_MODES}, got {self.long_inputs!r}")
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {PROBLEM_TYPES}, got {self.problem_type!r}")
        self.metrics = {
            "single_label_classification": ("accuracy",),
            "multi_label_classification": ("micro_f1", "subset_accuracy"),
            "regression": ("pearson", "spearman"),
        }[self.problem_type]
        self.primary_metric = self.metrics[0]
        self.samples = (
            (("a gripping , beautifully acted film .", "a film with fine acting ."),)
            if self.reads_pairs
            else ("a gripping , beautifully acted film .", "it 's slow -- very , very slow .", "a charming journey .")
        )

    @property
    def reads_pairs(self) -> bool:
        return self.columns.pair is not None

    @property
    def multi_label(self) -> bool:
        return self.problem_type == "multi_label_classification"

    @property
    def states_truncation(self) -> bool:
        """Whether a request chooses what a long input gets and each result says whether it was cut. A single-text
        model that always refuses long inputs has neither: SST-2's shapes, as they always were."""
        return self.long_inputs == "truncate" or self.reads_pairs

    # ----- HTTP and V2 ----------------------------------------------------------------------------------------

    @property
    def summary(self) -> str:
        what = "pairs of texts" if self.reads_pairs else "texts"
        return self.description or f"{self.name}: classify {what}" + (" (multi-label)" if self.multi_label else "")

    def request_model(self) -> type[BaseModel]:
        if not self.states_truncation:
            return SST2Request
        return PairClassifyRequest if self.reads_pairs else ClassifyRequest

    def response_model(self) -> Any:
        return ClassifyResponse if self.states_truncation else SST2Response

    def request_payloads(self, body: Any) -> list[Any]:
        texts = body.all_texts()
        pairs = body.all_pairs() if isinstance(body, ClassifyRequest) else None
        truncation = body.truncation if isinstance(body, ClassifyRequest) else None
        seconds: list[str | None] = list(pairs) if pairs is not None else [None] * len(texts)
        return [_payload(text, pair, truncation) for text, pair in zip(texts, seconds, strict=True)]

    def request_texts(self, body: Any) -> list[TextToCheck]:
        checks = [TextToCheck(body.where(i), text, "texts") for i, text in enumerate(body.all_texts())]
        pairs = body.all_pairs() if isinstance(body, ClassifyRequest) else None
        checks += [
            TextToCheck(body.where(i, "text_pair", "text_pairs"), p, "text_pairs") for i, p in enumerate(pairs or [])
        ]
        return checks

    def response(self, answered_by: dict[str, str], body: Any, predictions: Sequence[ClassPrediction]) -> BaseModel:
        if not self.states_truncation:
            results = [ClassResult(label=p.label or "", score=p.score, scores=p.scores) for p in predictions]
            return SST2Response(**answered_by, results=results)
        return ClassifyResponse(
            **answered_by,
            results=[
                ClassifyResult(
                    label=p.label,
                    score=p.score,
                    scores=p.scores,
                    labels=list(p.labels) if p.labels or self.multi_label else None,
                    truncated=p.truncated,
                )
                for p in predictions
            ],
        )

    def v2_inputs(self) -> list[TensorSpec]:
        names = ["text", "text_pair"] if self.reads_pairs else ["text"]
        return [TensorSpec(name, "BYTES", (-1,)) for name in names]

    def v2_outputs(self, labels: int) -> list[TensorSpec]:
        if self.problem_type == "regression":
            return [TensorSpec("score", "FP32", (-1,))]
        outputs = [
            TensorSpec("label", "BYTES", (-1,)),
            TensorSpec("score", "FP32", (-1,)),
            TensorSpec("scores", "FP32", (-1, labels)),  # in the order of the metadata's `labels` parameter
        ]
        if self.multi_label:
            outputs.append(TensorSpec("labels", "BYTES", (-1,)))  # each row: a JSON array of the labels that apply
        return outputs

    def v2_payloads(self, inputs: dict[str, list[str]]) -> list[Any]:
        pairs: list[str | None] = list(inputs["text_pair"]) if "text_pair" in inputs else [None] * len(inputs["text"])
        return [_payload(text, pair, None) for text, pair in zip(inputs["text"], pairs, strict=True)]

    def v2_columns(self, labels: list[str], predictions: Sequence[ClassPrediction]) -> dict[str, list[Any]]:
        order = labels or list(predictions[0].scores)
        return {
            "label": [p.label or "" for p in predictions],
            "score": [p.score for p in predictions],
            "scores": [[p.scores.get(label, 0.0) for label in order] for p in predictions],
            "labels": [json.dumps(list(p.labels)) for p in predictions],
        }

    # ----- data ---------------------------------------------------------------------------------

    def read_examples(self, path: Path) -> list[Example[ClassificationInput]]:
        columns = self.columns
        wanted = [columns.text, columns.label] + ([columns.pair] if columns.pair else [])
        with Path(path).open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            if reader.fieldnames is None or not set(wanted) <= set(reader.fieldnames):
                found = list(reader.fieldnames or [])
                raise ValueError(
                    f"{path}: expected a GLUE-style TSV with {' and '.join(f'`{c}`' for c in wanted)} columns; "
                    f"it has {found}"
                )
            examples = []
            for row in reader:
                text = row[columns.text]
                item: ClassificationInput = (text, row[columns.pair]) if columns.pair else text
                examples.append(Example(item, self._gold(row[columns.label], path, reader.line_num)))
            return examples

    def _gold(self, cell: str, path: Path, line: int) -> Any:
        """A regression target as a float; a class as the cell's text (a name or an index, told apart by
        `label_index` once the model's labels are known); multi-label as a tuple of such texts."""
        cell = cell.strip()
        if self.problem_type == "regression":
            try:
                return float(cell)
            except ValueError:
                raise ValueError(f"{path}, line {line}: a regression label must be a number, got {cell!r}") from None
        if self.problem_type == "multi_label_classification":
            return tuple(int(p) if p.isdigit() else p for p in (part.strip() for part in cell.split(",")) if p)
        return int(cell) if cell.isdigit() else cell

    def check_labels(self, examples: Sequence[Example[ClassificationInput]], labels: Sequence[str]) -> None:
        """Raise ValueError naming the first gold label that is not one of the model's (by name or index)."""
        if self.problem_type == "regression":
            if len(labels) != 1:
                raise ValueError(f"a regression model has one output; this one has {len(labels)} labels")
            return
        for number, example in enumerate(examples, start=1):
            golds = example.gold if isinstance(example.gold, tuple) else (example.gold,)
            for gold in golds:
                label_index(gold, labels, where=f"example {number}")

    # ----- features -------------------------------------------------------------------------------

    def preprocess(self, tokenizer: Any, item: ClassificationInput, max_length: int) -> list[Feature]:
        text, pair = item if isinstance(item, tuple) else (item, None)
        encoded = tokenizer(text, pair, truncation=True, max_length=max_length)
        ids = encoded["input_ids"]
        feature = Feature(ids, encoded.get("token_type_ids") or [0] * len(ids))
        if len(ids) >= max_length:
            feature.meta["truncated"] = self.untruncated_length(tokenizer, item) > max_length
        return [feature]

    def untruncated_length(self, tokenizer: Any, item: ClassificationInput) -> int:
        text, pair = item if isinstance(item, tuple) else (item, None)
        return len(tokenizer(text, pair)["input_ids"])

    def input_from_payload(self, payload: Any) -> ClassificationInput:
        """A text, a (text, pair) pair, or a request's `{"text", "text_pair"?, "truncation"?}`."""
        if isinstance(payload, dict):
            pair = payload.get("text_pair")
            return (payload["text"], pair) if pair is not None else payload["text"]
        if isinstance(payload, (tuple, list)):
            text, pair = payload
            return (text, pair)
        return payload

    def refuses_long_input(self, payload: Any) -> bool:
        mode = payload.get("truncation") if isinstance(payload, dict) else None
        return (mode or self.long_inputs) == "error"

    def request_body(self, payload: Any) -> dict[str, Any]:
        if isinstance(payload, tuple):
            return {"text": payload[0], "text_pair": payload[1]}
        return {"text": payload}

    def training_features(
        self, tokenizer: Any, example: Example[ClassificationInput], max_length: int, label2id: dict[str, int]
    ) -> list[Feature]:
        (feature,) = self.preprocess(tokenizer, example.input, max_length)
        labels = list(label2id)
        if self.problem_type == "regression":
            target: Any = float(example.gold)
        elif self.problem_type == "multi_label_classification":
            hot = [0.0] * len(labels)
            for gold in example.gold:
                hot[label_index(gold, labels)] = 1.0
            target = tuple(hot)  # a tuple: one vector per sequence, not one target per token
        elif isinstance(example.gold, int) and not labels:  # an index, with no label names to check it against
            target = example.gold
        else:
            target = label_index(example.gold, labels)
        feature.meta["targets"] = {"labels": target}
        return [feature]

    # ----- outputs ---------------------------------------------------------------------------------

    def split_outputs(self, outputs: Any, features: Sequence[Feature]) -> list[Any]:
        return list(outputs.logits.float())

    def postprocess(
        self, item: ClassificationInput, features: Sequence[Feature], outputs: Sequence[Any], labels: list[str]
    ) -> ClassPrediction:
        logits = outputs[0]
        truncated = any(feature.meta.get("truncated", False) for feature in features)
        if self.problem_type == "regression":
            return ClassPrediction(None, float(logits[0]), {}, truncated=truncated)
        import torch  # here, not at the top: the API process reads this module's schemas without torch

        multi = self.multi_label
        probs = torch.sigmoid(logits) if multi else torch.softmax(logits, dim=-1)
        best = int(probs.argmax())
        scores = {label: float(p) for label, p in zip(labels, probs, strict=True)}
        chosen: tuple[str, ...] = ()
        if multi:
            order = sorted(range(len(labels)), key=lambda i: -float(probs[i]))
            chosen = tuple(labels[i] for i in order if float(probs[i]) >= MULTI_LABEL_THRESHOLD)
        return ClassPrediction(labels[best], float(probs[best]), scores, chosen, truncated)

    def score(
        self, examples: Sequence[Example[ClassificationInput]], predictions: Sequence[ClassPrediction]
    ) -> dict[str, float]:
        pairs = list(zip(examples, predictions, strict=True))
        if self.problem_type == "regression":
            gold = [float(ex.gold) for ex, _ in pairs]
            predicted = [pred.score for _, pred in pairs]
            return {"pearson": pearson(gold, predicted), "spearman": pearson(_ranks(gold), _ranks(predicted))}
        if self.problem_type == "multi_label_classification":
            true_positive = false_positive = false_negative = exact = 0
            for example, prediction in pairs:
                names = list(prediction.scores)
                expected = {names[label_index(g, names)] for g in example.gold}
                chosen = set(prediction.labels)
                true_positive += len(expected & chosen)
                false_positive += len(chosen - expected)
                false_negative += len(expected - chosen)
                exact += expected == chosen
            denominator = 2 * true_positive + false_positive + false_negative
            return {
                "micro_f1": 2 * true_positive / denominator if denominator else 1.0,
                "subset_accuracy": exact / len(pairs),
            }
        correct = sum(pred.label == list(pred.scores)[label_index(ex.gold, list(pred.scores))] for ex, pred in pairs)
        return {"accuracy": correct / len(pairs)}


def label_index(gold: Any, labels: Sequence[str], where: str = "a gold label") -> int:
    """The index of `gold` among `labels`: a label's name first, else an integer index in range."""
    if isinstance(gold, str) and gold in labels:
        return list(labels).index(gold)
    if isinstance(gold, str) and gold.isdigit():
        gold = int(gold)
    if isinstance(gold, int) and 0 <= gold < len(labels):
        return gold
    raise ValueError(f"{where}: {gold!r} is neither one of the model's labels {list(labels)} nor an index into them")


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    var_x = sum((x - mean_x) ** 2 for x in xs)
    var_y = sum((y - mean_y) ** 2 for y in ys)
    return cov / math.sqrt(var_x * var_y) if var_x and var_y else 0.0


def _ranks(values: Sequence[float]) -> list[float]:
    """Average ranks (ties share the mean of their positions), as Spearman's rho needs."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2
        start = end + 1
    return ranks


def _payload(text: str, pair: str | None, truncation: str | None) -> dict[str, Any]:
    """A request's payload for one input: what `input_from_payload` and `refuses_long_input` read."""
    payload: dict[str, Any] = {"text": text}
    if pair is not None:
        payload["text_pair"] = pair
    if truncation is not None:
        payload["truncation"] = truncation
    return payload


def sst2() -> SequenceClassificationTask:
    """SST-2 (GLUE): `sentence` and a 0/1 `label` indexing the model's labels. Its route has always refused a text
    longer than the window (422), and keeps doing so."""
    return SequenceClassificationTask("sst2", long_inputs="error", description="Sentiment of one or more sentences")


def _task(name: str, options: dict[str, Any]) -> SequenceClassificationTask:
    options = dict(options)
    columns = Columns(**options.pop("columns", {}))
    return SequenceClassificationTask(name, columns, **options)


def _entry_options(config: Mapping[str, Any], chosen: Mapping[str, Any]) -> dict[str, Any]:
    """The catalog options of a checkpoint: its TSV columns (SST-2's names unless chosen) and its problem type."""
    unknown = set(chosen) - {"columns"}
    if unknown:
        raise ValueError(f"the sequence-classification kind takes no options {sorted(unknown)}")
    return {
        "columns": {"text": "sentence", "label": "label", **chosen.get("columns", {})},
        "problem_type": problem_type_of(config),
    }


def problem_type_of(config: Mapping[str, Any]) -> str:
    """A classifier's problem type as transformers decides it: the config's, else regression for one output."""
    declared = config.get("problem_type")
    if declared:
        return str(declared)
    return "regression" if len(config.get("id2label") or {}) == 1 else "single_label_classification"


KIND = Kind(
    "sequence-classification",
    _task,
    options=frozenset({"columns", "problem_type"}),
    entry_options=_entry_options,
    built_in=(sst2,),
)
